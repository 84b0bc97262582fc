/**
 * A runner that fills its capacity (workers × batch) and batches compatible jobs, against the stand-in edge
 * (runner-fake-edge.ts) and a real inference pool: capacity respected, compatible jobs in one `generateBatch` whose
 * images are the bytes each would get alone, incompatible ones apart, one job's cancel or failure not touching its
 * batch-mates, shutdown with several jobs in hand.
 */
import { createHash } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { encodeSafetensors } from "@imagegen/formats/safetensors";
import { AddonStore } from "../src/addons/store.ts";
import { batchKey } from "../src/pipeline/pipeline.ts";
import type { GenerationRequest } from "../src/pipeline/request.ts";
import { Batcher, requestBatchKey } from "../src/runner/batcher.ts";
import { EdgeClient, type LeasedJob } from "../src/runner/edge-client.ts";
import { discoverModels, pipelineRequest, Runner } from "../src/runner/runner.ts";
import { InferencePool, type JobOptions } from "../src/workers/pool.ts";
import { type FakeEdge, fakeEdge, leased, until } from "./runner-fake-edge.ts";

const MODELS = join(import.meta.dirname, "../models");

/** The real pool, recording the seeds of each batch it is given. */
class RecordingPool extends InferencePool {
  readonly batches: number[][] = [];
  override generateBatch(bundleDir: string, requests: GenerationRequest[], options?: JobOptions) {
    this.batches.push(requests.map((r) => r.seed));
    return super.generateBatch(bundleDir, requests, options);
  }
}

const pool = new RecordingPool({ size: 1 });
afterAll(() => pool.close());

// A fresh stand-in edge per test: a long poll of the previous test's runner, answered after it hung up (this process
// may see the hang-up late), cannot take the next test's job.
let edge: FakeEdge;
beforeEach(async () => {
  pool.batches.length = 0;
  edge = await fakeEdge();
});
afterEach(() => {
  edge.server.closeAllConnections();
  edge.server.close();
});

function runner(opts: Partial<ConstructorParameters<typeof Runner>[0]> = {}) {
  const models = discoverModels(MODELS);
  return new Runner({
    edge: new EdgeClient(edge.url, "igr_test", { attempts: 6, baseMs: 100, maxMs: 600 }),
    pool,
    models: new Map([...models].filter(([name]) => name === "tiny-shapes-random")),
    addons: new AddonStore({ memoryBudgetBytes: 1 << 20 }),
    controlNetDir: mkdtempSync(join(tmpdir(), "cn-")),
    heartbeatMs: 100,
    leaseWaitMs: 100,
    log: process.env.RUNNER_TEST_LOG ? (e) => console.log(JSON.stringify(e)) : () => {},
    ...opts,
  });
}

/** A job with its seed as its identity in the pool's record. */
const job = (id: string, seed: number, request: Record<string, unknown> = {}) => leased(edge, id, { seed, ...request });
const calls = (id: string) => edge.calls.filter((c) => c.path.startsWith(`/internal/v1/jobs/${id}/`));
const call = (id: string, end: string) => calls(id).find((c) => c.path.endsWith(end));

async function runUntil(r: Runner, what: string, done: () => boolean) {
  const running = r.run();
  try {
    await until(what, done);
  } finally {
    await r.stop();
    await running;
  }
}

