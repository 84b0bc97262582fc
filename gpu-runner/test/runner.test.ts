/**
 * The runner's lease loop against a stand-in edge and store on 127.0.0.1 (the real edge is exercised end to end in
 * tests/e2e): storage that is down for a while, cancel mid-generation, shutdown with a job in hand.
 */
import { createServer, type IncomingMessage, type Server } from "node:http";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AddonStore } from "../src/addons/store.ts";
import { EdgeClient } from "../src/runner/edge-client.ts";
import { discoverModels, Runner } from "../src/runner/runner.ts";
import { InferencePool } from "../src/workers/pool.ts";

const MODELS = join(import.meta.dirname, "../models");
const pool = new InferencePool({ size: 1 });
afterAll(() => pool.close());

interface FakeEdge {
  url: string;
  server: Server;
  /** Jobs handed out once each. */
  queue: Array<Record<string, unknown>>;
  calls: Array<{ path: string; body: any }>;
  /** Storage answers 503 for this long after the first upload attempt of each object. */
  storageDownMs: number;
  firstAttempt: Map<string, number>;
  uploads: Map<string, number>;
  cancel: Set<string>;
}

async function body(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function fakeEdge(): Promise<FakeEdge> {
  const edge: FakeEdge = { url: "", server: null as unknown as Server, queue: [], calls: [], storageDownMs: 0, firstAttempt: new Map(), uploads: new Map(), cancel: new Set() };
  edge.server = createServer(async (req, res) => {
    const raw = await body(req);
    const path = req.url!;
    if (path.startsWith("/store/")) {
      if (!edge.firstAttempt.has(path)) edge.firstAttempt.set(path, Date.now());
      if (Date.now() < edge.firstAttempt.get(path)! + edge.storageDownMs) return res.writeHead(503).end("down");
      edge.uploads.set(path, raw.byteLength);
      return res.writeHead(200).end();
    }
    const json = raw.length ? JSON.parse(raw.toString()) : null;
    edge.calls.push({ path, body: json });
    const reply = (status: number, payload?: unknown) => res.writeHead(status, { "content-type": "application/json" }).end(payload ? JSON.stringify(payload) : undefined);
    if (path === "/internal/v1/lease") {
      const job = edge.queue.shift();
      if (!job) {
        await new Promise((r) => setTimeout(r, 50));
        return reply(204);
      }
      return reply(200, job);
    }
    const m = path.match(/^\/internal\/v1\/jobs\/([^/]+)\/(heartbeat|complete|fail)$/);
    if (!m) return reply(404, { error: { code: "route_not_found", message: path } });
    if (m[2] === "heartbeat") return reply(200, { cancel: edge.cancel.has(m[1]!), lease_expires_at: null });
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
    outputs: [{ index: 0, storage_key: `out/${id}/0.png`, put_url: `${edge.url}/store/${id}/0.png`, content_type: "image/png" }],
    addons: [],
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
    log: () => {},
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
  });

  it("cancel reaches a running generation within a step", async () => {
    edge.queue.push(leased(edge, "job_cancel", { steps: 400 }));
    const r = runner(edge);
    const running = r.run();
    await until("a heartbeat with progress", () => edge.calls.some((c) => c.path === "/internal/v1/jobs/job_cancel/heartbeat" && c.body.progress?.step > 0));
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
    edge.queue.push(leased(edge, "job_nomodel", { model: "not-here" }), leased(edge, "job_sampler", { sampler: "rectified-flow" }));
    const r = runner(edge);
    const running = r.run();
    await until("two failures", () => r.done.length === 2);
    await r.stop();
    await running;
    const failOf = (id: string) => edge.calls.find((c) => c.path === `/internal/v1/jobs/${id}/fail`)!.body;
    expect(failOf("job_nomodel")).toMatchObject({ retryable: false, error: { code: "model_not_served" } });
    expect(failOf("job_sampler")).toMatchObject({ retryable: false, error: { code: "sampler_mismatch", message: expect.stringMatching(/rectified-flow/) } });
  });

  it("shutdown past the grace period hands the job back to the queue", async () => {
    edge.queue.push(leased(edge, "job_shutdown", { steps: 400 }));
    const r = runner(edge, { shutdownGraceMs: 200 });
    const running = r.run();
    await until("the job to start", () => edge.calls.some((c) => c.path === "/internal/v1/jobs/job_shutdown/heartbeat"));
    await r.stop();
    await running;
    expect(r.done[0]).toMatchObject({ id: "job_shutdown", status: "released" });
    const fail = edge.calls.find((c) => c.path === "/internal/v1/jobs/job_shutdown/fail")!;
    expect(fail.body).toMatchObject({ retryable: true, error: { code: "runner_shutdown" } });
  });
});
