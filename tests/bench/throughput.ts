/**
 * Throughput of the whole local stack (`npm run bench:throughput -w tests`): LCM-4 images per second at 1, 4, 16
 * and 64 concurrent clients (each posting `Prefer: wait=60` generations back to back), with 1 and 2 runners, beside
 * the worker pool's raw inference throughput (`InferencePool.generateBatch` kept busy directly: the same workers,
 * threads and batch size, no edge) measured in the same run, before and after each stack sweep. Also: raw images/s
 * by batch size (what `--batch` defaults to) and the batching window's worth (0 vs a few ms). Written to
 * tests/bench/THROUGHPUT.md with the command and the machine's load.
 *
 * Environment: SECONDS_PER_LEVEL (default 8), WORKERS (per runner, default 1), THREADS (default 1), RUNNERS ("1,2"),
 * CLIENTS ("1,4,16,64"), RAW_BATCHES ("1,2,4,8"), VARIANTS (JSON: the configurations compared with one runner).
 */
import { mkdtempSync, writeFileSync } from "node:fs";
import { availableParallelism, loadavg, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { AddonStore } from "@imagegen/gpu-runner/addons/store";
import { discoverModels, Runner } from "@imagegen/gpu-runner/runner";
import { EdgeClient } from "@imagegen/gpu-runner/runner/edge-client";
import { InferencePool } from "@imagegen/gpu-runner/workers/pool";
// The runner tests' stand-in edge: instant answers on loopback, to see the runner's own cost apart from the edge's.
import { fakeEdge, leased } from "../../gpu-runner/test/runner-fake-edge.ts";
import { api, startStack, type Stack } from "../e2e/stack.ts";

const SECONDS = Number(process.env.SECONDS_PER_LEVEL ?? 8);
const WORKERS = Number(process.env.WORKERS ?? 1);
const THREADS = Number(process.env.THREADS ?? 1);
/** The runner's defaults (serve.ts), and the variants compared with one runner. */
const DEFAULT: Config = { batch: 4, depth: 2, windowMs: 0 };
const VARIANTS: Array<Config & { clients: number[] }> = JSON.parse(
  process.env.VARIANTS ??
    JSON.stringify([
      { batch: 4, depth: 2, windowMs: 0, leaseMax: 1, clients: [1, 16, 64] },
      { batch: 4, depth: 2, windowMs: 5, clients: [1, 4, 16] },
      { batch: 4, depth: 1, windowMs: 0, clients: [4, 16, 64] },
      { batch: 4, depth: 2, windowMs: 0, ack: true, clients: [1, 16, 64] },
      { batch: 1, depth: 1, windowMs: 0, clients: [1, 4, 16, 64] },
    ]),
);
const CLIENTS = (process.env.CLIENTS ?? "1,4,16,64").split(",").map(Number);
const RUNNERS = (process.env.RUNNERS ?? "1,2").split(",").filter(Boolean).map(Number);
const RAW_BATCHES = (process.env.RAW_BATCHES ?? "1,2,4,8").split(",").filter(Boolean).map(Number);
const MODEL = "tiny-shapes-lcm";
const BUNDLE = resolve(import.meta.dirname, "../../gpu-runner/models", MODEL);
interface Config {
  batch: number;
  depth: number;
  windowMs: number;
  /** The runner asks the edge to acknowledge each lease in the lease (`--ack-in-lease`). */
  ack?: boolean;
  /** Lease long polls in flight (`--lease-polls`; default workers × batch + 1). */
  polls?: number;
  /** The most jobs one lease call brings (`--lease-max`; default the batch size; 1 is the runner before it). */
  leaseMax?: number;
}
const request = (seed: number) => ({
  model: MODEL,
  prompt: "a large red circle on the left, blue background",
  sampler: "lcm" as const,
  steps: 4,
  seed,
});

const load = () =>
  loadavg()
    .map((l) => l.toFixed(2))
    .join(" / ");

/** Images per second of a pool of `size` workers kept busy with batches of `batch` LCM-4 requests. */
async function rawThroughput(size: number, batch: number, seconds: number): Promise<number> {
  const pool = new InferencePool({ size, session: { executionProviders: ["cpu"], intraOpNumThreads: THREADS } });
  try {
    const one = (seed: number) => {
      const { model: _m, ...r } = request(seed);
      return r;
    };
    // Every worker loads the bundle and runs once before the clock starts.
    await Promise.all(Array.from({ length: size }, (_, i) => pool.generateBatch(BUNDLE, [one(i)])));
    let images = 0;
    let seed = 1000;
    const end = performance.now() + seconds * 1000;
    const start = performance.now();
    await Promise.all(
      Array.from({ length: size }, async () => {
        while (performance.now() < end) {
          const reqs = Array.from({ length: batch }, () => one(seed++));
          await pool.generateBatch(BUNDLE, reqs);
          images += batch;
        }
      }),
    );
    return images / ((performance.now() - start) / 1000);
  } finally {
    await pool.close();
  }
}

/**
 * One runner (`config`, WORKERS workers) against the stand-in edge with a deep queue for SECONDS: images/s counted
 * after the first second, beside raw inference on the same pool size and batch measured right after.
 */
async function standIn(
  config: Config,
): Promise<{ config: Config; imagesPerSecond: number; raw: number; batchImages: number; jobsPerLease: number }> {
  const edge = await fakeEdge();
  const pool = new InferencePool({
    size: WORKERS,
    session: { executionProviders: ["cpu"], intraOpNumThreads: THREADS },
  });
  const models = new Map([...discoverModels(resolve(BUNDLE, ".."))].filter(([name]) => name === MODEL));
  let batchImages = 0;
  let batches = 0;
  const runner = new Runner({
    edge: new EdgeClient(edge.url, "igr_bench"),
    pool,
    models,
    addons: new AddonStore({ memoryBudgetBytes: 1 << 20 }),
    controlNetDir: mkdtempSync(join(tmpdir(), "bench-cn-")),
    leaseWaitMs: 100,
    shutdownGraceMs: 0,
    batch: config.batch,
    depth: config.depth,
    batchWindowMs: config.windowMs,
    acknowledgeInLease: config.ack ?? false,
    ...(config.polls ? { leasePolls: config.polls } : {}),
    ...(config.leaseMax ? { leaseMax: config.leaseMax } : {}),
    log: (e) => {
      if (e.event !== "job.done") return;
      batchImages += Number(e.batch_images ?? 1);
      batches++;
    },
  });
  const { model: _m, ...r } = request(0);
  const guidance = 4; // tiny-shapes-lcm's default (its guidance is an embedding)
  for (let i = 0; i < 5_000; i++) edge.queue.push(leased(edge, `job_${i}`, { ...r, model: MODEL, seed: i, guidance }));
  const running = runner.run();
  const ok = () => runner.done.filter((d) => d.status === "succeeded").length;
  // Warm-up: the workers load the bundle.
  while (ok() < WORKERS * config.batch) await new Promise((res) => setTimeout(res, 20));
  const from = ok();
  const start = performance.now();
  await new Promise((res) => setTimeout(res, SECONDS * 1000));
  const imagesPerSecond = (ok() - from) / ((performance.now() - start) / 1000);
  await runner.stop();
  await running;
  await pool.close();
  edge.server.close();
  return {
    config,
    imagesPerSecond,
    raw: await rawThroughput(WORKERS, config.batch, Math.min(SECONDS, 5)),
    batchImages: batchImages / Math.max(1, batches),
    jobsPerLease: edge.leaseCalls.reduce((a, b) => a + b, 0) / Math.max(1, edge.leaseCalls.length),
  };
}

interface Level {
  clients: number;
  /** From the runners' job.done log lines of this level: mean images per batch, medians in ms. */
  runner?: { batchImages: number; jobMs: number; inferenceMs: number; uploadMs: number; jobsPerLease: number };
  imagesPerSecond: number;
  p50: number;
  p95: number;
  completed: number;
  failed: number;
}

/**
 * `clients` loops posting generations back to back for SECONDS; throughput counts what completed after the first
 * second (the pipe filled) up to the end, latencies are each request's to its downloadable URL.
 */
async function stackLevel(stack: Stack, key: string, clients: number, seedBase: number): Promise<Level> {
  const start = performance.now();
  const end = start + SECONDS * 1000;
  const from = start + 1000;
  const done: Array<{ at: number; ms: number }> = [];
  let failed = 0;
  let firstFailure: string | undefined;
  let seed = seedBase;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (performance.now() < end) {
        const t = performance.now();
        const g = await api(stack, "POST", "/v1/generations", key, request(seed++), {
          prefer: "wait=60",
        });
        if (g.body?.status === "succeeded" && g.body.images?.[0]?.url)
          done.push({ at: performance.now(), ms: performance.now() - t });
        else {
          failed++;
          firstFailure ??= `${g.status} ${JSON.stringify(g.body).slice(0, 300)}`;
        }
      }
    }),
  );
  if (firstFailure) process.stderr.write(`clients ${clients}: ${failed} failed, the first: ${firstFailure}\n`);
  const counted = done.filter((d) => d.at >= from && d.at <= end);
  const ms = done.map((d) => d.ms).sort((a, b) => a - b);
  const q = (p: number) => ms[Math.min(ms.length - 1, Math.floor(ms.length * p))] ?? Number.NaN;
  return {
    clients,
    imagesPerSecond: counted.length / ((end - from) / 1000),
    p50: q(0.5),
    p95: q(0.95),
    completed: done.length,
    failed,
  };
}

