/**
 * Dynamic batching of leased jobs onto the inference pool. Compatible jobs (same bundle, `batchKey` fields and
 * add-on class, see `jobBatchKey`) run as one `generateBatch`; a job waits at most `windowMs` for batch-mates while
 * a worker is free, and while every worker is busy jobs gather into batches at no cost. At most one batch per worker
 * is handed to the pool, so the batch a freed worker takes is as large as the queue allows.
 *
 * Isolation: each job keeps its own signal. A job canceled while queued leaves its group; canceled while its batch
 * runs, it is answered at once and its images are discarded, while its batch-mates go on (the batch is canceled only
 * when every job in it is). A batch that fails runs its jobs again one by one, so one bad request fails only itself.
 *
 * @example
 * const batcher = new Batcher(pool, { maxBatch: 4, windowMs: 2 });
 * const result = await batcher.submit({ key, bundleDir, request, signal });
 */
import { performance } from "node:perf_hooks";
import type { LoraLoadReport, RequestAddons } from "../addons/request-addons.ts";
import type { GenerationResult } from "../pipeline/pipeline.ts";
import { GenerationRequest } from "../pipeline/request.ts";
import type { InferencePool } from "../workers/pool.ts";

export interface BatchEntry {
  /** Jobs with equal keys may share a batch (`jobBatchKey`); `null` runs the job alone. */
  key: string | null;
  bundleDir: string;
  request: GenerationRequest;
  /** The job's add-ons, loaded. */
  addons?: RequestAddons;
  /** Add-ons still loading that join by this fraction of the steps (a job alone, `key` null). */
  late?: { loading: Promise<RequestAddons>; joinFraction: number };
  /** The job's LoRA set (`loraSetKey`), for a worker holding it merged. */
  loraSet?: string;
  signal: AbortSignal;
  onProgress?: (progress: { step: number; steps: number }) => void;
  onAddonsJoined?: (step: number | null, lorasMerged: boolean, loraLoads: LoraLoadReport[]) => void;
}

export interface BatcherOptions {
  /** The most images one batch holds (a job asking for more runs alone). */
  maxBatch: number;
  /** How long a job waits for batch-mates while a worker is free. */
  windowMs: number;
  /** Batches handed to the pool at once; the pool's size. */
  slots: number;
}

interface Pending {
  entry: BatchEntry;
  images: number;
  resolve: (r: GenerationResult) => void;
  reject: (e: unknown) => void;
  /** Settled (answered, canceled) already. */
  done: boolean;
  /** Ran in a batch that failed: runs alone now. */
  solo: boolean;
  onAbort?: () => void;
}

interface Group {
  key: string;
  bundleDir: string;
  since: number;
  items: Pending[];
}

/**
 * What must be equal for two requests to share a U-Net batch: the pipeline's `batchKey` fields (sampler, steps,
 * guidance, size, cache, forceSampler), read from the request as the worker will parse it. Null for a request the
 * worker will refuse (it runs alone and fails alone).
 */
export function requestBatchKey(request: GenerationRequest): string | null {
  const parsed = GenerationRequest.safeParse(request);
  if (!parsed.success) return null;
  const r = parsed.data;
  return JSON.stringify([r.sampler, r.steps, r.guidance, r.width, r.height, r.cache, r.forceSampler]);
}

export class Batcher {
  private readonly pool: Pick<InferencePool, "generateBatch">;
  private readonly o: BatcherOptions;
  private readonly groups = new Map<string, Group>();
  private inFlight = 0;
  private timer: NodeJS.Timeout | null = null;
  private solos = 0;
  private idleWaiters: Array<() => void> = [];
  /** Batches dispatched, by how many jobs each held (for logs, tests and the bench). */
  readonly batchSizes: number[] = [];

  constructor(pool: Pick<InferencePool, "generateBatch">, options: BatcherOptions) {
    if (!Number.isInteger(options.maxBatch) || options.maxBatch < 1)
      throw new RangeError(`batch size must be a whole number ≥ 1, got ${options.maxBatch}`);
    if (!(options.windowMs >= 0)) throw new RangeError(`batch window must be ≥ 0 ms, got ${options.windowMs}`);
    this.pool = pool;
    this.o = options;
  }

  /**
   * Resolves once no batch runs in the pool: a canceled job is answered before its batch stops, and a pool closed
   * under a running batch would terminate a worker inside ONNX Runtime.
   */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** Runs the job in a batch; resolves with its own result, rejects with its cancel reason or its failure. */
  submit(entry: BatchEntry): Promise<GenerationResult> {
    return new Promise<GenerationResult>((resolve, reject) => {
      const images = GenerationRequest.safeParse(entry.request).data?.n ?? 1;
      const item: Pending = { entry, images, resolve, reject, done: false, solo: false };
      if (entry.signal.aborted) return reject(entry.signal.reason);
      item.onAbort = () => this.abandon(item);
      entry.signal.addEventListener("abort", item.onAbort, { once: true });
      this.enqueue(item);
      this.pump();
    });
  }

