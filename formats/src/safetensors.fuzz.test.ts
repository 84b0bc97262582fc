import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { anyBytes, fuzz, fuzzTimeout, mutated, parses } from "../fuzz/harness.ts";
import { DTYPE_BYTES, encodeSafetensors, parseHeader, readFloatTensor, SafetensorsError } from "./safetensors.ts";

const S = "safetensors";

/** Parses a file as a tenant's upload is: the header, then every float tensor. */
function parseAll(file: Uint8Array): void {
  const header = parses(file.byteLength, [SafetensorsError], () => parseHeader(file, file.byteLength));
  if (!header) return;
  let covered = 0;
  for (const t of header.tensors.values()) {
    expect(header.dataOffset + t.end).toBeLessThanOrEqual(file.byteLength);
    covered += t.end - t.begin;
    const values = parses(file.byteLength, [SafetensorsError], () => readFloatTensor(file, header, t.name));
    if (values) expect(values.every(Number.isFinite)).toBe(true);
  }
  expect(header.dataOffset + covered).toBe(file.byteLength);
}

const tensorData = fc.record({
  shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }),
  fill: fc.float({ noNaN: true, noDefaultInfinity: true }),
});
const validFile = fc.dictionary(fc.string({ minLength: 1, maxLength: 12 }), tensorData, { maxKeys: 5 }).map((spec) => {
  const tensors: Record<string, { shape: number[]; data: Float32Array }> = Object.create(null); // "__proto__" is a name too
  for (const [name, t] of Object.entries(spec)) {
    const n = t.shape.reduce((a, b) => a * b, 1);
    tensors[name] = { shape: t.shape, data: new Float32Array(n).fill(t.fill) };
  }
  return { spec, file: encodeSafetensors(tensors) };
});

/** A header of any shape (known and unknown dtypes, huge shapes and offsets) over a data section of any length. */
const hostileHeader = fc
  .tuple(
    fc.dictionary(
      fc.oneof(fc.string({ maxLength: 8 }), fc.constantFrom("__metadata__", "__proto__", "constructor")),
      fc.oneof(
        fc.record(
          {
            dtype: fc.oneof(fc.constantFrom(...Object.keys(DTYPE_BYTES)), fc.string({ maxLength: 6 })),
            shape: fc.array(
              fc.oneof(fc.integer({ min: 0, max: 8 }), fc.constantFrom(2 ** 31, 2 ** 53, 2 ** 60, -1, 1.5)),
              { maxLength: 4 },
            ),
            data_offsets: fc.array(
              fc.oneof(fc.integer({ min: 0, max: 256 }), fc.constantFrom(2 ** 53, 2 ** 60, -8, 0.5)),
              { maxLength: 3 },
            ),
          },
          { requiredKeys: [] },
        ),
        fc.jsonValue({ maxDepth: 2 }),
      ),
      { maxKeys: 4 },
    ),
    fc.uint8Array({ maxLength: 300 }),
  )
  .map(([header, data]) => {
    const json = new TextEncoder().encode(JSON.stringify(header));
    const out = new Uint8Array(8 + json.byteLength + data.byteLength);
    new DataView(out.buffer).setBigUint64(0, BigInt(json.byteLength), true);
    out.set(json, 8);
    out.set(data, 8 + json.byteLength);
    return out;
  });

describe("safetensors under fuzzing", () => {
  it(
    "refuses arbitrary bytes with SafetensorsError, within the time and memory bounds",
    () => {
      fuzz(S, "arbitrary bytes", anyBytes(), parseAll, 3000);
      // Bytes behind a plausible header length, so the JSON parser sees them.
      const framed = fc.uint8Array({ maxLength: 512 }).map((body) => {
        const out = new Uint8Array(8 + body.byteLength);
        new DataView(out.buffer).setBigUint64(0, BigInt(body.byteLength), true);
        out.set(body, 8);
        return out;
      });
      fuzz(S, "framed arbitrary header bytes", framed, parseAll, 3000);
    },
    fuzzTimeout(),
  );

  it(
    "parses hostile headers (huge shapes and offsets, unknown dtypes, odd keys) or refuses them",
    () => fuzz(S, "hostile headers", hostileHeader, parseAll, 3000),
    fuzzTimeout(),
  );

  it(
    "parses mutated valid files or refuses them",
    () => fuzz(S, "mutated valid files", mutated(validFile.map((v) => v.file)), parseAll, 3000),
    fuzzTimeout(),
  );

  it(
    "reads back what encodeSafetensors wrote",
    () =>
      fuzz(
        S,
        "round trip",
        validFile,
        ({ spec, file }) => {
          const header = parseHeader(file, file.byteLength);
          expect([...header.tensors.keys()].sort()).toEqual(Object.keys(spec).sort());
          for (const [name, t] of Object.entries(spec)) {
            const values = readFloatTensor(file, header, name);
            expect(header.tensors.get(name)!.shape).toEqual(t.shape);
            expect(values.every((v) => v === Math.fround(t.fill))).toBe(true);
          }
        },
        1000,
      ),
    fuzzTimeout(),
  );

  it("writes and reads back a tensor named __proto__ (regression: the writer dropped it)", () => {
    // An own key "__proto__", as JSON.parse makes it (a literal would set the prototype).
    const tensors = Object.defineProperty({}, "__proto__", {
      value: { shape: [1], data: Float32Array.of(2) },
      enumerable: true,
    });
    const file = encodeSafetensors(tensors);
    expect(readFloatTensor(file, parseHeader(file, file.byteLength), "__proto__")).toEqual(Float32Array.of(2));
  });

  it("refuses a header length of 2^60 before reading or allocating it", () => {
    const file = new Uint8Array(16);
    new DataView(file.buffer).setBigUint64(0, 2n ** 60n, true);
    expect(() => parses(16, [], () => parseHeader(file, 2 ** 62))).toThrow(/exceeds/);
  });
});
