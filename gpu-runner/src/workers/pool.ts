/**
 * A pool of inference workers sized to the cores (or devices). `InferenceSession.run` works on the calling
 * JavaScript thread, so generations run in worker_threads and the main thread stays free for leases, heartbeats
 * and HTTP. Jobs go to an idle worker that already holds their bundle when there is one.
 *
 * @example
 * const pool = new InferencePool({ size: 2, session: { executionProviders: ["cpu"], intraOpNumThreads: 1 } });
 * const result = await pool.generate("gpu-runner/models/tiny-shapes", { prompt: "a red circle", seed: 1 });
 * await pool.close();
 */
import { availableParallelism } from "node:os";
import { resolve } from "node:path";
import { Worker } from "node:worker_threads";
import { DEFAULT_SESSION_CONFIG, type SessionConfig } from "../pipeline/bundle.ts";
import type { GenerationResult } from "../pipeline/pipeline.ts";
import type { GenerationRequest } from "../pipeline/request.ts";
import type { FromWorker, ToWorker, WorkerInit } from "./protocol.ts";
import type { LoraLoadReport, RequestAddons } from "../addons/request-addons.ts";
import { fromWire, toWire } from "../errors.ts";

export interface PoolOptions {
  /** Number of workers; defaults to the number of cores. */
  size?: number;
  session?: SessionConfig;
  /**
   * ControlNets in a worker of their own, in parallel with the U-Net's head (true), in sequence (false), or, by
   * default ("auto"), whichever each worker measures faster per model and ControlNet set (addons/controlnet-mode.ts;
   * on the CPU and the small tiny-shapes U-Net that is sequence: bench/ADDONS.md).
   */
  parallelControlNet?: boolean | "auto";
  /** Merge a LoRA set into a worker's U-Net weights on its n-th batch there (AddonRuntimeOptions); 0: never. */
  mergeHotAfter?: number;
  /** Fold a batch's one LoRA set into weights fed as inputs (AddonRuntimeOptions.foldLoras; on by default). */
  foldLoras?: boolean;
}

export interface JobOptions {
  onProgress?: (progress: { step: number; steps: number }) => void;
  signal?: AbortSignal;
  /**
   * Per request (same order), its LoRAs and ControlNets. A promise starts the generation at once and lets the
   * add-ons join by step ⌊addonJoinFraction · steps⌋ (bounded asynchronous loading); without a fraction it is
   * awaited first.
   */
  addons?: RequestAddons[] | Promise<RequestAddons[]>;
  addonJoinFraction?: number;
  /**
   * Per request, its LoRA set (`loraSetKey`), known before late add-ons arrive: a worker that
   * holds that hot set merged into the weights runs the batch on them.
   */
  loraSets?: string[];
  /**
   * Told at which step the add-ons took effect (0: from the start), whether the LoRAs ran merged, and per request
   * how each LoRA file mapped onto the model (keys mapped / total).
   */
  onAddonsJoined?: (step: number | null, lorasMerged: boolean, loraLoads: LoraLoadReport[][]) => void;
}

interface Job {
  id: number;
  bundleDir: string;
  requests: GenerationRequest[];
  options: JobOptions;
  cancelFlag: SharedArrayBuffer;
  resolve: (results: GenerationResult[]) => void;
  reject: (err: Error) => void;
}

interface Slot {
  worker: Worker;
  job: Job | null;
  bundles: Set<string>;
}

const WORKER_URL = new URL("./inference-worker.ts", import.meta.url);

export class InferencePool {
  readonly size: number;
  readonly session: SessionConfig;
  readonly parallelControlNet: boolean | "auto";
  private readonly mergeHotAfter: number | undefined;
  private readonly foldLoras: boolean | undefined;
  private readonly slots: Slot[] = [];
  private readonly queue: Job[] = [];
  private nextId = 1;
  private closed = false;

  constructor(options: PoolOptions = {}) {
    this.size = options.size ?? availableParallelism();
    if (!Number.isInteger(this.size) || this.size < 1) throw new RangeError(`pool size must be ≥ 1, got ${this.size}`);
    this.session = options.session ?? DEFAULT_SESSION_CONFIG;
    this.parallelControlNet = options.parallelControlNet ?? "auto";
    this.mergeHotAfter = options.mergeHotAfter;
    this.foldLoras = options.foldLoras;
    for (let i = 0; i < this.size; i++) this.slots.push(this.spawn());
  }