/** Where a job's time went in the runner, from its `job.done` log lines. */
function runnerSide(logs: string): Pick<Level, "runner"> {
  const events = (name: string) =>
    logs
      .split("\n")
      .filter((l) => l.includes(`"event":"${name}"`))
      .map((l) => JSON.parse(l.slice(l.indexOf("{"))) as Record<string, number>);
  const done = events("job.done");
  const leases = events("lease");
  if (done.length === 0) return {};
  const med = (k: string) => done.map((d) => d[k]!).sort((a, b) => a - b)[Math.floor(done.length / 2)]!;
  return {
    runner: {
      batchImages: done.reduce((s, d) => s + (d.batch_images ?? 1), 0) / done.length,
      jobMs: med("ms"),
      inferenceMs: med("inference_ms"),
      uploadMs: med("upload_ms"),
      jobsPerLease: leases.reduce((s, l) => s + l.jobs!, 0) / Math.max(1, leases.length),
    },
  };
}

interface Sweep {
  runners: number;
  config: Config;
  levels: Level[];
  raw: number[];
  loadAfter: string;
}

async function sweep(runners: number, config: Config, clients: number[]): Promise<Sweep> {
  const raw = [await rawThroughput(runners * WORKERS, config.batch, Math.min(SECONDS, 5))];
  const stack = await startStack({
    runners,
    env: {
      SKIP_DEMO: "1",
      RUNNER_WORKERS: String(WORKERS),
      RUNNER_THREADS: String(THREADS),
      RUNNER_BATCH: String(config.batch),
      RUNNER_DEPTH: String(config.depth),
      RUNNER_BATCH_WINDOW_MS: String(config.windowMs),
      RUNNER_ACK_IN_LEASE: config.ack ? "1" : "0",
      ...(config.polls ? { RUNNER_LEASE_POLLS: String(config.polls) } : {}),
      ...(config.leaseMax ? { RUNNER_LEASE_MAX: String(config.leaseMax) } : {}),
    },
  });
  const levels: Level[] = [];
  try {
    if (!stack.models.includes(MODEL)) throw new Error(`the stack does not serve ${MODEL}: ${stack.models.join(", ")}`);
    // A tenant of the bench's own whose limits (concurrency, images a day, rate) are not what is measured.
    const limits = { max_concurrent_jobs: 10_000, max_images_per_day: 10_000_000, rate_limit_per_minute: 1_000_000 };
    const tenant = await api(stack, "POST", "/admin/v1/tenants", stack.adminToken, { name: "bench", limits });
    const key = (
      await api(stack, "POST", `/admin/v1/tenants/${tenant.body.id}/keys`, stack.adminToken, { name: "bench" })
    ).body.secret as string;
    // Warm-up: every runner's workers load the bundle.
    await Promise.all(
      Array.from({ length: runners * WORKERS * 2 }, (_, i) =>
        api(stack, "POST", "/v1/generations", key, request(i), { prefer: "wait=60" }),
      ),
    );
    for (const [i, c] of clients.entries()) {
      const logFrom = stack.logs().length;
      const level = await stackLevel(stack, key, c, 10_000 * (i + 1));
      levels.push({ ...level, ...runnerSide(stack.logs().slice(logFrom)) });
      process.stderr.write(`runners ${runners} ${describe(config)} clients ${c}: ${JSON.stringify(levels.at(-1))}\n`);
    }
  } finally {
    if (process.env.STACK_LOG)
      writeFileSync(
        `${process.env.STACK_LOG}.${runners}.${config.batch}.${config.depth}.${config.windowMs}${config.ack ? ".ack" : ""}${config.polls ? `.p${config.polls}` : ""}${config.leaseMax ? `.m${config.leaseMax}` : ""}`,
        stack.logs(),
      );
    await stack.stop();
  }
  raw.push(await rawThroughput(runners * WORKERS, config.batch, Math.min(SECONDS, 5)));
  return { runners, config, levels, raw, loadAfter: load() };
}

