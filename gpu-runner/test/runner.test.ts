/**
 * The runner's lease loop against a stand-in edge and store on 127.0.0.1 (the real edge is exercised end to end in
 * tests/e2e): storage that is down for a while, cancel mid-generation, shutdown with a job in hand.
 */
import { createHash } from "node:crypto";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, afterEach, beforeEach, describe, expect, it } from "vitest";
import { encodeSafetensors } from "@imagegen/formats/safetensors";
import { AddonStore } from "../src/addons/store.ts";
import { EdgeClient, type LeasedJob } from "../src/runner/edge-client.ts";
import { discoverModels, heartbeatInterval, Runner } from "../src/runner/runner.ts";
import { InferencePool } from "../src/workers/pool.ts";
import { type FakeEdge, fakeEdge, leased, until } from "./runner-fake-edge.ts";

const MODELS = join(import.meta.dirname, "../models");
const pool = new InferencePool({ size: 1 });
afterAll(() => pool.close());

function runner(edge: FakeEdge, opts: Partial<ConstructorParameters<typeof Runner>[0]> = {}) {
  const models = discoverModels(MODELS);
  return new Runner({
    edge: new EdgeClient(edge.url, "igr_test", { attempts: 6, baseMs: 100, maxMs: 600 }),
    pool,
    models: new Map([...models].filter(([name]) => name === "tiny-shapes-random")),
    addons: new AddonStore({ memoryBudgetBytes: 1 << 20 }),
    controlNetDir: mkdtempSync(join(tmpdir(), "cn-")),
    heartbeatMs: 100,
    leaseWaitMs: 100,
    log: (e) => {
      events.push({ at: Date.now(), ...e });
      if (process.env.RUNNER_TEST_LOG) console.log(JSON.stringify(e));
    },
    ...opts,
  });
}

// A fresh stand-in edge per test: a long poll of the previous test's runner, answered after it hung up (this process
// may see the hang-up late), cannot take the next test's job.
let edge: FakeEdge;
/** The runners' log of the running test, printed when it fails (with the edge calls it made) to say why. */
let events: Array<Record<string, unknown>> = [];
beforeEach(async ({ onTestFailed }) => {
  edge = await fakeEdge();
  events = [];
  const failed = edge;
  onTestFailed(() => {
    console.error(`runner log:\n${events.map((e) => JSON.stringify(e)).join("\n")}`);
    const calls = failed.calls.map((c) => `${c.at} ${c.path} ${JSON.stringify(c.body).slice(0, 300)}`);
    console.error(`edge calls:\n${calls.join("\n")}`);
  });
});
afterEach(() => {
  edge.server.closeAllConnections();
  edge.server.close();
});

