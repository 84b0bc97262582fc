import { describe, expect, it } from "vitest";
import { PNG_SIGNATURE, PngError, plainPngProblem, readPngHeader } from "./png.ts";

/** A PNG's first 33 bytes (the CRC is not checked by a header read). */
function header(
  width: number,
  height: number,
  { depth = 8, colorType = 2, interlace = 0, type = "IHDR", length = 13 } = {},
): Uint8Array {
  const b = new Uint8Array(33);
  b.set(PNG_SIGNATURE);
  const v = new DataView(b.buffer);
  v.setUint32(8, length);
  b.set(
    [...type].map((ch) => ch.charCodeAt(0)),
    12,
  );
  v.setUint32(16, width);
  v.setUint32(20, height);
  b.set([depth, colorType, 0, 0, interlace], 24);
  return b;
}

describe("readPngHeader", () => {
  it("reads size, depth, colour type and interlace from IHDR", () => {
    expect(readPngHeader(header(64, 32, { colorType: 6 }))).toEqual({
      width: 64,
      height: 32,
      bitDepth: 8,
      colorType: 6,
      interlace: 0,
    });
  });

  it("refuses what does not start as a PNG", () => {
    expect(() => readPngHeader(new Uint8Array([0, 0, 0]))).toThrow(/not a PNG/);
    expect(() => readPngHeader(header(8, 8).subarray(0, 8))).toThrow(/truncated/);
    expect(() => readPngHeader(header(8, 8, { type: "IDAT" }))).toThrow(/IHDR/);
    expect(() => readPngHeader(header(0, 8))).toThrow(PngError);
  });
});

describe("plainPngProblem", () => {
  it("names what a plain-PNG decoder refuses", () => {
    expect(plainPngProblem(readPngHeader(header(64, 64)), 4096)).toBeUndefined();
    expect(plainPngProblem(readPngHeader(header(65, 64)), 4096)).toMatch(/at most 4096 pixels/);
    expect(plainPngProblem(readPngHeader(header(8, 8, { depth: 16 })), 4096)).toMatch(/bit depth 16/);
    expect(plainPngProblem(readPngHeader(header(8, 8, { interlace: 1 })), 4096)).toMatch(/interlaced/);
    expect(plainPngProblem(readPngHeader(header(8, 8, { colorType: 5 })), 4096)).toMatch(/colour type 5/);
  });
});
