/**
 * PNG encoding (8-bit RGB, no interlace) with node:zlib: the runner needs nothing more, and a fixed filter and
 * compression level keep the bytes identical for identical pixels, which the golden tests rely on.
 */
import { crc32 as zlibCrc32, deflateSync } from "node:zlib";

/** CRC-32 (ISO 3309) as PNG chunks use it; zlib's native one, a table loop in JavaScript costs more than deflate here. */
export function crc32(bytes: Uint8Array, crc = 0): number {
  return zlibCrc32(bytes, crc);
}

function chunk(type: string, data: Uint8Array): Uint8Array {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  const typeAndData = out.subarray(4, 8 + data.length);
  typeAndData.set(new TextEncoder().encode(type), 0);
  typeAndData.set(data, 4);
  view.setUint32(8 + data.length, crc32(typeAndData));
  return out;
}

const SIGNATURE = Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

/** Encodes interleaved RGB bytes (row-major, `width·height·3` long) as a PNG file. */
export function encodePng(rgb: Uint8Array, width: number, height: number): Uint8Array {
  if (rgb.length !== width * height * 3) {
    throw new RangeError(
      `encodePng: expected ${width * height * 3} RGB bytes for ${width}×${height}, got ${rgb.length}`,
    );
  }
  const header = new Uint8Array(13);
  const hv = new DataView(header.buffer);
  hv.setUint32(0, width);
  hv.setUint32(4, height);
  header.set([8, 2, 0, 0, 0], 8); // bit depth 8, colour type 2 (RGB), deflate, adaptive filters, no interlace
  const stride = width * 3;
  const raw = new Uint8Array((stride + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (stride + 1)] = 0; // filter "None": small images gain little from Sub/Up/Paeth
    raw.set(rgb.subarray(y * stride, (y + 1) * stride), y * (stride + 1) + 1);
  }
  const idat = deflateSync(raw, { level: 6 });
  const parts = [SIGNATURE, chunk("IHDR", header), chunk("IDAT", idat), chunk("IEND", new Uint8Array(0))];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

/**
 * Converts a VAE output (planar [3, H, W] floats in [−1, 1]) to interleaved RGB bytes, as diffusers'
 * image processor does: (x / 2 + 0.5) clamped to [0, 1], times 255, rounded.
 */
export function vaeOutputToRgb(planar: Float32Array, width: number, height: number): Uint8Array {
  const plane = width * height;
  const rgb = new Uint8Array(plane * 3);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < plane; i++) {
      const v = Math.min(1, Math.max(0, planar[c * plane + i]! / 2 + 0.5));
      rgb[i * 3 + c] = Math.round(v * 255);
    }
  }
  return rgb;
}

/** The PNG files of a decoded batch ([n, 3, height, width] planar), one per image. */
export function encodePngs(decoded: Float32Array, n: number, width: number, height: number): Uint8Array[] {
  const plane = 3 * width * height;
  return Array.from({ length: n }, (_, i) =>
    encodePng(vaeOutputToRgb(decoded.subarray(i * plane, (i + 1) * plane), width, height), width, height),
  );
}
