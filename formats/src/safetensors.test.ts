import { describe, expect, it } from "vitest";
import { encodeSafetensors, headerByteLength, parseHeader, readFloatTensor, SafetensorsError } from "./safetensors.ts";

function headerWith(json: string, dataBytes = 0): Uint8Array {
  const h = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + h.byteLength + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(h.byteLength), true);
  out.set(h, 8);
  return out;
}

describe("safetensors, parsed strictly", () => {
  it("round-trips tensors, with a zero-copy view for aligned F32", () => {
    const data = Float32Array.from([1, -2.5, 3, 4, 5, 6]);
    const file = encodeSafetensors(
      { w: { shape: [2, 3], data }, b: { shape: [1], data: Float32Array.from([7]) } },
      { format: "pt" },
    );
    const h = parseHeader(file, file.byteLength);
    expect(h.metadata).toEqual({ format: "pt" });
    expect(h.tensors.get("w")).toMatchObject({ dtype: "F32", shape: [2, 3] });
    const w = readFloatTensor(file, h, "w");
    expect([...w]).toEqual([...data]);
    expect(w.buffer).toBe(file.buffer);
  });

  it("converts F16 and BF16", () => {
    // F16 1.0 = 0x3c00, -2.0 = 0xc000; BF16 1.5 = 0x3fc0.
    const json = JSON.stringify({
      h: { dtype: "F16", shape: [2], data_offsets: [0, 4] },
      b: { dtype: "BF16", shape: [1], data_offsets: [4, 6] },
    });
    const file = headerWith(json, 6);
    const view = new DataView(file.buffer);
    const base = 8 + json.length;
    view.setUint16(base, 0x3c00, true);
    view.setUint16(base + 2, 0xc000, true);
    view.setUint16(base + 4, 0x3fc0, true);
    const h = parseHeader(file, file.byteLength);
    expect([...readFloatTensor(file, h, "h")]).toEqual([1, -2]);
    expect([...readFloatTensor(file, h, "b")]).toEqual([1.5]);
  });

  const hostile: Array<[string, () => Uint8Array, RegExp]> = [
    ["a file shorter than the length prefix", () => new Uint8Array(5), /shorter/],
    [
      "a giant header length",
      () => {
        const f = new Uint8Array(16);
        new DataView(f.buffer).setBigUint64(0, 10n ** 12n, true);
        return f;
      },
      /exceeds/,
    ],
    ["a header longer than the file (truncated)", () => headerWith('{"a":1}').subarray(0, 10), /truncated/],
    ["a header that is not JSON", () => headerWith("{not json"), /JSON/],
    [
      "an unknown dtype",
      () => headerWith(JSON.stringify({ w: { dtype: "F12", shape: [1], data_offsets: [0, 4] } }), 4),
      /unknown dtype/,
    ],
    [
      "a size that disagrees with the shape",
      () => headerWith(JSON.stringify({ w: { dtype: "F32", shape: [2], data_offsets: [0, 4] } }), 4),
      /expected 8/,
    ],
    [
      "overlapping tensors",
      () =>
        headerWith(
          JSON.stringify({
            a: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
            b: { dtype: "F32", shape: [1], data_offsets: [4, 8] },
          }),
          8,
        ),
      /overlaps/,
    ],
    [
      "a gap in the data",
      () => headerWith(JSON.stringify({ a: { dtype: "F32", shape: [1], data_offsets: [4, 8] } }), 8),
      /gap/,
    ],
    [
      "trailing bytes",
      () => headerWith(JSON.stringify({ a: { dtype: "F32", shape: [1], data_offsets: [0, 4] } }), 12),
      /trailing/,
    ],
    [
      "offsets past the end (truncated data)",
      () => headerWith(JSON.stringify({ a: { dtype: "F32", shape: [4], data_offsets: [0, 16] } }), 8),
      /truncated/,
    ],
    [
      "negative shapes",
      () => headerWith(JSON.stringify({ a: { dtype: "F32", shape: [-1], data_offsets: [0, 4] } }), 4),
      /shape/,
    ],
    ["non-string metadata", () => headerWith(JSON.stringify({ __metadata__: { a: 1 } })), /metadata/],
    // JSON.parse keeps the last: "w" would be read as the second entry where another reader takes the first.
    [
      "a tensor named twice",
      () =>
        headerWith(
          '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
          4,
        ),
      /"w" twice/,
    ],
    [
      "a field named twice in an entry",
      () => headerWith('{"w":{"dtype":"F32","shape":[1],"shape":[1],"data_offsets":[0,4]}}', 4),
      /"shape" twice/,
    ],
    ["an escaped key equal to another", () => headerWith('{"__metadata__":{"a\\"b":"x","a\\u0022b":"y"}}'), /twice/],
  ];
  for (const [what, make, message] of hostile) {
    it(`refuses ${what}`, () => {
      const file = make();
      expect(() => parseHeader(file, file.byteLength)).toThrow(SafetensorsError);
      expect(() => parseHeader(file, file.byteLength)).toThrow(message);
    });
  }

  it("refuses NaN and Inf weights", () => {
    const file = encodeSafetensors({ w: { shape: [3], data: Float32Array.from([1, Number.NaN, 2]) } });
    const h = parseHeader(file, file.byteLength);
    expect(() => readFloatTensor(file, h, "w")).toThrow(/non-finite value at element 1/);
  });

  it("accepts equal keys in different objects, and key-like strings in values", () => {
    const file = headerWith(
      '{"__metadata__":{"w":"{\\"w\\":1,","dtype":"x"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
      4,
    );
    expect(parseHeader(file, file.byteLength).metadata).toEqual({ w: '{"w":1,', dtype: "x" });
  });

  it("needs only the head of the file for the header (range reads)", () => {
    const file = encodeSafetensors({ w: { shape: [1000], data: new Float32Array(1000) } });
    const n = headerByteLength(file.subarray(0, 8));
    expect(n).toBeLessThan(200);
    expect(parseHeader(file.subarray(0, n), file.byteLength).tensors.get("w")!.shape).toEqual([1000]);
  });
});
