import { deflateSync } from "node:zlib";
import { anyBytes, fuzz, fuzzTimeout, mutated, parses } from "@imagegen/formats/fuzz";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { conditioningTensor, ControlImageError, dataUrlBytes, decodePng } from "../src/addons/control-image.ts";
import { crc32, encodePng } from "../src/pipeline/png.ts";

const S = "control-image";
const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

function chunk(type: string, data: Uint8Array): number[] {
  const out = new Uint8Array(12 + data.byteLength);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.byteLength);
  out.set(new TextEncoder().encode(type), 4);
  out.set(data, 8);
  view.setUint32(8 + data.byteLength, crc32(out.subarray(4, 8 + data.byteLength)));
  return [...out];
}

const validPng = fc
  .record({
    width: fc.integer({ min: 1, max: 12 }),
    height: fc.integer({ min: 1, max: 12 }),
    seed: fc.integer({ min: 0, max: 255 }),
  })
  .map(({ width, height, seed }) =>
    encodePng(
      Uint8Array.from({ length: width * height * 3 }, (_, i) => (i * 31 + seed) & 0xff),
      width,
      height,
    ),
  );

/** A PNG built chunk by chunk: any IHDR (lengths 0–13 too), palettes, and pixel data of the right or a wrong size. */
const chunkedPng = fc
  .record({
    width: fc.oneof(fc.integer({ min: 0, max: 9 }), fc.constantFrom(4096, 65_536, 2 ** 31, 2 ** 32 - 1)),
    height: fc.oneof(fc.integer({ min: 0, max: 9 }), fc.constantFrom(4097, 65_536, 2 ** 31, 2 ** 32 - 1)),
    depth: fc.constantFrom(1, 2, 4, 8, 16, 0, 255),
    colorType: fc.constantFrom(0, 2, 3, 4, 6, 1, 7),
    interlace: fc.constantFrom(0, 0, 0, 1, 2),
    ihdrLength: fc.constantFrom(13, 13, 13, 0, 4, 8, 9, 12),
    palette: fc.option(fc.uint8Array({ maxLength: 30 })),
    trns: fc.option(fc.uint8Array({ maxLength: 10 })),
    filter: fc.integer({ min: 0, max: 6 }),
    extraRows: fc.integer({ min: -1, max: 1 }),
    pixels: fc.uint8Array({ maxLength: 64 }),
    order: fc.constantFrom("normal", "idat-first", "ihdr-last"),
    iend: fc.boolean(),
  })
  .map((p) => {
    const ihdr = new Uint8Array(13);
    const view = new DataView(ihdr.buffer);
    view.setUint32(0, p.width);
    view.setUint32(4, p.height);
    ihdr.set([p.depth, p.colorType, 0, 0, p.interlace], 8);
    const channels = ({ 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 } as Record<number, number>)[p.colorType] ?? 1;
    // The declared size when it is small; a little data that claims to be the image when it is not.
    const rows = Math.min(p.height, 16) + p.extraRows;
    const stride = Math.min(p.width, 16) * channels;
    const raw = new Uint8Array(Math.max(0, rows) * (stride + 1));
    for (let i = 0; i < raw.byteLength; i++)
      raw[i] = i % (stride + 1) === 0 ? p.filter : (p.pixels[i % Math.max(1, p.pixels.byteLength)] ?? 0);
    const head = chunk("IHDR", ihdr.subarray(0, p.ihdrLength));
    const idat = chunk("IDAT", deflateSync(raw));
    const extras = [...(p.palette ? chunk("PLTE", p.palette) : []), ...(p.trns ? chunk("tRNS", p.trns) : [])];
    const iend = !p.iend ? [] : chunk("IEND", new Uint8Array());
    const body =
      p.order === "idat-first"
        ? [...idat, ...head, ...extras]
        : p.order === "ihdr-last"
          ? [...extras, ...idat, ...head]
          : [...head, ...extras, ...idat];
    return Uint8Array.from([...SIGNATURE, ...body, ...iend]);
  });

const MASK = { type: "mask" as const, width: 5, height: 3, channels: 1 as const, range: [-1, 1] as [number, number] };
const RGB = { ...MASK, channels: 3 as const, range: [0, 1] as [number, number] };

function check(file: Uint8Array): void {
  const image = parses(file.byteLength, [ControlImageError], () => decodePng(file));
  if (!image) return;
  expect(image.rgba.byteLength).toBe(image.width * image.height * 4);
  for (const cond of [MASK, RGB]) {
    const tensor = conditioningTensor(image, cond);
    expect(tensor.every((v) => v >= cond.range[0] - 1e-6 && v <= cond.range[1] + 1e-6)).toBe(true);
  }
}

describe("control images under fuzzing", () => {
  it(
    "refuse arbitrary bytes (with and without the PNG signature) with ControlImageError",
    () => {
      fuzz(S, "arbitrary bytes", anyBytes(1024), check, 2000);
      fuzz(
        S,
        "signature + arbitrary bytes",
        anyBytes(1024).map((b) => Uint8Array.from([...SIGNATURE, ...b])),
        check,
        2000,
      );
    },
    fuzzTimeout(),
  );

  it(
    "decode PNGs built chunk by chunk (any IHDR, palette, filter, size) or refuse them",
    () => fuzz(S, "chunk-built PNGs", chunkedPng, check, 3000),
    fuzzTimeout(),
  );

  it(
    "decode mutated valid PNGs or refuse them",
    () => fuzz(S, "mutated valid PNGs", mutated(validPng), check, 3000),
    fuzzTimeout(),
  );

  it(
    "take arbitrary data URLs: bytes or ControlImageError",
    () =>
      fuzz(
        S,
        "data URLs",
        fc.oneof(
          fc.string({ maxLength: 200 }),
          fc.base64String({ maxLength: 200 }).map((b) => `data:image/png;base64,${b}`),
          fc.string({ maxLength: 200 }).map((s) => `data:image/png;base64,${s}`),
        ),
        (url) => {
          const bytes = parses(url.length, [ControlImageError], () => dataUrlBytes(url));
          if (bytes) check(bytes);
        },
        2000,
      ),
    fuzzTimeout(),
  );

  it("refuses a short IHDR at the end of the file with ControlImageError (regression: RangeError)", () => {
    const file = Uint8Array.from([
      ...SIGNATURE,
      ...chunk("IDAT", deflateSync(new Uint8Array(2))),
      ...chunk("IHDR", new Uint8Array(0)),
    ]);
    expect(() => decodePng(file)).toThrow(ControlImageError);
    expect(() => decodePng(Uint8Array.from([...SIGNATURE, ...chunk("IHDR", new Uint8Array(9))]))).toThrow(
      /13 expected/,
    );
  });

  it("refuses a 2^31 × 2^31 image before inflating its data", () => {
    const ihdr = new Uint8Array(13);
    new DataView(ihdr.buffer).setUint32(0, 2 ** 31);
    new DataView(ihdr.buffer).setUint32(4, 2 ** 31);
    ihdr.set([8, 2, 0, 0, 0], 8);
    const file = Uint8Array.from([
      ...SIGNATURE,
      ...chunk("IHDR", ihdr),
      ...chunk("IDAT", deflateSync(new Uint8Array(1 << 20))),
      ...chunk("IEND", new Uint8Array()),
    ]);
    expect(() => parses(file.byteLength, [], () => decodePng(file))).toThrow(/at most/);
  });
});
