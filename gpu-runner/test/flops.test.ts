import { rmSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { countFlops } from "../bench/flops.ts";
import { buildModel } from "../src/onnx/builder.ts";
import { readOnnxGraph } from "@imagegen/formats/onnx-reader";
import { heavyUnet, toyManifest, writeToyBundle } from "./fixtures/toy-bundle.ts";

describe("ONNX graph reader and FLOP count", () => {
  it("reads back the nodes, attributes and initializer shapes the builder wrote", () => {
    const graph = readOnnxGraph(
      buildModel({
        inputs: [{ name: "x", dtype: "float32", shape: ["batch", 3, 8, 8] }],
        outputs: [{ name: "y", dtype: "float32", shape: ["batch", 4, 8, 8] }],
        nodes: [{ op: "Conv", inputs: ["x", "w"], outputs: ["y"], attributes: { pads: [1, 1, 1, 1], group: 1 } }],
        initializers: [{ name: "w", dims: [4, 3, 3, 3], data: new Float32Array(108) }],
      }),
    );
    expect(graph.nodes).toEqual([
      { name: "Conv_0", opType: "Conv", inputs: ["x", "w"], outputs: ["y"], ints: { pads: [1, 1, 1, 1], group: 1 } },
    ]);
    expect(graph.initializers.get("w")).toEqual([4, 3, 3, 3]);
  });

  it("counts a U-Net's convolution FLOPs per image exactly (hand-computed)", async () => {
    const dir = writeToyBundle(() => {}, { unet: heavyUnet(64, 2) });
    try {
      const { flops, byOp } = await countFlops(join(dir, "unet/model.onnx"), toyManifest().components.unet);
      // 8×8 outputs: conv 4→64 and 64→4 are 2·64·64·4·9 each, the two 64→64 are 2·64·64·64·9 each
      const expected = 2 * (2 * 64 * 64 * 4 * 9) + 2 * (2 * 64 * 64 * 64 * 9);
      expect(expected).toBe(10_027_008);
      expect(byOp).toEqual({ Conv: expected });
      expect(flops).toBe(expected);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
