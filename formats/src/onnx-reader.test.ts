import { describe, expect, it } from "vitest";
import { OnnxError, protoFields, readOnnxGraph, readOnnxIo, type ReadAt } from "./onnx-reader.ts";

// A hand-rolled protobuf writer for the few ModelProto fields the reader looks at (numbers from onnx/onnx.proto), so
// these tests need neither onnxruntime nor a bundle; the runner's tests compare the reader with onnxruntime itself.
const utf8 = new TextEncoder();
const cat = (...parts: Uint8Array[]) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) out.set(p, at), (at += p.byteLength);
  return out;
};
function varint(n: number): Uint8Array {
  // int64 fields carry negatives as their 64-bit two's complement: ten bytes.
  let v = BigInt.asUintN(64, BigInt(n));
  const out: number[] = [];
  do {
    const low = Number(v & 0x7fn);
    v >>= 7n;
    out.push(v > 0n ? low | 0x80 : low);
  } while (v > 0n);
  return Uint8Array.from(out);
}
const int = (field: number, n: number) => cat(varint(field * 8), varint(n));
const bytes = (field: number, b: Uint8Array) => cat(varint(field * 8 + 2), varint(b.byteLength), b);
const str = (field: number, s: string) => bytes(field, utf8.encode(s));
const message = (field: number, ...fields: Uint8Array[]) => bytes(field, cat(...fields));

/** Conv(x, w) → y with a packed `pads`, an `axis` of −1 and a 3×2×1×1 initializer `w` of `weightBytes` raw bytes, listed as a graph input too. */
function model(weightBytes = 24): Uint8Array {
  const conv = message(
    1,
    str(1, "x"),
    str(1, "w"),
    str(2, "y"),
    str(3, "conv0"),
    str(4, "Conv"),
    message(5, str(1, "pads"), bytes(8, cat(...[0, 1, 0, 1].map(varint)))),
    message(5, str(1, "axis"), int(3, -1)),
  );
  const w = message(
    5,
    int(1, 3),
    int(1, 2),
    int(1, 1),
    int(1, 1),
    int(2, 1),
    str(8, "w"),
    bytes(9, new Uint8Array(weightBytes)),
  );
  const graph = message(
    7,
    conv,
    str(2, "g"),
    w,
    message(11, str(1, "x")),
    message(11, str(1, "w")),
    message(12, str(1, "y")),
  );
  return cat(int(1, 8), str(2, "a producer field the reader skips"), graph);
}

function reader(file: Uint8Array) {
  const lengths: number[] = [];
  const read: ReadAt = async (offset, length) => (lengths.push(length), file.subarray(offset, offset + length));
  return { read, lengths };
}

describe("ONNX graph reader", () => {
  it("reads nodes, integer attributes (packed, negative) and initializer dims", () => {
    const graph = readOnnxGraph(model());
    expect(graph.nodes).toEqual([
      { name: "conv0", opType: "Conv", inputs: ["x", "w"], outputs: ["y"], ints: { pads: [0, 1, 0, 1], axis: -1 } },
    ]);
    expect([...graph.initializers]).toEqual([["w", [3, 2, 1, 1]]]);
  });

  it("lists a message's fields with the offsets of their keys and values", () => {
    const file = model();
    const fields = protoFields(file);
    expect(fields.map((f) => [f.field, f.wire])).toEqual([
      [1, 0],
      [2, 2],
      [7, 2],
    ]);
    expect(fields[0]!.value).toBe(8);
    expect(fields.at(-1)!.end).toBe(file.byteLength);
    expect(readOnnxGraph(file.subarray(fields[2]!.start))).toEqual(readOnnxGraph(file));
  });
});

describe("ONNX inputs and outputs through range reads", () => {
  it("leaves out initializers listed as inputs, the same at any window size", async () => {
    const file = model();
    const io = await readOnnxIo(reader(file).read, file.byteLength);
    expect(io).toEqual({ inputs: ["x"], outputs: ["y"] });
    expect(await readOnnxIo(reader(file).read, file.byteLength, 3)).toEqual(io);
  });

  it("seeks past initializer data instead of reading it", async () => {
    const file = model(1_000_000);
    const { read, lengths } = reader(file);
    expect(await readOnnxIo(read, file.byteLength, 256)).toEqual({ inputs: ["x"], outputs: ["y"] });
    expect(lengths.reduce((a, b) => a + b, 0)).toBeLessThan(4096);
  });

  it("refuses truncated and foreign files with OnnxError", async () => {
    const cut = model().subarray(0, 60);
    await expect(readOnnxIo(reader(cut).read, cut.byteLength)).rejects.toThrow(OnnxError);
    const text = utf8.encode('{"kind":"controlnet"}');
    await expect(readOnnxIo(reader(text).read, text.byteLength)).rejects.toThrow(OnnxError);
    const noGraph = int(1, 8);
    await expect(readOnnxIo(reader(noGraph).read, noGraph.byteLength)).rejects.toThrow(/no graph/);
  });
});
