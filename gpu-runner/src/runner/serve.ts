#!/usr/bin/env node
/**
 * The runner daemon: serves every model bundle under --models (folders joined with ":") to the edge's runner API.
 *
 *   EDGE_URL=http://127.0.0.1:8787 RUNNER_TOKEN=igr_… npx node gpu-runner/src/runner/serve.ts --workers 1
 *
 * It holds up to --workers × --batch × --depth jobs and runs compatible ones as one U-Net batch (batcher.ts); a job
 * waits at most --batch-window-ms for batch-mates while a worker is free.
 *
 * (from the repository root; `npx node` is the project-local Node 22, which runs the .ts directly)
 *
 * SIGINT / SIGTERM: stop leasing, finish the job in hand (or hand it back after --grace-ms), then exit. A closed
 * stdout or stderr (the launcher gone first) loses log lines, never the job: writes to it are dropped (EPIPE).
 */
import { tmpdir } from "node:os";
import { delimiter, dirname, join } from "node:path";
import { DEFAULT_MERGE_HOT_AFTER } from "../addons/hot-merge.ts";
import { DEFAULT_ADDON_JOIN_FRACTION } from "../addons/late-join.ts";
import { AddonStore } from "../addons/store.ts";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { SessionConfigSchema } from "../pipeline/bundle.ts";
import { InferencePool } from "../workers/pool.ts";
import { EdgeClient } from "./edge-client.ts";
import { discoverModels, Runner } from "./runner.ts";

/** Measured in tests/bench/THROUGHPUT.md. */
const DEFAULT_BATCH = 4;
const DEFAULT_BATCH_WINDOW_MS = 0;
const DEFAULT_DEPTH = 2;

const DEFAULT_MODELS = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "models");

/** `--addon-join-fraction`: a number in [0, 1], or "off" to load add-ons before sampling starts. */
function joinFraction(value: string | undefined): { addonJoinFraction?: number } {
  if (value === undefined || value === "off") return {};
  const f = Number(value);
  if (!(f >= 0 && f <= 1))
    throw new Error(`--addon-join-fraction must be a number in [0, 1] or "off" (got "${value}")`);
  return { addonJoinFraction: f };
}

/** `--batch`, `--batch-window-ms`, `--depth`: images per U-Net batch, the batching window, batches per worker in hand. */
function batching(
  batch: string,
  windowMs: string,
  depth: string,
): { batch: number; batchWindowMs: number; depth: number } {
  const b = Number(batch);
  if (!Number.isInteger(b) || b < 1 || b > 64)
    throw new Error(`--batch must be a whole number in [1, 64] (got "${batch}")`);
  const w = Number(windowMs);
  if (!(w >= 0 && w <= 1_000)) throw new Error(`--batch-window-ms must be a number in [0, 1000] (got "${windowMs}")`);
  const d = Number(depth);
  if (!Number.isInteger(d) || d < 1 || d > 8)
    throw new Error(`--depth must be a whole number in [1, 8] (got "${depth}")`);
  return { batch: b, batchWindowMs: w, depth: d };
}

function wholeNumber(flag: string, value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new Error(`${flag} must be a whole number ≥ 1 (got "${value}")`);
  return n;
}

