/**
 * Control images for ControlNets: a tenant's PNG (data URL or bytes) decoded strictly, converted to the
 * ControlNet's channels and size, and mapped into its input range. Accepts 8-bit greyscale, grey+alpha, RGB, RGBA
 * and palette PNGs without interlacing (what image tools write); refuses the rest with a reason.
 */
import { inflateSync } from "node:zlib";
import { RunnerError } from "../errors.ts";
import type { ControlNetManifest } from "@imagegen/formats/manifest";

export class ControlImageError extends RunnerError {
  override readonly name = "ControlImageError";
  constructor(message: string, options?: ErrorOptions) {
    super("control_image_invalid", message, options);
  }
}

export interface DecodedImage {
  width: number;
  height: number;
  /** Interleaved RGBA, 8 bits per channel. */
  rgba: Uint8Array;
}

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
/** Control images larger than this are refused before decoding (a decompression bomb is not an image). */
export const MAX_CONTROL_PIXELS = 4096 * 4096;

export function decodePng(file: Uint8Array): DecodedImage {
  if (file.byteLength < 8 || SIGNATURE.some((b, i) => file[i] !== b)) throw new ControlImageError("not a PNG file");
  const view = new DataView(file.buffer, file.byteOffset, file.byteLength);
  let pos = 8;
  let width = 0,
    height = 0,
    depth = 0,
    colorType = -1,
    interlace = 0;
  let palette: Uint8Array | undefined;
  let alphaTable: Uint8Array | undefined;
  const idat: Uint8Array[] = [];
  while (pos + 8 <= file.byteLength) {
    const length = view.getUint32(pos);
    const type = String.fromCharCode(...file.subarray(pos + 4, pos + 8));
    const data = file.subarray(pos + 8, pos + 8 + length);
    if (pos + 12 + length > file.byteLength)
      throw new ControlImageError(`PNG chunk ${type} runs past the end of the file (truncated?)`);
    if (type === "IHDR") {
      // Shorter, its fields would be read from the next chunk or past the end of the file.
      if (length !== 13) throw new ControlImageError(`PNG IHDR chunk is ${length} bytes; 13 expected`);
      width = view.getUint32(pos + 8);
      height = view.getUint32(pos + 12);
      depth = data[8]!;
      colorType = data[9]!;
      interlace = data[12]!;
    } else if (type === "PLTE") palette = data;
    else if (type === "tRNS") alphaTable = data;
    else if (type === "IDAT") idat.push(data);
    else if (type === "IEND") break;
    pos += 12 + length;
  }
  if (!width || !height) throw new ControlImageError("PNG has no image header");
  if (width * height > MAX_CONTROL_PIXELS)
    throw new ControlImageError(`control image is ${width}×${height}; at most ${MAX_CONTROL_PIXELS} pixels`);
  if (depth !== 8) throw new ControlImageError(`PNG bit depth ${depth} is not supported; use 8-bit`);
  if (interlace !== 0) throw new ControlImageError("interlaced PNGs are not supported");
  const channels = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 }[colorType];
  if (!channels) throw new ControlImageError(`PNG colour type ${colorType} is not supported`);
  if (colorType === 3 && !palette) throw new ControlImageError("palette PNG without a palette");
  let raw: Uint8Array;
  try {
    raw = inflateSync(Buffer.concat(idat), { maxOutputLength: (width * channels + 1) * height });
  } catch (err) {
    throw new ControlImageError(`PNG pixel data does not decompress: ${(err as Error).message}`);
  }
  const stride = width * channels;
  if (raw.byteLength !== (stride + 1) * height)
    throw new ControlImageError("PNG pixel data has the wrong length (truncated?)");
  const px = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const out = px.subarray(y * stride, (y + 1) * stride);
    const prev = y > 0 ? px.subarray((y - 1) * stride, y * stride) : new Uint8Array(stride);
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? out[x - channels]! : 0;
      const b = prev[x]!;
      const c = x >= channels ? prev[x - channels]! : 0;
      let v = line[x]!;
      if (filter === 1) v += a;
      else if (filter === 2) v += b;
      else if (filter === 3) v += (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a),
          pb = Math.abs(p - b),
          pc = Math.abs(p - c);
        v += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      } else if (filter !== 0) throw new ControlImageError(`PNG row ${y} has unknown filter ${filter}`);
      out[x] = v & 0xff;
    }
  }
  const rgba = new Uint8Array(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    let r: number,
      g: number,
      b: number,
      al = 255;
    if (colorType === 0) r = g = b = px[i]!;
    else if (colorType === 4) {
      r = g = b = px[i * 2]!;
      al = px[i * 2 + 1]!;
    } else if (colorType === 2) {
      r = px[i * 3]!;
      g = px[i * 3 + 1]!;
      b = px[i * 3 + 2]!;
    } else if (colorType === 6) {
      r = px[i * 4]!;
      g = px[i * 4 + 1]!;
      b = px[i * 4 + 2]!;
      al = px[i * 4 + 3]!;
    } else {
      const idx = px[i]!;
      if (idx * 3 + 2 >= palette!.byteLength) throw new ControlImageError(`palette index ${idx} out of range`);
      r = palette![idx * 3]!;
      g = palette![idx * 3 + 1]!;
      b = palette![idx * 3 + 2]!;
      al = alphaTable && idx < alphaTable.byteLength ? alphaTable[idx]! : 255;
    }
    rgba.set([r, g, b, al], i * 4);
  }
  return { width, height, rgba };
}

