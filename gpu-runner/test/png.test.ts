import { inflateSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { crc32, encodePng, vaeOutputToRgb } from "../src/pipeline/png.ts";

describe("png", () => {
  it("computes the PNG CRC-32", () => {
    expect(crc32(new TextEncoder().encode("IEND"))).toBe(0xae426082);
    expect(crc32(new TextEncoder().encode("123456789"))).toBe(0xcbf43926);
  });

  it("writes a valid RGB PNG whose pixels read back", () => {
    const rgb = Uint8Array.from({ length: 3 * 2 * 3 }, (_, i) => i * 13);
    const png = encodePng(rgb, 3, 2);
    expect([...png.subarray(0, 8)]).toEqual([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    const view = new DataView(png.buffer, png.byteOffset);
    expect(new TextDecoder().decode(png.subarray(12, 16))).toBe("IHDR");
    expect([view.getUint32(16), view.getUint32(20), png[24], png[25]]).toEqual([3, 2, 8, 2]);
    const ihdrCrc = view.getUint32(29);
    expect(ihdrCrc).toBe(crc32(png.subarray(12, 29)));
    const idatLength = view.getUint32(33);
    const raw = inflateSync(png.subarray(41, 41 + idatLength));
    expect([...raw]).toEqual([0, ...rgb.subarray(0, 9), 0, ...rgb.subarray(9)]);
    expect(new TextDecoder().decode(png.subarray(png.length - 8, png.length - 4))).toBe("IEND");
  });

  it("maps VAE output [−1, 1] planar to clamped interleaved bytes", () => {
    const planar = Float32Array.from([-1, 1, 0, 2, -3, 0.5]); // 2 pixels × 3 planes
    expect([...vaeOutputToRgb(planar, 2, 1)]).toEqual([0, 128, 0, 255, 255, 191]);
  });

  it("refuses a buffer of the wrong size", () => {
    expect(() => encodePng(new Uint8Array(5), 2, 1)).toThrow(/expected 6 RGB bytes/);
  });
});
