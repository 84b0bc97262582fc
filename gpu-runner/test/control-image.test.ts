import { deflateSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { conditioningTensor, ControlImageError, dataUrlBytes, decodePng } from "../src/addons/control-image.ts";
import { crc32, encodePng } from "../src/pipeline/png.ts";

/** A PNG of any colour type, each row with the given filter byte applied (the encoder under test is our own). */
function png(
  width: number,
  height: number,
  colorType: number,
  pixels: Uint8Array,
  filter = 0,
  extra: Array<[string, Uint8Array]> = [],
): Uint8Array {
  const channels = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 }[colorType]!;
  const stride = width * channels;
  const raw = new Uint8Array((stride + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (stride + 1)] = filter;
    for (let x = 0; x < stride; x++) {
      const v = pixels[y * stride + x]!;
      const a = x >= channels ? pixels[y * stride + x - channels]! : 0;
      const b = y > 0 ? pixels[(y - 1) * stride + x]! : 0;
      raw[y * (stride + 1) + 1 + x] = (filter === 1 ? v - a : filter === 2 ? v - b : v) & 0xff;
    }
  }
  const chunk = (type: string, data: Uint8Array) => {
    const out = new Uint8Array(12 + data.length);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, data.length);
    out.set(new TextEncoder().encode(type), 4);
    out.set(data, 8);
    dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  };
  const ihdr = new Uint8Array(13);
  new DataView(ihdr.buffer).setUint32(0, width);
  new DataView(ihdr.buffer).setUint32(4, height);
  ihdr.set([8, colorType, 0, 0, 0], 8);
  const parts = [
    Uint8Array.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    ...extra.map(([t, d]) => chunk(t, d)),
    chunk("IDAT", deflateSync(raw)),
    chunk("IEND", new Uint8Array()),
  ];
  return Buffer.concat(parts);
}

const MASK = { type: "mask" as const, width: 4, height: 4, channels: 1 as const, range: [0, 1] as [number, number] };

describe("control images", () => {
  it("decodes what the runner's own encoder writes", () => {
    const rgb = Uint8Array.from({ length: 2 * 2 * 3 }, (_, i) => i * 20);
    const d = decodePng(encodePng(rgb, 2, 2));
    expect(d.width).toBe(2);
    expect([...d.rgba.subarray(0, 8)]).toEqual([0, 20, 40, 255, 60, 80, 100, 255]);
  });

  it("decodes grey, grey+alpha, RGBA and palette PNGs with Sub and Up filters", () => {
    const grey = decodePng(png(2, 2, 0, Uint8Array.from([0, 255, 128, 64]), 1));
    expect([...grey.rgba.filter((_, i) => i % 4 === 0)]).toEqual([0, 255, 128, 64]);
    const ga = decodePng(png(2, 1, 4, Uint8Array.from([200, 0, 100, 255]), 2));
    expect([...ga.rgba]).toEqual([200, 200, 200, 0, 100, 100, 100, 255]);
    const rgba = decodePng(png(1, 2, 6, Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]), 2));
    expect([...rgba.rgba]).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
    const pal = decodePng(png(2, 1, 3, Uint8Array.from([1, 0]), 0, [["PLTE", Uint8Array.from([9, 9, 9, 250, 0, 0])]]));
    expect([...pal.rgba]).toEqual([250, 0, 0, 255, 9, 9, 9, 255]);
  });

  it("maps a mask into the ControlNet's size and range", () => {
    // 8×8 mask: left half white. Downsized to 4×4: left two columns 1, right two 0.
    const px = Uint8Array.from({ length: 64 }, (_, i) => (i % 8 < 4 ? 255 : 0));
    const t = conditioningTensor(decodePng(png(8, 8, 0, px)), MASK);
    expect(t.length).toBe(16);
    expect([...t.subarray(0, 4)]).toEqual([1, 1, 0, 0]);
    const signed = conditioningTensor(decodePng(png(8, 8, 0, px)), { ...MASK, range: [-1, 1] });
    expect([...signed.subarray(0, 4)]).toEqual([1, 1, -1, -1]);
  });

  it("refuses what is not a usable PNG, with a reason", () => {
    expect(() => decodePng(new TextEncoder().encode("GIF89a..."))).toThrow(/not a PNG/);
    const good = png(2, 2, 0, new Uint8Array(4));
    expect(() => decodePng(good.subarray(0, good.length - 20))).toThrow(ControlImageError);
    const huge = png(1, 1, 0, new Uint8Array(1));
    new DataView(huge.buffer, huge.byteOffset).setUint32(16, 100_000); // claims 100000×1... then ×100000
    new DataView(huge.buffer, huge.byteOffset).setUint32(20, 100_000);
    expect(() => decodePng(huge)).toThrow(/at most/);
    expect(() => dataUrlBytes("https://example.com/x.png")).toThrow(/data:image\/png/);
    expect(decodePng(dataUrlBytes(`data:image/png;base64,${Buffer.from(good).toString("base64")}`)).width).toBe(2);
  });
});