describe("a runner fills its capacity and batches", () => {
  it("holds up to workers × batch jobs, never more, and declares that capacity on every lease", async () => {
    edge.queue.push(...Array.from({ length: 10 }, (_, i) => job(`job_cap${i}`, 100 + i, { steps: 8 })));
    const callsBefore = edge.leaseCalls.length;
    const r = runner({ batch: 4 });
    expect(r.capacity).toBe(4);
    expect(runner({ batch: 4, depth: 2 }).capacity).toBe(8);
    expect(runner({ batch: 64, depth: 2 }).capacity).toBe(64);
    await runUntil(r, "ten jobs", () => r.done.length === 10);
    expect(r.done.every((d) => d.status === "succeeded")).toBe(true);
    expect(edge.maxHeld).toBe(4);
    const leases = edge.calls.filter((c) => c.path === "/internal/v1/lease");
    expect(leases.length).toBeGreaterThan(0);
    expect(leases.every((c) => c.body.capacity === 4)).toBe(true);
    // A queue deeper than the batch: the first lease call brought a whole batch, and none asked past the capacity.
    expect(edge.leaseCalls[callsBefore]).toBe(4);
    expect(edge.leaseCalls.slice(callsBefore).reduce((a, b) => a + b)).toBe(10);
    expect(edge.leaseCalls.length - callsBefore).toBeLessThan(10);
    expect(leases.every((c) => (c.body.max_jobs ?? 1) <= 4)).toBe(true);
    // One worker, four jobs in hand: batches formed while it was busy.
    expect(pool.batches.some((b) => b.length > 1)).toBe(true);
    expect(pool.batches.flat().sort()).toEqual(Array.from({ length: 10 }, (_, i) => 100 + i));
  });

  it("compatible jobs run as one generateBatch, and each gets the bytes it would get alone", async () => {
    edge.queue.push(...[1, 2, 3, 4].map((i) => job(`job_b${i}`, 200 + i, { prompt: `shape ${i}` })));
    // A long window costs nothing here: the batch leaves as soon as it is full.
    const r = runner({ batch: 4, batchWindowMs: 10_000 });
    await runUntil(r, "four jobs", () => r.done.length === 4);
    expect(pool.batches.map((b) => [...b].sort())).toEqual([[201, 202, 203, 204]]);
    for (const i of [1, 2, 3, 4]) {
      const complete = call(`job_b${i}`, "/complete")!.body;
      const request = pipelineRequest(job(`job_b${i}`, 200 + i, { prompt: `shape ${i}` }).job.request as never);
      const alone = await pool.generate(join(MODELS, "tiny-shapes-random"), request);
      expect(complete.images[0].sha256).toBe(createHash("sha256").update(alone.images[0]!).digest("hex"));
      expect(complete.images[0].seed).toBe(200 + i);
    }
  });

  it("incompatible jobs (other steps, other guidance) are not batched together", async () => {
    edge.queue.push(
      job("job_i1", 301, { steps: 4 }),
      job("job_i2", 302, { steps: 5 }),
      job("job_i3", 303, { steps: 4 }),
      job("job_i4", 304, { steps: 4, guidance: 5 }),
    );
    const r = runner({ batch: 4, batchWindowMs: 2_000 });
    await runUntil(r, "four jobs", () => r.done.length === 4);
    expect(r.done.every((d) => d.status === "succeeded")).toBe(true);
    expect(pool.batches.map((b) => [...b].sort()).sort()).toEqual([[301, 303], [302], [304]]);
  });

  it("a job canceled mid-batch is answered at once; its batch-mate runs on and completes", async () => {
    edge.queue.push(job("job_c1", 401, { steps: 300 }), job("job_c2", 402, { steps: 300 }));
    const r = runner({ batch: 2, batchWindowMs: 10_000 });
    const running = r.run();
    try {
      await until("progress on both", () =>
        ["job_c1", "job_c2"].every((id) =>
          calls(id).some((c) => c.path.endsWith("/heartbeat") && c.body.progress?.step > 0),
        ),
      );
      edge.cancel.add("job_c1");
      const t = Date.now();
      await until("the cancel", () => r.done.some((d) => d.id === "job_c1"));
      expect(Date.now() - t).toBeLessThan(2_000);
      await until("the batch-mate", () => r.done.length === 2, 60_000);
    } finally {
      await r.stop();
      await running;
    }
    expect(r.done.map((d) => [d.id, d.status])).toEqual([
      ["job_c1", "canceled"],
      ["job_c2", "succeeded"],
    ]);
    expect(pool.batches.map((b) => [...b].sort())).toEqual([[401, 402]]);
    expect(call("job_c1", "/complete")).toBeUndefined();
    expect(call("job_c1", "/fail")).toBeUndefined();
    const last = calls("job_c2")
      .filter((c) => c.path.endsWith("/heartbeat") && c.body.progress)
      .at(-1)!;
    expect(last.body.progress.step).toBeGreaterThan(0);
  });

  it("a batch that fails runs its jobs again alone: only the bad one fails", async () => {
    const module = "lora_unet_down_blocks_0_attn_attn2_to_q";
    const lora = (poison: boolean) => {
      const up = new Float32Array(16).fill(0.01);
      if (poison) up[3] = Number.NaN;
      return encodeSafetensors({
        [`${module}.lora_down.weight`]: { shape: [2, 8], data: new Float32Array(16).fill(0.01) },
        [`${module}.lora_up.weight`]: { shape: [8, 2], data: up },
      });
    };
    const withLora = (id: string, seed: number, name: string, bytes: Uint8Array) => {
      const sha256 = createHash("sha256").update(bytes).digest("hex");
      edge.files.set(`${name}.safetensors`, bytes);
      const j = job(id, seed, { loras: [{ id: `addon_${name}`, version: 1, name, sha256, scale: 1 }] });
      j.addons = [
        {
          id: `addon_${name}`,
          version: 1,
          ref: `addon_${name}@1`,
          kind: "lora",
          sha256,
          size_bytes: bytes.byteLength,
          get_url: `${edge.url}/files/${name}.safetensors`,
        },
      ] as LeasedJob["addons"];
      return j;
    };
    edge.queue.push(withLora("job_bad", 501, "poison", lora(true)), withLora("job_good", 502, "fine", lora(false)));
    const r = runner({ batch: 2, batchWindowMs: 10_000 });
    await runUntil(r, "both jobs", () => r.done.length === 2);
    const status = Object.fromEntries(r.done.map((d) => [d.id, d.status]));
    expect(status).toEqual({ job_bad: "failed", job_good: "succeeded" });
    expect(call("job_bad", "/fail")!.body).toMatchObject({
      retryable: false,
      error: { message: expect.stringMatching(/non-finite/) },
    });
    // Different LoRA sets share a batch on a branch model; the failed batch ran again one job at a time.
    expect(pool.batches[0]!.sort()).toEqual([501, 502]);
    expect(pool.batches.slice(1).sort()).toEqual([[501], [502]]);
  });

  it("shutdown with several jobs in hand hands every one back past the grace period", async () => {
    edge.queue.push(...[1, 2, 3].map((i) => job(`job_s${i}`, 600 + i, { steps: 400, guidance: 3 + i })));
    const r = runner({ batch: 4, shutdownGraceMs: 300 });
    const running = r.run();
    await until("three acknowledged", () =>
      [1, 2, 3].every((i) => calls(`job_s${i}`).some((c) => c.path.endsWith("/heartbeat"))),
    );
    const t = Date.now();
    await r.stop();
    await running;
    expect(Date.now() - t).toBeLessThan(5_000);
    expect(r.done.map((d) => d.status)).toEqual(["released", "released", "released"]);
    for (const i of [1, 2, 3])
      expect(call(`job_s${i}`, "/fail")!.body).toMatchObject({ retryable: true, error: { code: "runner_shutdown" } });
    expect(edge.held.size).toBe(0);
  });
});