const loadBefore = load();
const byBatch: Array<[number, number]> = [];
for (const b of RAW_BATCHES) {
  byBatch.push([b, await rawThroughput(1, b, Math.min(SECONDS, 4))]);
  process.stderr.write(`raw, 1 worker, batch ${b}: ${byBatch.at(-1)![1].toFixed(1)} images/s\n`);
}
const standIns = [];
const STAND_INS: Config[] = JSON.parse(
  process.env.STAND_INS ??
    JSON.stringify([
      DEFAULT,
      { ...DEFAULT, leaseMax: 1 },
      { ...DEFAULT, depth: 1 },
      { ...DEFAULT, batch: 1, depth: 1 },
    ]),
);
for (const config of STAND_INS) {
  standIns.push(await standIn(config));
  process.stderr.write(`stand-in edge: ${JSON.stringify(standIns.at(-1))}\n`);
}
const sweeps: Sweep[] = [];
for (const runners of RUNNERS) {
  sweeps.push(await sweep(runners, DEFAULT, CLIENTS));
  // With one runner: the window's worth, the depth's, and batching's (batch 1, depth 1 is the runner before it).
  if (runners === 1) for (const { clients, ...config } of VARIANTS) sweeps.push(await sweep(1, config, clients));
}

const f = (x: number) => (Number.isFinite(x) ? x.toFixed(1) : "–");
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
const sweepTable = (s: Sweep) => {
  const raw = mean(s.raw);
  return `### ${s.runners} runner${s.runners > 1 ? "s" : ""}, ${describe(s.config)}${s.config === DEFAULT ? " (the default)" : ""}

Raw inference (pool.generateBatch, ${s.runners * WORKERS} worker(s), batch ${s.config.batch}): ${s.raw.map(f).join(" before, ")} after the sweep → **${f(raw)} images/s**. Load average after: ${s.loadAfter}.

| clients | images/s | stack / raw | p50 ms | p95 ms | completed | failed | images per batch | jobs per lease answer | runner ms per job: total / inference / outputs+upload+complete |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |
${s.levels
  .map(
    (l) =>
      `| ${l.clients} | ${f(l.imagesPerSecond)} | ${((100 * l.imagesPerSecond) / raw).toFixed(0)}% | ${f(l.p50)} | ${f(l.p95)} | ${l.completed} | ${l.failed} | ${l.runner ? l.runner.batchImages.toFixed(2) : "–"} | ${l.runner ? l.runner.jobsPerLease.toFixed(2) : "–"} | ${l.runner ? `${f(l.runner.jobMs)} / ${f(l.runner.inferenceMs)} / ${f(l.runner.uploadMs)}` : "–"} |`,
  )
  .join("\n")}
`;
};
function describe(c: Config): string {
  return `--batch ${c.batch} --depth ${c.depth} --batch-window-ms ${c.windowMs}${c.ack ? " --ack-in-lease" : ""}${c.polls ? ` --lease-polls ${c.polls}` : ""}${c.leaseMax ? ` --lease-max ${c.leaseMax}` : ""}`;
}
const saturation = (s: Sweep) => Math.max(...s.levels.map((l) => l.imagesPerSecond)) / mean(s.raw);

