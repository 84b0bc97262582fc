import { createHash } from "node:crypto";
import { rmSync } from "node:fs";
import { performance } from "node:perf_hooks";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { loadBundle } from "../src/pipeline/bundle.ts";
import { generate } from "../src/pipeline/pipeline.ts";
import { InferencePool } from "../src/workers/pool.ts";
import { heavyUnet, writeToyBundle } from "./fixtures/toy-bundle.ts";

const sha = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

/** Watches the main thread: a 5 ms timer whose largest gap says how long the thread was blocked. */
function watchMainThread() {
  let last = performance.now();
  let maxGap = 0;
  let ticks = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
    ticks++;
  }, 5);
  return () => {
    clearInterval(timer);
    return { maxGap, ticks };
  };
}

const heavyJob = { prompt: "a blue square", seed: 5, n: 16, steps: 3, guidance: 1 } as const;
let toyDir: string;
let heavyDir: string;
let pool: InferencePool;
/**
 * Convolutions 256 channels wide, as many as make one U-Net step of a batch of 16 take about 300 ms on the machine
 * running the test (an idle or a busy CPU differ by 2x or more; the test needs steps longer than a stall).
 */
async function calibratedHeavyBundle(): Promise<string> {
  let layers = 16;
  for (;;) {
    const dir = writeToyBundle(() => {}, { unet: heavyUnet(256, layers) });
    const bundle = await loadBundle(dir);
    const stepMs = (await generate(bundle, { ...heavyJob, steps: 1 })).timings.unetMs;
    await bundle.release();
    if (stepMs >= 250 || layers >= 128) return dir;
    rmSync(dir, { recursive: true, force: true });
    layers = Math.min(128, Math.ceil((layers * 300) / Math.max(stepMs, 1)));
  }
}

beforeAll(async () => {
  toyDir = writeToyBundle();
  heavyDir = await calibratedHeavyBundle();
  pool = new InferencePool({ size: 2, session: { executionProviders: ["cpu"], intraOpNumThreads: 1 } });
});
afterAll(async () => {
  await pool.close();
  for (const d of [toyDir, heavyDir]) rmSync(d, { recursive: true, force: true });
});

describe("InferencePool", () => {
  it("keeps the main thread responsive while a long generation runs (and the detector sees a blocked thread)", async () => {
    // Control: in-process, each U-Net step holds the thread for its whole duration.
    const bundle = await loadBundle(heavyDir);
    const stopControl = watchMainThread();
    const inProcess = await generate(bundle, heavyJob);
    const control = stopControl();
    await bundle.release();
    // A stall is the thread held for more than 100 ms (a heartbeat every few seconds tolerates far less).
    const stallMs = 100;
    const stepMs = inProcess.timings.unetMs / heavyJob.steps;
    expect(stepMs).toBeGreaterThan(1.5 * stallMs);
    expect(control.maxGap).toBeGreaterThan(stallMs);

    await pool.generate(heavyDir, { ...heavyJob, steps: 1 }); // load sessions outside the measurement
    const stop = watchMainThread();
    const started = performance.now();
    const pooled = await pool.generate(heavyDir, heavyJob);
    const elapsed = performance.now() - started;
    const { maxGap, ticks } = stop();
    expect(elapsed).toBeGreaterThan(3 * stallMs);
    expect(maxGap).toBeLessThan(stallMs);
    expect(ticks).toBeGreaterThan(elapsed / 20);
    expect(pooled.images.map(sha)).toEqual(inProcess.images.map(sha)); // same bytes in a worker as in-process
  });

  it("runs jobs on all workers at once and reports progress", async () => {
    const progress: number[] = [];
    const results = await Promise.all(
      [1, 2, 3].map((seed) =>
        pool.generate(
          toyDir,
          { prompt: "a red circle", seed, steps: 5 },
          { onProgress: (p) => seed === 1 && progress.push(p.step) },
        ),
      ),
    );
    expect(progress).toEqual([1, 2, 3, 4, 5]);
    expect(new Set(results.map((r) => sha(r.images[0]!))).size).toBe(3);
  });

  it("runs compatible requests as one batch on a worker, each with its solo bytes", async () => {
    const a = { prompt: "a red circle", seed: 4, n: 2, steps: 3 };
    const b = { prompt: "a blue square", seed: 9, steps: 3 };
    const [ra, rb] = await pool.generateBatch(toyDir, [a, b]);
    const solo = await pool.generate(toyDir, b);
    expect(rb!.images.map(sha)).toEqual(solo.images.map(sha));
    expect([ra!.images.length, ra!.batchSize, ra!.componentRuns.unet]).toEqual([2, 3, 3]);
  });

  it("carries errors out of the worker with their name and message", async () => {
    await expect(pool.generate("/nonexistent/bundle", { prompt: "x", seed: 1 })).rejects.toMatchObject({
      name: "BundleError",
      message: expect.stringMatching(/manifest\.json not found/),
    });
    await expect(pool.generate(toyDir, { prompt: "x", seed: 1, sampler: "rectified-flow" })).rejects.toMatchObject({
      name: "SamplerMismatchError",
    });
    // the worker survives and serves the next job
    expect((await pool.generate(toyDir, { prompt: "x", seed: 1, steps: 2 })).images).toHaveLength(1);
  });

  it("cancels a running job between steps", async () => {
    const controller = new AbortController();
    const job = pool.generate(
      toyDir,
      { prompt: "x", seed: 1, steps: 1000, n: 4 },
      {
        signal: controller.signal,
        onProgress: (p) => p.step === 5 && controller.abort(),
      },
    );
    await expect(job).rejects.toThrow(/canceled/);
  });
});