describe("runner lease loop", () => {
  it("storage down for a second: the upload is retried and the job completes", async () => {
    edge.storageDownMs = 1_000;
    edge.queue.push(leased(edge, "job_storage"));
    const r = runner(edge);
    const running = r.run();
    await until("completion", () => r.done.length === 1);
    await r.stop();
    await running;
    expect(r.done[0]).toMatchObject({ id: "job_storage", status: "succeeded" });
    expect(edge.uploads.get("/store/job_storage/0.png")).toBeGreaterThan(100);
    const complete = edge.calls.find((c) => c.path === "/internal/v1/jobs/job_storage/complete")!;
    expect(complete.body.images[0]).toMatchObject({ index: 0, width: 64, height: 64, seed: 1 });
    expect(complete.body.timings.upload_ms).toBeGreaterThan(900);
  });

  it("storage down for longer than the retries: the job fails clearly and goes back to the queue", async () => {
    edge.storageDownMs = 60_000;
    edge.queue.push(leased(edge, "job_nostore"));
    const r = runner(edge);
    const running = r.run();
    await until("failure", () => r.done.length === 1);
    await r.stop();
    await running;
    edge.storageDownMs = 0;
    const fail = edge.calls.find((c) => c.path === "/internal/v1/jobs/job_nostore/fail")!;
    expect(fail.body.retryable).toBe(true);
    expect(fail.body.error.message).toMatch(/upload failed after 6 attempts: storage answered 503/);
    // The store failed, not the job: the edge requeues it without counting the attempt.
    expect(fail.body.error.code).toBe("storage_unavailable");
  });

  it("cancel reaches a running generation within a step", async () => {
    edge.queue.push(leased(edge, "job_cancel", { steps: 400 }));
    const r = runner(edge);
    const running = r.run();
    await until("a heartbeat with progress", () =>
      edge.calls.some((c) => c.path === "/internal/v1/jobs/job_cancel/heartbeat" && c.body.progress?.step > 0),
    );
    edge.cancel.add("job_cancel");
    const t = Date.now();
    await until("cancel", () => r.done.length === 1);
    const reaction = Date.now() - t;
    await r.stop();
    await running;
    expect(r.done[0]).toMatchObject({ id: "job_cancel", status: "canceled" });
    expect(reaction).toBeLessThan(2_000);
    expect(edge.calls.some((c) => c.path === "/internal/v1/jobs/job_cancel/complete")).toBe(false);
    const last = edge.calls.filter((c) => c.path === "/internal/v1/jobs/job_cancel/heartbeat").at(-1)!;
    expect(last.body.progress.step).toBeLessThan(400);
  });

  it("a failure sends its code and whether it is retryable, across the worker boundary too", async () => {
    edge.queue.push(
      leased(edge, "job_nomodel", { model: "not-here" }),
      leased(edge, "job_sampler", { sampler: "rectified-flow" }),
    );
    const r = runner(edge);
    const running = r.run();
    await until("two failures", () => r.done.length === 2);
    await r.stop();
    await running;
    const failOf = (id: string) => edge.calls.find((c) => c.path === `/internal/v1/jobs/${id}/fail`)!.body;
    expect(failOf("job_nomodel")).toMatchObject({ retryable: false, error: { code: "model_not_served" } });
    expect(failOf("job_sampler")).toMatchObject({
      retryable: false,
      error: { code: "sampler_mismatch", message: expect.stringMatching(/rectified-flow/) },
    });
  });

  it("shutdown past the grace period hands the job back to the queue", async () => {
    edge.queue.push(leased(edge, "job_shutdown", { steps: 400 }));
    const r = runner(edge, { shutdownGraceMs: 200 });
    const running = r.run();
    await until("the job to start", () =>
      edge.calls.some((c) => c.path === "/internal/v1/jobs/job_shutdown/heartbeat"),
    );
    await r.stop();
    await running;
    expect(r.done[0]).toMatchObject({ id: "job_shutdown", status: "released" });
    const fail = edge.calls.find((c) => c.path === "/internal/v1/jobs/job_shutdown/fail")!;
    expect(fail.body).toMatchObject({ retryable: true, error: { code: "runner_shutdown" } });
  });

  const jobCalls = (id: string) => edge.calls.filter((c) => c.path.startsWith(`/internal/v1/jobs/${id}/`));

  it("stop() hangs up the lease call in flight: a job that would arrive is never started", async () => {
    edge.leaseDelayMs = 1_500;
    edge.queue.push(leased(edge, "job_arriving"));
    const before = edge.calls.length;
    const r = runner(edge, { leaseWaitMs: 5_000 });
    const running = r.run();
    await until("the long poll", () => edge.calls.slice(before).some((c) => c.path === "/internal/v1/lease"));
    const t = Date.now();
    await r.stop();
    await running;
    expect(Date.now() - t).toBeLessThan(500);
    await until("the edge to see the hang-up", () => edge.hungUp === 1, 3_000);
    edge.leaseDelayMs = 0;
    expect(r.done).toEqual([]);
    expect(jobCalls("job_arriving")).toEqual([]);
    expect(edge.queue.splice(0).map((j) => (j.job as { id: string }).id)).toEqual(["job_arriving"]);
  });

  it("a job that arrives anyway as the runner stops is handed back unacknowledged, before stop() resolves", async () => {
    let arrive!: () => void;
    const arrived = new Promise<void>((resolve) => (arrive = resolve));
    // An answer already on its way when stop() is called: the abort cannot take it back.
    class LateAnswer extends EdgeClient {
      override async lease(): Promise<LeasedJob[]> {
        await arrived;
        return [leased(edge, "job_late") as LeasedJob];
      }
    }
    const r = runner(edge, { edge: new LateAnswer(edge.url, "igr_test") });
    const running = r.run();
    const stopped = r.stop();
    arrive();
    await stopped;
    expect(jobCalls("job_late").map((c) => c.path)).toEqual(["/internal/v1/jobs/job_late/fail"]);
    expect(jobCalls("job_late")[0]!.body).toMatchObject({ retryable: true, error: { code: "runner_shutdown" } });
    expect(r.done).toEqual([{ id: "job_late", status: "released", ms: 0 }]);
    await running;
  });

  it("a lease is acknowledged beside the work; one the edge no longer honours is dropped: nothing stored or reported", async () => {
    edge.lost.add("job_gone");
    edge.queue.push(leased(edge, "job_gone"), leased(edge, "job_kept"));
    const r = runner(edge);
    const running = r.run();
    await until("both jobs", () => r.done.length === 2);
    await r.stop();
    await running;
    expect(r.done.map((d) => [d.id, d.status])).toEqual([
      ["job_gone", "lost"],
      ["job_kept", "succeeded"],
    ]);
    expect(jobCalls("job_gone").map((c) => c.path)).toEqual(["/internal/v1/jobs/job_gone/heartbeat"]);
    expect(jobCalls("job_kept")[0]!.path).toBe("/internal/v1/jobs/job_kept/heartbeat");
    expect(jobCalls("job_kept")[0]!.body.progress).toBeUndefined();
    expect(edge.uploads.has("/store/job_gone/0.png")).toBe(false);
    // Uploaded with the signed checksum (the fake store refuses a body without it), then completed with the same.
    const complete = jobCalls("job_kept").find((c) => c.path.endsWith("/complete"))!;
    const asked = jobCalls("job_kept").find((c) => c.path.endsWith("/outputs"))!;
    expect(asked.body.images).toEqual([
      { index: 0, sha256: complete.body.images[0].sha256, size_bytes: complete.body.images[0].size_bytes },
    ]);
    expect(edge.uploads.get("/store/job_kept/0.png")).toBe(complete.body.images[0].size_bytes);
  });

  it("an add-on file with a NaN weight fails the job for good: no retry on another runner", async () => {
    const module = "lora_unet_down_blocks_0_attn_attn2_to_q";
    const up = new Float32Array(16).fill(0.01);
    up[3] = Number.NaN;
    const lora = encodeSafetensors({
      [`${module}.lora_down.weight`]: { shape: [2, 8], data: new Float32Array(16).fill(0.01) },
      [`${module}.lora_up.weight`]: { shape: [8, 2], data: up },
    });
    const sha256 = createHash("sha256").update(lora).digest("hex");
    edge.files.set("nan.safetensors", lora);
    const job = leased(edge, "job_nan", { loras: [{ id: "addon_nan", version: 1, name: "nan", sha256, scale: 1 }] });
    job.addons = [
      {
        id: "addon_nan",
        version: 1,
        ref: "addon_nan@1",
        kind: "lora",
        sha256,
        size_bytes: lora.byteLength,
        get_url: `${edge.url}/files/nan.safetensors`,
      },
    ];
    edge.queue.push(job);
    const r = runner(edge);
    const running = r.run();
    await until("the failure", () => r.done.length === 1);
    await r.stop();
    await running;
    const fail = jobCalls("job_nan").find((c) => c.path.endsWith("/fail"))!;
    expect(fail.body).toMatchObject({ retryable: false, error: { message: expect.stringMatching(/non-finite/) } });
    expect(["addon_invalid", "lora_invalid"]).toContain(fail.body.error.code);
  });

  it("a hung store: tries end by the upload URLs' expiry, the job goes back as storage_unavailable, and leasing waits for a probe", async () => {
    edge.storageHang = true;
    edge.uploadTtlMs = 1_500;
    edge.queue.push(leased(edge, "job_hung"), leased(edge, "job_after"));
    const r = runner(edge, { storageBackoffMs: { baseMs: 400, maxMs: 400 } });
    const running = r.run();
    try {
      await until("the hand-back", () => r.done.length === 1, 15_000);
      const call = (end: string) => jobCalls("job_hung").find((c) => c.path.endsWith(end))!;
      // From the upload URLs (alive 1.5 s) to the hand-back: the deadline, not 60 s a try.
      expect(call("/fail").at - call("/outputs").at).toBeLessThan(2_500);
      expect(call("/fail").body).toMatchObject({ retryable: true, error: { code: "storage_unavailable" } });
      // Storage still hangs: probes fail, no job is taken.
      await new Promise((res) => setTimeout(res, 1_500));
      expect(edge.queue.map((j) => (j.job as { id: string }).id)).toEqual(["job_after"]);
      edge.storageHang = false;
      await until("the next job, once a probe got through", () => r.done.length === 2, 15_000);
    } finally {
      edge.storageHang = false;
      edge.uploadTtlMs = 30_000;
      await r.stop();
      await running;
    }
    expect(r.done.map((d) => [d.id, d.status])).toEqual([
      ["job_hung", "failed"],
      ["job_after", "succeeded"],
    ]);
  });

  it("cancel aborts an upload in flight to a hung store, within a heartbeat", async () => {
    edge.storageHang = true;
    edge.queue.push(leased(edge, "job_cancel_upload"));
    const r = runner(edge);
    const running = r.run();
    let reaction: number;
    try {
      await until("the upload to start", () => jobCalls("job_cancel_upload").some((c) => c.path.endsWith("/outputs")));
      const t = Date.now();
      edge.cancel.add("job_cancel_upload");
      await until("cancel", () => r.done.length === 1, 5_000);
      reaction = Date.now() - t;
    } finally {
      edge.storageHang = false;
      await r.stop();
      await running;
    }
    expect(reaction).toBeLessThan(1_000);
    expect(r.done[0]).toMatchObject({ id: "job_cancel_upload", status: "canceled" });
    expect(jobCalls("job_cancel_upload").some((c) => c.path.endsWith("/fail") || c.path.endsWith("/complete"))).toBe(
      false,
    );
  });

  it("heartbeats follow the lease TTL the edge announces: three per TTL, capped by the runner's own maximum", () => {
    expect(heartbeatInterval(600)).toBe(200);
    expect(heartbeatInterval(30_000)).toBe(10_000);
    expect(heartbeatInterval(30_000, 100)).toBe(100);
    // An edge that announces none: the old fixed interval.
    expect(heartbeatInterval(undefined)).toBe(5_000);
  });
});