const report = `# Throughput: images per second through the whole local stack

Model \`${MODEL}\` (LCM, 4 steps, 64×64), one image per request; whole local stack (wrangler dev + local R2 +
runners) on 127.0.0.1, each client posting \`Prefer: wait=60\` generations back to back for ${SECONDS} s per level
(images counted after the first second; a request counts when it answers with a downloadable URL). Runners:
${WORKERS} worker(s) × ${THREADS} intra-op thread(s) each, capacity (jobs in hand) = workers × batch × depth.
Machine: ${availableParallelism()} cores, shared with other work (load average at the start ${loadBefore}, at the end
${load()}); the edge simulator, the clients and the runners share these cores, so the stack's own CPU comes out of the
inference's. Command: \`npm run bench:throughput -w tests\` (environment: ${["SECONDS_PER_LEVEL", "WORKERS", "THREADS", "RUNNERS", "CLIENTS", "VARIANTS"].map((k) => `${k}=${process.env[k] ?? "default"}`).join(", ")}).

## Raw inference by batch size (1 worker)

| batch | images/s |
| ---: | ---: |
${byBatch.map(([b, ips]) => `| ${b} | ${f(ips)} |`).join("\n")}

## One runner against a stand-in edge

The runner tests' stand-in edge (\`gpu-runner/test/runner-fake-edge.ts\`: lease, heartbeat, outputs, store PUT,
complete, answered at once on loopback) with a deep queue: the runner's own cost (leases, acknowledgements, batching,
PNG hashing, uploads) apart from the edge's, ${WORKERS} worker(s).

| runner | images/s | raw (same pool and batch, right after) | runner / raw | images per batch | jobs per lease answer |
| --- | ---: | ---: | ---: | ---: | ---: |
${standIns.map((s) => `| ${describe(s.config)} | ${f(s.imagesPerSecond)} | ${f(s.raw)} | ${((100 * s.imagesPerSecond) / s.raw).toFixed(0)}% | ${s.batchImages.toFixed(2)} | ${s.jobsPerLease.toFixed(2)} |`).join("\n")}

## Stack beside raw inference

${sweeps.map(sweepTable).join("\n")}
How to read the runner columns: a job's time in its runner from lease to completion, its inference (the batch's, in
the worker) and the outputs → PUT → complete round trips; what is left is the acknowledgement and the wait for a
worker. A runner holds at most workers × batch × depth jobs, so when the edge's round trips take longer than the
inference, its workers idle however many clients wait: images/s ≈ jobs in hand / runner ms per job. "Jobs per lease
answer": a lease call asks for up to a batch (\`max_jobs\`, the default) and brings what is queued up to that, never
past the runner's room; \`--lease-max 1\` is the runner before it, one job per call.

Why the stack stays below raw on this machine: workerd runs the Worker, its Durable Objects and the local D1 and R2
on one thread, and shares the two cores with the runner's inference and the clients, while "raw" has a core to
itself. A CPU profile of the edge isolate under 64 clients (the DevTools protocol on wrangler dev's inspector) found
it busy over 90% of the time. Per generation the edge makes about 7 D1 round trips (15 before the second round of
cuts) and creates no Durable Object; what would shard past one database is in infra/deploy/SCALING.md.

## At saturation

${sweeps
  .filter((s) => s.levels.some((l) => l.clients === Math.max(...CLIENTS)))
  .map(
    (s) =>
      `- ${s.runners} runner(s), ${describe(s.config)}: ${f(Math.max(...s.levels.map((l) => l.imagesPerSecond)))} of ${f(mean(s.raw))} images/s, stack / raw = **${(100 * saturation(s)).toFixed(0)}%** (target ≥ 90%)`,
  )
  .join("\n")}
`;
writeFileSync(join(import.meta.dirname, "THROUGHPUT.md"), report);
process.stdout.write(report);
