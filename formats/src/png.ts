/**
 * A PNG's header, read without decoding any pixels: enough for the edge to refuse, at the door, a control image the
 * runner's decoder (gpu-runner/src/addons/control-image.ts) would refuse later. Only the first 33 bytes are read.
 */

export class PngError extends Error {
  override readonly name = "PngError";
}

export const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a] as const;
/** Signature, IHDR length and type, IHDR's 13 bytes and its CRC: what readPngHeader needs. */
export const PNG_HEADER_BYTES = 33;
/** Channels per colour type (0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA); other types are not PNG. */
export const PNG_COLOR_CHANNELS: Readonly<Record<number, number>> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

export interface PngHeader {
  width: number;
  height: number;
  bitDepth: number;
  colorType: number;
  interlace: number;
}

/** The IHDR of a PNG file (the spec puts it first); throws PngError for anything that does not start as a PNG. */
export function readPngHeader(bytes: Uint8Array): PngHeader {
  if (bytes.byteLength < PNG_SIGNATURE.length || PNG_SIGNATURE.some((b, i) => bytes[i] !== b))
    throw new PngError("not a PNG file");
  if (bytes.byteLength < PNG_HEADER_BYTES) throw new PngError("PNG is truncated before its image header");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const type = String.fromCharCode(...bytes.subarray(12, 16));
  if (type !== "IHDR" || view.getUint32(8) !== 13) throw new PngError("PNG does not start with an image header (IHDR)");
  const header = {
    width: view.getUint32(16),
    height: view.getUint32(20),
    bitDepth: bytes[24]!,
    colorType: bytes[25]!,
    interlace: bytes[28]!,
  };
  if (header.width === 0 || header.height === 0) throw new PngError(`PNG is ${header.width}×${header.height}`);
  return header;
}

/**
 * Why a decoder of plain PNGs (8-bit, not interlaced, any colour type; what image tools write) would refuse this
 * header, or undefined when it would not.
 */
export function plainPngProblem(h: PngHeader, maxPixels: number): string | undefined {
  if (h.width * h.height > maxPixels) return `image is ${h.width}×${h.height}; at most ${maxPixels} pixels`;
  if (h.bitDepth !== 8) return `PNG bit depth ${h.bitDepth} is not supported; use 8-bit`;
  if (h.interlace !== 0) return "interlaced PNGs are not supported";
  if (!PNG_COLOR_CHANNELS[h.colorType]) return `PNG colour type ${h.colorType} is not supported`;
  return undefined;
}