describe("the acknowledgement", () => {
  it("asked for in the lease: no acknowledging heartbeat; not asked for: the lease carries no new field", async () => {
    edge.queue.push(job("job_ack_lease", 901));
    const r = runner({ acknowledgeInLease: true, heartbeatMs: 60_000 });
    await runUntil(r, "the job", () => r.done.length === 1);
    expect(r.done[0]).toMatchObject({ id: "job_ack_lease", status: "succeeded" });
    // Its only heartbeats report progress (a bundle still loading takes a while): none acknowledges.
    const beats = calls("job_ack_lease").filter((c) => c.path.endsWith("/heartbeat"));
    expect(beats.every((c) => c.body.progress !== undefined)).toBe(true);
    expect(calls("job_ack_lease").some((c) => c.path.endsWith("/complete"))).toBe(true);
    const leases = edge.calls.filter((c) => c.path === "/internal/v1/lease");
    expect(leases.at(-1)!.body.acknowledge).toBe(true);

    edge.queue.push(job("job_ack_beat", 902));
    const plain = runner({ heartbeatMs: 60_000 });
    await runUntil(plain, "the job", () => plain.done.length === 1);
    expect(calls("job_ack_beat")[0]).toMatchObject({ path: "/internal/v1/jobs/job_ack_beat/heartbeat" });
    expect(calls("job_ack_beat")[0]!.body.progress).toBeUndefined();
    expect(edge.calls.filter((c) => c.path === "/internal/v1/lease").at(-1)!.body).not.toHaveProperty("acknowledge");
  });
});