/** `--lora-merge-after`: merge a LoRA set into a worker's weights on its n-th batch there; 0 never. */
function mergeAfter(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--lora-merge-after must be a whole number ≥ 0 (got "${value}")`);
  return n;
}

const { values } = parseArgs({
  options: {
    edge: { type: "string", default: process.env.EDGE_URL ?? "http://127.0.0.1:8787" },
    token: { type: "string", default: process.env.RUNNER_TOKEN },
    models: { type: "string", default: process.env.MODELS_DIR ?? DEFAULT_MODELS },
    only: { type: "string", default: process.env.RUNNER_MODELS },
    workers: { type: "string", default: process.env.RUNNER_WORKERS ?? "1" },
    // Images per U-Net batch; the runner holds up to workers × batch × depth jobs (bench: tests/bench/THROUGHPUT.md).
    batch: { type: "string", default: process.env.RUNNER_BATCH ?? String(DEFAULT_BATCH) },
    // Batches per worker in hand: 2 overlaps the edge's round trips (ack, upload, complete) with inference.
    depth: { type: "string", default: process.env.RUNNER_DEPTH ?? String(DEFAULT_DEPTH) },
    "batch-window-ms": {
      type: "string",
      default: process.env.RUNNER_BATCH_WINDOW_MS ?? String(DEFAULT_BATCH_WINDOW_MS),
    },
    threads: { type: "string", default: process.env.RUNNER_THREADS ?? "1" },
    ep: { type: "string", default: process.env.EXECUTION_PROVIDERS ?? "cpu" },
    // Unset: three beats per lease TTL the edge announces. Set: at most this long between beats.
    "heartbeat-ms": { type: "string" },
    "addon-cache": { type: "string", default: process.env.ADDON_CACHE_DIR ?? join(tmpdir(), "imagegen-addons") },
    "addon-memory-mb": { type: "string", default: process.env.ADDON_MEMORY_MB ?? "512" },
    "addon-disk-mb": { type: "string", default: process.env.ADDON_DISK_MB ?? "4096" },
    "addon-join-fraction": {
      type: "string",
      default: process.env.ADDON_JOIN_FRACTION ?? String(DEFAULT_ADDON_JOIN_FRACTION),
    },
    "parallel-controlnet": { type: "boolean", default: process.env.PARALLEL_CONTROLNET === "1" },
    "lora-merge-after": { type: "string", default: process.env.LORA_MERGE_AFTER ?? String(DEFAULT_MERGE_HOT_AFTER) },
    "grace-ms": { type: "string", default: "30000" },
    // Lease long polls in flight while the runner has room (default: workers × batch + 1).
    "lease-polls": { type: "string", default: process.env.RUNNER_LEASE_POLLS },
    // The most jobs one lease call brings (default: the batch size; 1: one per call).
    "lease-max": { type: "string", default: process.env.RUNNER_LEASE_MAX },
    // One round trip less per job; a lease whose answer is lost then costs its attempt (RunnerOptions).
    "ack-in-lease": { type: "boolean", default: process.env.RUNNER_ACK_IN_LEASE === "1" },
  },
});

if (!values.token) {
  process.stderr.write("serve: a runner token is required (--token or RUNNER_TOKEN; the admin API issues them)\n");
  process.exit(2);
}

// --models / MODELS_DIR: one folder of bundles, or several joined like PATH (the zoo's, imported ones).
let models = new Map(
  values.models
    .split(delimiter)
    .filter(Boolean)
    .flatMap((dir) => [...discoverModels(dir)]),
);
if (values.only) {
  const keep = new Set(values.only.split(","));
  models = new Map([...models].filter(([name]) => keep.has(name)));
}
if (models.size === 0) {
  process.stderr.write(`serve: no model bundles found in ${values.models}\n`);
  process.exit(2);
}

const pool = new InferencePool({
  size: Number(values.workers),
  // The flag forces parallel; without it each worker measures which mode is faster ("auto").
  parallelControlNet: values["parallel-controlnet"] ? true : "auto",
  mergeHotAfter: mergeAfter(values["lora-merge-after"]),
  session: SessionConfigSchema.parse({
    executionProviders: values.ep.split(","),
    intraOpNumThreads: Number(values.threads),
  }),
});
const runner = new Runner({
  // STORAGE_PROXY: the fault suite's fault-injecting proxy in front of the store (tests/faults).
  edge: new EdgeClient(values.edge, values.token, undefined, process.env.STORAGE_PROXY || undefined),
  pool,
  models,
  addons: new AddonStore({
    memoryBudgetBytes: Number(values["addon-memory-mb"]) * 1024 * 1024,
    diskDir: join(values["addon-cache"], "files"),
    diskBudgetBytes: Number(values["addon-disk-mb"]) * 1024 * 1024,
  }),
  controlNetDir: join(values["addon-cache"], "controlnets"),
  ...joinFraction(values["addon-join-fraction"]),
  ...(values["heartbeat-ms"] ? { heartbeatMs: Number(values["heartbeat-ms"]) } : {}),
  shutdownGraceMs: Number(values["grace-ms"]),
  acknowledgeInLease: values["ack-in-lease"],
  ...(values["lease-polls"] ? { leasePolls: wholeNumber("--lease-polls", values["lease-polls"]) } : {}),
  ...(values["lease-max"] ? { leaseMax: wholeNumber("--lease-max", values["lease-max"]) } : {}),
  ...batching(values.batch, values["batch-window-ms"], values.depth),
});

// A log line to a reader that has gone must not crash the runner mid-job (an unhandled EPIPE 'error' event would).
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code !== "EPIPE" && err.code !== "ERR_STREAM_DESTROYED") throw err;
  });
}

let stopping = false;
const shutdown = async () => {
  if (stopping) return;
  stopping = true;
  await runner.stop();
  await pool.close();
  process.exit(0);
};
process.on("SIGINT", shutdown);
process.on("SIGTERM", shutdown);

await runner.run();
await pool.close();