/** `data:image/png;base64,…` → bytes. */
export function dataUrlBytes(url: string): Uint8Array {
  const m = url.match(/^data:image\/png;base64,([A-Za-z0-9+/=\s]+)$/);
  if (!m) throw new ControlImageError("control image must be a data:image/png;base64 URL");
  return new Uint8Array(Buffer.from(m[1]!, "base64"));
}

/**
 * The ControlNet's conditioning input [1, C, H, W]: resized (bilinear) to its size, greyscale for one channel
 * (transparent pixels count as black), mapped from 0..255 into its range.
 */
export function conditioningTensor(image: DecodedImage, cond: ControlNetManifest["conditioning"]): Float32Array {
  const { width: W, height: H, channels: C, range } = cond;
  const [lo, hi] = range;
  const out = new Float32Array(C * H * W);
  const sample = (x: number, y: number, ch: number) => {
    const i = (y * image.width + x) * 4;
    const alpha = image.rgba[i + 3]! / 255;
    const v =
      C === 1 ? 0.299 * image.rgba[i]! + 0.587 * image.rgba[i + 1]! + 0.114 * image.rgba[i + 2]! : image.rgba[i + ch]!;
    return v * alpha;
  };
  for (let y = 0; y < H; y++) {
    const sy = Math.min(image.height - 1, Math.max(0, ((y + 0.5) * image.height) / H - 0.5));
    const y0 = Math.floor(sy),
      y1 = Math.min(image.height - 1, y0 + 1),
      fy = sy - y0;
    for (let x = 0; x < W; x++) {
      const sx = Math.min(image.width - 1, Math.max(0, ((x + 0.5) * image.width) / W - 0.5));
      const x0 = Math.floor(sx),
        x1 = Math.min(image.width - 1, x0 + 1),
        fx = sx - x0;
      for (let ch = 0; ch < C; ch++) {
        const v =
          (1 - fy) * ((1 - fx) * sample(x0, y0, ch) + fx * sample(x1, y0, ch)) +
          fy * ((1 - fx) * sample(x0, y1, ch) + fx * sample(x1, y1, ch));
        out[(ch * H + y) * W + x] = lo + (hi - lo) * (v / 255);
      }
    }
  }
  return out;
}
