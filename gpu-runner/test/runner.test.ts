/**
 * The runner's lease loop against a stand-in edge and store on 127.0.0.1 (the real edge is exercised end to end in
 * tests/e2e): storage that is down for a while, cancel mid-generation, shutdown with a job in hand.
 */
import { createHash } from "node:crypto";
import { createServer, type IncomingMessage, type Server } from "node:http";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { encodeSafetensors } from "@imagegen/formats/safetensors";
import { AddonStore } from "../src/addons/store.ts";
import { EdgeClient, type LeasedJob } from "../src/runner/edge-client.ts";
import { discoverModels, heartbeatInterval, Runner } from "../src/runner/runner.ts";
import { InferencePool } from "../src/workers/pool.ts";

const MODELS = join(import.meta.dirname, "../models");
const pool = new InferencePool({ size: 1 });
afterAll(() => pool.close());

interface FakeEdge {
  url: string;
  server: Server;
  /** Jobs handed out once each. */
  queue: Array<Record<string, unknown>>;
  calls: Array<{ path: string; body: any; at: number }>;
  /** Storage answers 503 for this long after the first upload attempt of each object. */
  storageDownMs: number;
  firstAttempt: Map<string, number>;
  uploads: Map<string, number>;
  cancel: Set<string>;
  /** Heartbeats on these jobs answer 409 (the lease is gone). */
  lost: Set<string>;
  /** The lease answer waits this long (a long poll in progress). */
  leaseDelayMs: number;
  /** Lease calls whose runner hung up before the answer. */
  hungUp: number;
  /** Files served to GET /files/<name> (add-ons). */
  files: Map<string, Uint8Array>;
  /** Storage takes every request and never answers (a hung store). */
  storageHang: boolean;
  /** How long the upload URLs live (their expiry bounds the runner's tries). */
  uploadTtlMs: number;
  /** The lease TTL heartbeats announce (none when undefined). */
  leaseTtlMs: number | undefined;
}

async function body(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function fakeEdge(): Promise<FakeEdge> {
  const edge: FakeEdge = {
    url: "",
    server: null as unknown as Server,
    queue: [],
    calls: [],
    storageDownMs: 0,
    firstAttempt: new Map(),
    uploads: new Map(),
    cancel: new Set(),
    lost: new Set(),
    leaseDelayMs: 0,
    hungUp: 0,
    files: new Map(),
    storageHang: false,
    uploadTtlMs: 30_000,
    leaseTtlMs: undefined,
  };
  edge.server = createServer(async (req, res) => {
    const raw = await body(req);
    const path = req.url!;
    if (path.startsWith("/files/")) {
      const file = edge.files.get(path.slice("/files/".length));
      return file ? res.writeHead(200).end(file) : res.writeHead(404).end();
    }
    if (path.startsWith("/store/")) {
      if (edge.storageHang) return;
      if (!edge.firstAttempt.has(path)) edge.firstAttempt.set(path, Date.now());
      if (Date.now() < edge.firstAttempt.get(path)! + edge.storageDownMs) return res.writeHead(503).end("down");
      // As S3 and R2 do with a signed x-amz-checksum-sha256: other bytes are refused.
      if (req.headers["x-amz-checksum-sha256"] !== createHash("sha256").update(raw).digest("base64"))
        return res.writeHead(400).end("<Error><Code>BadDigest</Code></Error>");
      edge.uploads.set(path, raw.byteLength);
      return res.writeHead(200).end();
    }
    const json = raw.length ? JSON.parse(raw.toString()) : null;
    edge.calls.push({ path, body: json, at: Date.now() });
    const reply = (status: number, payload?: unknown) =>
      res.writeHead(status, { "content-type": "application/json" }).end(payload ? JSON.stringify(payload) : undefined);
    if (path === "/internal/v1/lease") {
      if (edge.leaseDelayMs) {
        let closed = false;
        res.on("close", () => (closed = true));
        await new Promise((r) => setTimeout(r, edge.leaseDelayMs));
        if (closed) {
          edge.hungUp++;
          return;
        }
      }
      let gone = false;
      res.on("close", () => (gone = !res.writableFinished));
      const job = edge.queue.shift();
      if (!job) {
        await new Promise((r) => setTimeout(r, 50));
        return reply(204);
      }
      // A runner that stopped an instant ago may still have a lease call in this process's queue: as the real edge
      // does (an unacknowledged lease goes back), the job returns to the queue rather than to nobody.
      await new Promise((r) => setTimeout(r, 5));
      if (gone || req.socket.destroyed) return void edge.queue.unshift(job);
      return reply(200, job);
    }
    const m = path.match(/^\/internal\/v1\/jobs\/([^/]+)\/(heartbeat|outputs|complete|fail)$/);
    if (!m) return reply(404, { error: { code: "route_not_found", message: path } });
    if (m[2] === "heartbeat" && edge.lost.has(m[1]!))
      return reply(409, { error: { code: "lease_expired", message: "expired" } });
    if (m[2] === "heartbeat")
      return reply(200, {
        cancel: edge.cancel.has(m[1]!),
        lease_expires_at: null,
        ...(edge.leaseTtlMs ? { lease_ttl_ms: edge.leaseTtlMs } : {}),
      });
    if (m[2] === "outputs") {
      const uploads = json.images.map((i: { index: number; sha256: string }) => ({
        index: i.index,
        storage_key: `out/${m[1]}/${i.index}.png`,
        put_url: `${edge.url}/store/${m[1]}/${i.index}.png`,
        headers: {
          "content-type": "image/png",
          "x-amz-checksum-sha256": Buffer.from(i.sha256, "hex").toString("base64"),
        },
        expires_at: new Date(Date.now() + edge.uploadTtlMs).toISOString(),
      }));
      return reply(200, { uploads });
    }
    return reply(200, { job: {} });
  });
  await new Promise<void>((r) => edge.server.listen(0, "127.0.0.1", r));
  const port = (edge.server.address() as { port: number }).port;
  edge.url = `http://127.0.0.1:${port}`;
  return edge;
}

function leased(edge: FakeEdge, id: string, request: Record<string, unknown> = {}) {
  return {
    lease_id: `lease_${id}`,
    lease_expires_at: new Date(Date.now() + 30_000).toISOString(),
    job: {
      id,
      tenant_id: "ten_x",
      attempt: 1,
      queued_ms: 1,
      request: {
        model: "tiny-shapes-random",
        prompt: "a red circle",
        negative_prompt: "",
        width: 64,
        height: 64,
        n: 1,
        seed: 1,
        sampler: "ddim",
        steps: 4,
        guidance: 3,
        loras: [],
        controlnets: [],
        cache: { mode: "off" },
        output_ttl_seconds: 3600,
        metadata: {},
        ...request,
      },
    },
    outputs: [{ index: 0, storage_key: `out/${id}/0.png`, content_type: "image/png" }],
    addons: [] as LeasedJob["addons"],
  };
}

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
    log: process.env.RUNNER_TEST_LOG ? (e) => console.log(JSON.stringify(e)) : () => {},
    ...opts,
  });
}

async function until(what: string, fn: () => boolean, ms = 30_000) {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

let edge: FakeEdge;
beforeAll(async () => {
  edge = await fakeEdge();
});
afterAll(() => edge.server.close());

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
      override async lease(): Promise<LeasedJob | null> {
        await arrived;
        return leased(edge, "job_late") as LeasedJob;
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

  it("a lease is acknowledged before any work; one the edge no longer honours is dropped untouched", async () => {
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