describe("leasing several jobs per call", () => {
  it("asks one job per call with --lease-max 1, and of an edge that refuses max_jobs", async () => {
    for (const [name, opts, refuse] of [
      ["lease-max 1", { leaseMax: 1 }, false],
      ["an older edge", {}, true],
    ] as const) {
      // Each on an edge of its own (as each test): the first runner's last long poll cannot take the second's jobs.
      edge.server.closeAllConnections();
      edge.server.close();
      edge = await fakeEdge();
      edge.refuseMaxJobs = refuse;
      edge.queue.push(...[0, 1, 2, 3].map((i) => job(`job_one_${name}_${i}`, 300 + i)));
      const before = edge.leaseCalls.length;
      const r = runner({ batch: 4, ...opts });
      await runUntil(r, `four jobs (${name})`, () => r.done.length === 4);
      expect(
        r.done.every((d) => d.status === "succeeded"),
        name,
      ).toBe(true);
      expect(edge.leaseCalls.slice(before), name).toEqual([1, 1, 1, 1]);
    }
  });
});

describe("the batcher", () => {
  it("match the pipeline's batchKey: equal exactly when the pipeline would batch", () => {
    const base: GenerationRequest = {
      prompt: "a",
      seed: 1,
      sampler: "lcm",
      steps: 4,
      guidance: 1,
      width: 64,
      height: 64,
    };
    const variants: GenerationRequest[] = [
      base,
      { ...base, prompt: "b", seed: 9, n: 2 },
      { ...base, steps: 5 },
      { ...base, guidance: 2 },
      { ...base, width: 128 },
      { ...base, cache: { mode: "deepcache", interval: 2, schedule: "uniform" } },
    ];
    for (const a of variants)
      for (const b of variants) expect(requestBatchKey(a) === requestBatchKey(b)).toBe(batchKey(a) === batchKey(b));
    expect(requestBatchKey({ ...base, steps: -1 })).toBeNull();
  });

  it("a free worker waits for batch-mates at most the window; with none it starts at once", async () => {
    const bundleDir = join(MODELS, "tiny-shapes-random");
    const entry = (seed: number) => {
      const request = { prompt: "a", seed, sampler: "ddim" as const, steps: 2, guidance: 1 };
      return { key: requestBatchKey(request), bundleDir, request, signal: new AbortController().signal };
    };
    const later = (ms: number) => new Promise((r) => setTimeout(r, ms));
    pool.batches.length = 0;
    const eager = new Batcher(pool, { maxBatch: 4, windowMs: 0, slots: 1 });
    await Promise.all([eager.submit(entry(701)), later(30).then(() => eager.submit(entry(702)))]);
    expect(pool.batches).toEqual([[701], [702]]);
    pool.batches.length = 0;
    const patient = new Batcher(pool, { maxBatch: 4, windowMs: 2_000, slots: 1 });
    const t = Date.now();
    const results = await Promise.all([patient.submit(entry(801)), later(30).then(() => patient.submit(entry(802)))]);
    expect(pool.batches).toEqual([[801, 802]]);
    expect(results.map((r) => [r.seeds[0], r.batchSize])).toEqual([
      [801, 2],
      [802, 2],
    ]);
    // Not full: it left when the window ended, not before.
    expect(Date.now() - t).toBeGreaterThanOrEqual(1_900);
  });

  it("refuses a batch size or window it cannot use", () => {
    expect(() => new Batcher(pool, { maxBatch: 0, windowMs: 0, slots: 1 })).toThrow(/batch size/);
    expect(() => new Batcher(pool, { maxBatch: 2, windowMs: -1, slots: 1 })).toThrow(/window/);
  });
});
