/**
 * The SD benches' arithmetic (bench/sd-cost.ts): FLOPs counted at the shapes the pipeline really feeds (an
 * imported export's height, width and batch are symbolic), the floors, and the decoded image as diffusers returns it.
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { loadBundle } from "../src/pipeline/bundle.ts";
import { generate } from "../src/pipeline/pipeline.ts";
import { componentFlops, FIXTURES, floors, importForBench, toNhwc01, watch } from "../bench/sd-cost.ts";

const out = mkdtempSync(join(tmpdir(), "bench-sd-cost-"));
afterAll(() => rmSync(out, { recursive: true, force: true }));

describe("sd-cost", () => {
  it("counts an imported U-Net's FLOPs at the captured feeds: CFG doubles them, a 2× larger image about quadruples them", async () => {
    const { dir } = await importForBench(join(FIXTURES, "sd15"), out, "sd15");
    const bundle = await loadBundle(dir);
    try {
      const unet = bundle.components.unet;
      const log = watch(unet);
      const request = { prompt: "a red circle", seed: 1, sampler: "ddim" as const, steps: 1 };
      await generate(bundle, { ...request, guidance: 1 });
      const single = log.feeds!;
      expect(log.ms).toHaveLength(1);
      log.feeds = undefined;
      await generate(bundle, { ...request, guidance: 7.5 });
      const cfg = log.feeds!;
      log.feeds = undefined;
      await generate(bundle, { ...request, guidance: 1, width: 128, height: 128 });
      const large = log.feeds!;

      const one = await componentFlops(dir, unet, single);
      const two = await componentFlops(dir, unet, cfg);
      const big = await componentFlops(dir, unet, large);
      expect(one.batch).toBe(1);
      expect(two.batch).toBe(2);
      expect(one.flops).toBeGreaterThan(0);
      expect(two.flops / one.flops).toBeCloseTo(2, 1);
      // Convolutions and projections scale with the pixels (4×), self-attention's products with their square.
      expect(big.flops / one.flops).toBeGreaterThanOrEqual(4);
      expect(big.flops / one.flops).toBeLessThan(8);
    } finally {
      await bundle.release();
    }
  });

  it("floors: 989 TFLOP on a 989 TFLOPS datasheet is one second; weights ÷ bandwidth", () => {
    const f = floors(989e12, 4.8e12, { cpu: 1e11 });
    expect(f[0]).toEqual({ on: "cpu", peakTflops: 0.1, computeMs: 9890000 });
    const h200 = f.find((x) => x.on.startsWith("H200"))!;
    expect(h200.computeMs).toBeCloseTo(1000, 6);
    expect(h200.memoryMs).toBeCloseTo(1000, 6);
  });

  it("lays a planar [-1, 1] decode out as NHWC in [0, 1], clamped", () => {
    // 1 image, 3 channels, 1×2 pixels: R = (-1, 1), G = (0, 3), B = (-3, 0.5)
    const planar = Float32Array.from([-1, 1, 0, 3, -3, 0.5]);
    expect(Array.from(toNhwc01(planar, 1, 2))).toEqual([0, 0.5, 0, 1, 1, 0.75]);
  });
});
