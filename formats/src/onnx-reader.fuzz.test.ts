import { readFileSync } from "node:fs";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { anyBytes, fuzzAsync, fuzzTimeout, mutated, parses, parsesAsync } from "../fuzz/harness.ts";
import { locateInitializers, OnnxError, protoFields, readOnnxGraph, readOnnxIo } from "./onnx-reader.ts";

const S = "onnx-reader";
/** The smallest committed graph (a text encoder, 16 KB): every field kind the readers visit, initializers with raw_data. */
const MODEL = new Uint8Array(
  readFileSync(new URL("../../gpu-runner/models/tiny-shapes-random/text_encoder/model.onnx", import.meta.url)),
);

const varint = (n: number): number[] => {
  const out: number[] = [];
  let v = BigInt(n);
  do {
    out.push(Number(v & 0x7fn) | (v > 0x7fn ? 0x80 : 0));
    v >>= 7n;
  } while (v > 0n);
  return out;
};

/** A protobuf message of random fields, nested where length-delimited: deep enough to reach the readers' sub-messages. */
const message: fc.Memo<number[]> = fc.memo((depth) =>
  fc
    .array(
      fc.oneof(
        fc
          .tuple(
            fc.integer({ min: 1, max: 16 }),
            fc.constant(0),
            fc.oneof(fc.nat(), fc.constantFrom(2 ** 53, 2 ** 63, 2 ** 64 - 1)),
          )
          .map(([f, w, v]) => [...varint(f * 8 + w), ...varint(v)]),
        fc
          .tuple(
            fc.integer({ min: 1, max: 16 }),
            depth > 1 ? message(depth - 1) : fc.array(fc.integer({ min: 0, max: 255 }), { maxLength: 16 }),
          )
          .map(([f, body]) => [...varint(f * 8 + 2), ...varint(body.length), ...body]),
        // A length that lies: past the message, or 2^60.
        fc
          .tuple(fc.integer({ min: 1, max: 16 }), fc.constantFrom(1 << 20, 2 ** 31, 2 ** 60))
          .map(([f, len]) => [...varint(f * 8 + 2), ...varint(len)]),
        fc
          .tuple(fc.integer({ min: 1, max: 16 }), fc.constantFrom(1, 3, 4, 5, 6, 7))
          .map(([f, w]) => [...varint(f * 8 + w), 1, 2, 3, 4]),
      ),
      { maxLength: 5 },
    )
    .map((fields) => fields.flat()),
);
/** A ModelProto with field 7 (graph) around random fields. */
const protoModel = message(4).map((graph) =>
  Uint8Array.from([...varint(7 * 8 + 2), ...varint(graph.length), ...graph]),
);

const ERRORS = [OnnxError];

function checkInMemory(model: Uint8Array): void {
  parses(model.byteLength, ERRORS, () => readOnnxGraph(model));
  parses(model.byteLength, ERRORS, () => protoFields(model));
  const located = parses(model.byteLength, ERRORS, () => locateInitializers(model));
  for (const t of located?.values() ?? []) {
    if (!t.external) expect(t.offset + t.byteLength).toBeLessThanOrEqual(model.byteLength);
    expect(t.end).toBeLessThanOrEqual(model.byteLength);
  }
}

/** readOnnxIo through range reads: the same answer through a tiny window as through a whole-file one. */
async function checkRanged(model: Uint8Array): Promise<void> {
  let reads = 0;
  const read = async (offset: number, length: number) => {
    reads++;
    expect(offset).toBeGreaterThanOrEqual(0);
    expect(offset + length).toBeLessThanOrEqual(model.byteLength);
    return model.subarray(offset, offset + length);
  };
  const whole = await parsesAsync(model.byteLength, ERRORS, () => readOnnxIo(read, model.byteLength));
  const small = await parsesAsync(model.byteLength, ERRORS, () => readOnnxIo(read, model.byteLength, 16));
  expect(small).toEqual(whole);
  expect(reads).toBeLessThanOrEqual(2 * model.byteLength + 4);
}

const check = async (model: Uint8Array) => {
  checkInMemory(model);
  await checkRanged(model);
};

describe("ONNX readers under fuzzing", () => {
  it(
    "refuse arbitrary bytes with OnnxError",
    () => fuzzAsync(S, "arbitrary bytes", anyBytes(1024), check, 3000),
    fuzzTimeout(),
  );

  it(
    "read random protobuf models (lying lengths, every wire type) or refuse them",
    () => fuzzAsync(S, "random protobuf models", protoModel, check, 3000),
    fuzzTimeout(),
  );

  it(
    "read a mutated committed graph or refuse it",
    () => fuzzAsync(S, "mutated committed graph", mutated(MODEL), check, 600),
    fuzzTimeout(),
  );

  it("read the committed graph", async () => {
    const graph = readOnnxGraph(MODEL);
    expect(graph.nodes.length).toBeGreaterThan(0);
    const io = await readOnnxIo(async (o, l) => MODEL.subarray(o, o + l), MODEL.byteLength, 64);
    expect(io.inputs.length).toBeGreaterThan(0);
  });

  it("refuse a graph whose length claims 2^60 bytes", async () => {
    const model = Uint8Array.from([...varint(7 * 8 + 2), ...varint(2 ** 60), 1, 2, 3]);
    // Regression (found by this fuzzer): the in-memory readers threw a plain Error, which callers could not tell from a bug.
    expect(() => readOnnxGraph(model)).toThrow(OnnxError);
    expect(() => protoFields(model)).toThrow(OnnxError);
    expect(() => locateInitializers(Uint8Array.from([251]))).toThrow(OnnxError);
    await expect(readOnnxIo(async (o, l) => model.subarray(o, o + l), model.byteLength)).rejects.toThrow(OnnxError);
  });
});