  private enqueue(item: Pending, front = false): void {
    const { entry } = item;
    const alone = entry.key === null || item.solo || item.images >= this.o.maxBatch || entry.late !== undefined;
    const key = alone ? `solo:${++this.solos}` : `${entry.bundleDir}|${entry.key}`;
    let group = this.groups.get(key);
    if (!group) {
      group = { key, bundleDir: entry.bundleDir, since: front ? 0 : performance.now(), items: [] };
      this.groups.set(key, group);
    }
    group.items.push(item);
  }

  /** A job canceled (or its runner stopping): answered now; a queued job leaves its group. */
  private abandon(item: Pending): void {
    if (item.done) return;
    item.done = true;
    for (const [key, group] of this.groups) {
      const i = group.items.indexOf(item);
      if (i < 0) continue;
      group.items.splice(i, 1);
      if (group.items.length === 0) this.groups.delete(key);
    }
    item.reject(item.entry.signal.reason);
  }

  private settle(item: Pending, outcome: { ok: GenerationResult } | { err: unknown }): void {
    if (item.done) return;
    item.done = true;
    if (item.onAbort) item.entry.signal.removeEventListener("abort", item.onAbort);
    if ("ok" in outcome) item.resolve(outcome.ok);
    else item.reject(outcome.err);
  }

  /** Hands ready groups to free workers, oldest first; wakes up again when the next window ends. */
  private pump(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    while (this.inFlight < this.o.slots) {
      const now = performance.now();
      let pick: Group | undefined;
      let nextReady = Number.POSITIVE_INFINITY;
      for (const g of this.groups.values()) {
        const images = g.items.reduce((s, i) => s + i.images, 0);
        const readyAt = images >= this.o.maxBatch ? 0 : g.since + this.o.windowMs;
        if (readyAt <= now) {
          if (!pick || g.since < pick.since) pick = g;
        } else nextReady = Math.min(nextReady, readyAt);
      }
      if (!pick) {
        if (Number.isFinite(nextReady)) {
          this.timer = setTimeout(() => this.pump(), Math.max(0, nextReady - now));
        }
        return;
      }
      this.dispatch(this.take(pick));
    }
  }

  /** Up to `maxBatch` images of a group's jobs, in arrival order (always at least one job). */
  private take(group: Group): Pending[] {
    const batch: Pending[] = [];
    let images = 0;
    while (group.items.length > 0) {
      const next = group.items[0]!;
      if (batch.length > 0 && images + next.images > this.o.maxBatch) break;
      batch.push(group.items.shift()!);
      images += next.images;
    }
    if (group.items.length === 0) this.groups.delete(group.key);
    return batch;
  }

  private dispatch(batch: Pending[]): void {
    this.inFlight++;
    this.batchSizes.push(batch.length);
    const all = new AbortController();
    const maybeAbortAll = () => {
      if (batch.every((i) => i.done)) all.abort(new Error("every job of the batch was canceled"));
    };
    for (const item of batch) item.entry.signal.addEventListener("abort", maybeAbortAll, { once: true });
    const first = batch[0]!.entry;
    const withAddons = batch.some((i) => i.entry.addons);
    const loraSets = batch.map((i) => i.entry.loraSet);
    this.pool
      .generateBatch(
        first.bundleDir,
        batch.map((i) => i.entry.request),
        {
          ...(first.late
            ? {
                addons: first.late.loading.then((a) => [a]),
                addonJoinFraction: first.late.joinFraction,
              }
            : withAddons
              ? { addons: batch.map((i) => i.entry.addons ?? { loras: [], controlnets: [] }) }
              : {}),
          ...(loraSets.every((s) => s !== undefined) ? { loraSets: loraSets as string[] } : {}),
          signal: all.signal,
          onProgress: (p) => {
            for (const i of batch) if (!i.done) i.entry.onProgress?.(p);
          },
          onAddonsJoined: (step, merged, loads) =>
            batch.forEach((i) => !i.done && i.entry.onAddonsJoined?.(step, merged, loads[batch.indexOf(i)] ?? [])),
        },
      )
      .then(
        (results) => batch.forEach((item, k) => this.settle(item, { ok: results[k]! })),
        (err: unknown) => {
          const live = batch.filter((i) => !i.done);
          if (live.length > 1) {
            // Which request failed is not known: each runs again alone and fails (or not) on its own.
            for (const item of live.reverse()) {
              item.solo = true;
              this.enqueue(item, true);
            }
          } else for (const item of live) this.settle(item, { err });
        },
      )
      .finally(() => {
        for (const item of batch) item.entry.signal.removeEventListener("abort", maybeAbortAll);
        this.inFlight--;
        this.pump();
        if (this.inFlight === 0) for (const wake of this.idleWaiters.splice(0)) wake();
      });
  }
}