  private spawn(): Slot {
    const init: WorkerInit = {
      session: this.session,
      parallelControlNet: this.parallelControlNet,
      ...(this.mergeHotAfter !== undefined ? { mergeHotAfter: this.mergeHotAfter } : {}),
      ...(this.foldLoras !== undefined ? { foldLoras: this.foldLoras } : {}),
    };
    const slot: Slot = { worker: new Worker(WORKER_URL, { workerData: init }), job: null, bundles: new Set() };
    slot.worker.on("message", (msg: FromWorker) => this.onMessage(slot, msg));
    slot.worker.on("error", (err) => this.onCrash(slot, err));
    slot.worker.on("exit", (code) => {
      if (!this.closed) this.onCrash(slot, new Error(`inference worker exited with code ${code}`));
    });
    return slot;
  }

  private onMessage(slot: Slot, msg: FromWorker): void {
    const job = slot.job;
    if (job === null || job.id !== msg.id) return;
    if (msg.type === "progress") {
      job.options.onProgress?.({ step: msg.step, steps: msg.steps });
      return;
    }
    slot.job = null;
    if (msg.type === "result") {
      slot.bundles.add(job.bundleDir);
      job.options.onAddonsJoined?.(msg.addonsJoinedAt, msg.lorasMerged, msg.loraLoads);
      job.resolve(msg.results);
    } else {
      job.reject(fromWire(msg.error));
    }
    this.dispatch();
  }

  /** A worker that died takes its job with it; it is replaced so the pool keeps its size. */
  private onCrash(slot: Slot, err: Error): void {
    const index = this.slots.indexOf(slot);
    if (index < 0) return;
    slot.job?.reject(err);
    slot.worker.removeAllListeners();
    void slot.worker.terminate();
    if (this.closed) return;
    this.slots[index] = this.spawn();
    this.dispatch();
  }

  private dispatch(): void {
    while (this.queue.length > 0) {
      const idle = this.slots.filter((s) => s.job === null);
      if (idle.length === 0) return;
      const job = this.queue.shift()!;
      const slot = idle.find((s) => s.bundles.has(job.bundleDir)) ?? idle[0]!;
      slot.job = job;
      const { addons, addonJoinFraction } = job.options;
      const late = addons instanceof Promise && addonJoinFraction !== undefined;
      const msg: ToWorker = {
        type: "generate",
        id: job.id,
        bundleDir: job.bundleDir,
        requests: job.requests,
        cancelFlag: job.cancelFlag,
        ...(addons && !(addons instanceof Promise) ? { addons } : {}),
        ...(late ? { addonJoinFraction } : {}),
        ...(job.options.loraSets ? { loraSets: job.options.loraSets } : {}),
      };
      slot.worker.postMessage(msg);
      if (late) {
        (addons as Promise<RequestAddons[]>).then(
          (a) =>
            slot.job === job && slot.worker.postMessage({ type: "addons", id: job.id, addons: a } satisfies ToWorker),
          (e: unknown) =>
            slot.job === job &&
            slot.worker.postMessage({ type: "addons-failed", id: job.id, error: toWire(e) } satisfies ToWorker),
        );
      }
    }
  }

  /** Runs one generation on a worker; resolves with the images, timings and what produced them. */
  async generate(bundleDir: string, request: GenerationRequest, options: JobOptions = {}): Promise<GenerationResult> {
    return (await this.generateBatch(bundleDir, [request], options))[0]!;
  }

  /** Runs compatible requests (equal `batchKey`) as one batch on one worker; one result per request. */
  async generateBatch(
    bundleDir: string,
    requests: GenerationRequest[],
    options: JobOptions = {},
  ): Promise<GenerationResult[]> {
    if (this.closed) throw new Error("pool is closed");
    // Without a join step, add-ons still on their way are waited for before the job is queued.
    if (options.addons instanceof Promise && options.addonJoinFraction === undefined)
      options = { ...options, addons: await options.addons };
    // A late add-on that fails before its job reaches a worker is reported through the job, not as an unhandled rejection.
    if (options.addons instanceof Promise) options.addons.catch(() => {});
    return new Promise<GenerationResult[]>((resolveJob, rejectJob) => {
      const job: Job = {
        id: this.nextId++,
        bundleDir: resolve(bundleDir),
        requests,
        options,
        cancelFlag: new SharedArrayBuffer(4),
        resolve: resolveJob,
        reject: rejectJob,
      };
      options.signal?.addEventListener("abort", () => {
        const queued = this.queue.indexOf(job);
        if (queued >= 0) {
          this.queue.splice(queued, 1);
          rejectJob(new Error("generation canceled"));
        } else Atomics.store(new Int32Array(job.cancelFlag), 0, 1);
      });
      this.queue.push(job);
      this.dispatch();
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const job of this.queue.splice(0)) job.reject(new Error("pool closed"));
    await Promise.all(
      this.slots.map(async (slot) => {
        slot.job?.reject(new Error("pool closed"));
        slot.worker.removeAllListeners();
        await slot.worker.terminate();
      }),
    );
  }
}
