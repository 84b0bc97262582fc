import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import * as ort from "onnxruntime-node";
import { describe, expect, it } from "vitest";
import { buildModel } from "../src/onnx/builder.ts";
import { OnnxError, readOnnxIo, type ReadAt } from "@imagegen/formats/onnx-reader";

const MODELS = fileURLToPath(new URL("../models/", import.meta.url));

/** A ReadAt over bytes in memory that counts what it was asked for. */
function counting(bytes: Uint8Array) {
  const stats = { reads: 0, bytes: 0 };
  const read: ReadAt = async (offset, length) => {
    stats.reads++;
    stats.bytes += length;
    return bytes.subarray(offset, offset + length);
  };
  return { read, stats };
}

describe("ONNX graph inputs and outputs read through ranges", () => {
  // The trained models' weights are large next to their graphs; the random ControlNet's are not (only names are compared).
  const models: Array<[string, boolean]> = [
    ["tiny-shapes/addons/controlnet-mask/controlnet/model.onnx", true],
    ["tiny-shapes-random/addons/random-controlnet-mask/controlnet/model.onnx", false],
    ["tiny-shapes/unet/model.onnx", true],
  ];
  for (const [path, weighty] of models) {
    it(`${path}: the names ONNX Runtime reports${weighty ? ", without reading the weights" : ""}`, async () => {
      const bytes = new Uint8Array(readFileSync(MODELS + path));
      const session = await ort.InferenceSession.create(bytes);
      const { read, stats } = counting(bytes);
      const io = await readOnnxIo(read, bytes.byteLength, 4096);
      expect(io).toEqual({ inputs: session.inputNames, outputs: session.outputNames });
      await session.release();
      if (weighty) expect(stats.bytes).toBeLessThan(bytes.byteLength / 4);
      // The default window reads the same names.
      expect(await readOnnxIo(counting(bytes).read, bytes.byteLength)).toEqual(io);
    });
  }

  it("leaves out initializers listed as graph inputs, as ONNX Runtime does", async () => {
    const bytes = buildModel({
      inputs: [
        { name: "x", dtype: "float32", shape: [2] },
        { name: "w", dtype: "float32", shape: [2] },
      ],
      outputs: [{ name: "y", dtype: "float32", shape: [2] }],
      nodes: [{ op: "Add", inputs: ["x", "w"], outputs: ["y"] }],
      initializers: [{ name: "w", dims: [2], data: new Float32Array(2) }],
    });
    const session = await ort.InferenceSession.create(bytes);
    expect(await readOnnxIo(counting(bytes).read, bytes.byteLength)).toEqual({
      inputs: session.inputNames,
      outputs: ["y"],
    });
    expect(session.inputNames).toEqual(["x"]);
    await session.release();
  });

  it("refuses truncated and foreign files with OnnxError", async () => {
    const bytes = new Uint8Array(
      readFileSync(MODELS + "tiny-shapes-random/addons/random-controlnet-mask/controlnet/model.onnx"),
    );
    const cut = bytes.subarray(0, 1000);
    await expect(readOnnxIo(counting(cut).read, cut.byteLength)).rejects.toThrow(OnnxError);
    const text = new TextEncoder().encode('{"kind":"controlnet"}');
    await expect(readOnnxIo(counting(text).read, text.byteLength)).rejects.toThrow(OnnxError);
  });
});
