/**
 * The lease loop: lease a job (long poll, no sleeping between polls), run it in the inference pool while a
 * heartbeat extends the lease, reports progress and learns of cancel, upload the PNGs to the job's presigned
 * URLs, complete with image metadata, timings and provenance. A lease is acknowledged (first heartbeat) beside
 * the work, which starts at once: only then does the edge count the attempt, and nothing is stored or reported for
 * a lease the acknowledgement finds gone. On shutdown it hangs up its long poll, hands back untouched
 * a job that arrives anyway, finishes the job in hand, or, past the grace period, hands it back (a retryable failure
 * puts it back in the queue).
 *
 * Capacity: a runner holds up to `workers × batch × depth` leases at once (the edge enforces what it registered), with a
 * few lease long polls in flight while it has room; each job keeps its own lease, heartbeats, cancel, upload and
 * complete. Compatible jobs run as one U-Net batch (batcher.ts). A job's add-ons start loading as it is leased, before
 * the batching window.
 *
 * Storage outages: uploads are bounded by the upload URLs' expiry (the lease's), each try cut short by cancel; a job
 * whose images could not be stored goes back as `storage_unavailable`, which costs it no attempt, and the runner
 * leases nothing more until a probe finds the store answering (exponential backoff), rather than burning the
 * attempts of every job it would take meanwhile.
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import type { InferencePool } from "../workers/pool.ts";
import { ControlImageError, conditioningTensor, dataUrlBytes, decodePng } from "../addons/control-image.ts";
import { loraSetKey, type LoraLoadReport, type RequestAddons } from "../addons/request-addons.ts";
import { AddonIntegrityError, type AddonStore, type FetchedAddon } from "../addons/store.ts";
import { describeIssues, FAILURE_CODES, failureOf, RunnerError } from "../errors.ts";
import { readTar } from "@imagegen/formats/tar";
import { ControlNetManifest } from "@imagegen/formats/manifest";

import { formatAddonRef } from "@imagegen/contracts/refs";
import type { GenerationRequest } from "../pipeline/request.ts";
import { Batcher, requestBatchKey, type BatchEntry } from "./batcher.ts";
import {
  EdgeError,
  sleep,
  StorageUnavailable,
  type EdgeClient,
  type LeasedJob,
  type OutputUpload,
} from "./edge-client.ts";

export interface ModelEntry {
  name: string;
  dir: string;
  /** SHA-256 of the bundle's manifest.json (which lists its components' hashes): what produced an image. */
  manifestSha256: string;
  /** How the model applies LoRAs: "branch" lets requests with different LoRA sets share a batch. */
  loraMode?: "branch" | "merge";
}

/** Every diffusion bundle under `modelsDir`, by model name. */
export function discoverModels(modelsDir: string): Map<string, ModelEntry> {
  const models = new Map<string, ModelEntry>();
  if (!existsSync(modelsDir)) return models;
  for (const name of readdirSync(modelsDir)) {
    const path = join(modelsDir, name, "manifest.json");
    if (!existsSync(path)) continue;
    const text = readFileSync(path);
    const manifest = JSON.parse(text.toString("utf8")) as {
      kind?: string;
      name?: string;
      lora?: { mode?: "branch" | "merge" };
    };
    if (manifest.kind !== "diffusion" || !manifest.name) continue;
    models.set(manifest.name, {
      name: manifest.name,
      dir: join(modelsDir, name),
      manifestSha256: createHash("sha256").update(text).digest("hex"),
      ...(manifest.lora?.mode ? { loraMode: manifest.lora.mode } : {}),
    });
  }
  return models;
}

type EdgeRequest = LeasedJob["job"]["request"];

/** The fields of the edge's request that decide the images (the rest says where they go and who asked). */
export function pipelineRequest(r: EdgeRequest): GenerationRequest {
  const { prompt, negative_prompt, sampler, steps, seed, guidance, n, width, height, cache } = r;
  return { prompt, negative_prompt, sampler, steps, seed, guidance, n, width, height, cache };
}

export interface RunnerOptions {
  edge: EdgeClient;
  pool: InferencePool;
  models: Map<string, ModelEntry>;
  /** Fetches, verifies and caches add-ons; its warm set goes to the edge for affinity routing. */
  addons: AddonStore;
  /** Where ControlNet add-ons are unpacked (one folder per sha256). */
  controlNetDir: string;
  /**
   * Bounded asynchronous loading: start sampling while add-ons load, and wait for them by this fraction of the
   * steps at the latest. Undefined: load them first (they take effect from step 0).
   */
  addonJoinFraction?: number;
  /**
   * The longest gap between heartbeats. The runner beats three times per lease TTL the edge announces
   * (`lease_ttl_ms`), and at this interval when the edge announces none; this caps it (tests beat fast).
   */
  heartbeatMs?: number;
  /** First and longest pause in leasing while storage fails (doubling in between). */
  storageBackoffMs?: { baseMs: number; maxMs: number };
  /** How long shutdown waits for the job in hand before handing it back. */
  shutdownGraceMs?: number;
  leaseWaitMs?: number;
  /**
   * Images per U-Net batch (default 1). The runner holds up to `pool.size × batch` jobs (its capacity, at most 64)
   * and runs compatible ones together.
   */
  batch?: number;
  /** How long a job waits for batch-mates while a worker is free (default 0: batches form only while all are busy). */
  batchWindowMs?: number;
  /**
   * Batches per worker held at once (default 1): 2 lets the next batch be leased and acknowledged, and the last one
   * upload and complete, while one runs, so the edge's round trips do not leave workers idle. Capacity is
   * `pool.size × batch × depth`, at most 64.
   */
  depth?: number;
  /**
   * Ask the edge to acknowledge each lease as it makes it (one round trip less per job; an edge that does not, still
   * gets the acknowledging heartbeat). The cost: a lease whose answer is lost, or that arrives as the runner stops,
   * has counted its attempt, and a lost one waits out the full TTL. Default false.
   */
  acknowledgeInLease?: boolean;
  /** Lease long polls in flight at once while the runner has room (default: workers × batch + 1, at most its capacity). */
  leasePolls?: number;
  /**
   * The most jobs one lease call may bring (`max_jobs`; default: the batch size): a busy queue fills a batch in one
   * round trip, not one per job. Never more than the room the runner has left beside its other polls (the edge caps
   * the jobs a runner holds at its capacity in any case); not a whole capacity at once either, so that with a short
   * queue other runners' polls get their share rather than one runner holding jobs its busy workers cannot start.
   * 1 asks one job per call (as an edge older than `max_jobs` is asked anyway).
   */
  leaseMax?: number;
  log?: (event: Record<string, unknown>) => void;
}

/** How a lease names an add-on version (`LeasedJob.addons[].ref`). */

export class Runner {
  private stopping = false;
  /** Jobs the lease calls in flight asked for (each may bring that many). */
  private asked = 0;
  private loop: Promise<void> | null = null;
  /** Jobs in hand and lease calls in flight; `wake` resolves the lease loop's wait when one of them ends. */
  private readonly inHand = new Set<Promise<void>>();
  private readonly polls = new Set<Promise<void>>();
  private wake: () => void = () => {};
  /** The most jobs this runner holds at once (declared on every lease; the edge may hold it lower). */
  readonly capacity: number;
  private readonly batcher: Batcher;
  private readonly leaseAbort = new AbortController();
  private readonly jobAbort = new AbortController();
  private readonly heartbeatMs: number | undefined;
  /** While storage fails: when to probe it next, the consecutive failures, and a URL it could not write to. */
  private storageOutage: { until: number; failures: number; url: string } | null = null;
  private readonly log: (event: Record<string, unknown>) => void;
  /** Jobs finished by this runner, for the CLI's summary and the tests. */
  readonly done: Array<{ id: string; status: "succeeded" | "failed" | "canceled" | "released" | "lost"; ms: number }> =
    [];

  private readonly o: RunnerOptions;

  constructor(options: RunnerOptions) {
    this.o = options;
    this.heartbeatMs = options.heartbeatMs;
    const batch = options.batch ?? 1;
    this.batcher = new Batcher(options.pool, {
      maxBatch: batch,
      windowMs: options.batchWindowMs ?? 0,
      slots: options.pool.size,
    });
    const depth = options.depth ?? 1;
    if (!Number.isInteger(depth) || depth < 1) throw new RangeError(`depth must be a whole number ≥ 1, got ${depth}`);
    this.capacity = Math.min(MAX_CAPACITY, options.pool.size * batch * depth);
    this.log =
      options.log ?? ((e) => process.stderr.write(`${JSON.stringify({ t: new Date().toISOString(), ...e })}\n`));
  }

  /** Leases and runs jobs until `stop()`. */
  run(): Promise<void> {
    this.loop ??= this.leaseLoop();
    return this.loop;
  }

  private async leaseLoop(): Promise<void> {
    const models = [...this.o.models.keys()];
    if (models.length === 0) throw new Error("no model bundles to serve");
    // A batch's worth of polls per worker: where a lease takes a while to answer, fewer polls bound the leasing rate
    // (polls / lease round trip) below what the workers could run.
    const maxPolls = Math.max(
      1,
      Math.min(this.capacity, this.o.leasePolls ?? this.o.pool.size * (this.o.batch ?? 1) + 1),
    );
    this.log({
      event: "runner.start",
      models,
      capacity: this.capacity,
      batch: this.o.batch ?? 1,
      depth: this.o.depth ?? 1,
    });
    while (!this.stopping) {
      if (this.storageOutage) {
        // No new lease while the store is down; the jobs in hand go on.
        await this.storageBack();
        continue;
      }
      while (!this.stopping && this.polls.size < maxPolls && this.asked + this.inHand.size < this.capacity)
        this.track(this.polls, this.leaseOne(models));
      const changed = new Promise<void>((resolve) => (this.wake = resolve));
      await changed;
    }
    await Promise.all([...this.polls]);
    await Promise.all([...this.inHand]);
    // Canceled jobs were answered before their batch stopped: the pool may close only once it has.
    await this.batcher.idle();
    this.log({ event: "runner.stop" });
  }

  /** Keeps `p` in `set` until it settles, then wakes the lease loop. */
  private track(set: Set<Promise<void>>, p: Promise<void>): void {
    const tracked = p
      .catch((err: unknown) => this.log({ event: "runner.error", error: String(err) }))
      .finally(() => {
        set.delete(tracked);
        this.wake();
      });
    set.add(tracked);
  }

  /** One lease call; the jobs it brings are in hand (counted against capacity) before the call counts as ended. */
  private async leaseOne(models: string[]): Promise<void> {
    // The room left beside the jobs in hand and what the other polls asked for: the runner never holds more than
    // its capacity (which the edge enforces too).
    const room = Math.max(
      1,
      Math.min(this.o.leaseMax ?? this.o.batch ?? 1, this.capacity - this.inHand.size - this.asked),
    );
    this.asked += room;
    let leased: LeasedJob[];
    try {
      leased = await this.o.edge
        .lease(
          {
            models,
            warm_addons: this.o.addons.warm(),
            capacity: this.capacity,
            wait_ms: this.o.leaseWaitMs ?? 25_000,
            // Sent only when asked for: an edge older than the field refuses unknown fields.
            ...(this.o.acknowledgeInLease ? { acknowledge: true } : {}),
            ...(room > 1 ? { max_jobs: room } : {}),
          },
          this.leaseAbort.signal,
        )
        .finally(() => {
          this.asked -= room;
        });
    } catch (err) {
      if (this.stopping) return;
      this.log({ event: "lease.error", error: String(err) });
      await sleep(1_000, this.leaseAbort.signal).catch(() => {});
      return;
    }
    if (leased.length) this.log({ event: "lease", asked: room, jobs: leased.length });
    for (const job of leased) {
      if (this.stopping) await this.handBack(job);
      else this.track(this.inHand, this.process(job));
    }
  }

  /** A lease that won the race with stop(): handed back unacknowledged, which costs its job no attempt. */
  private async handBack(leased: LeasedJob): Promise<void> {
    await this.o.edge
      .fail(leased.job.id, {
        lease_id: leased.lease_id,
        error: {
          code: "runner_shutdown",
          message: "The runner stopped as the job arrived; handed back untouched.",
        },
        retryable: true,
      })
      .catch((e) => this.log({ event: "fail.error", job: leased.job.id, error: String(e) }));
    this.done.push({ id: leased.job.id, status: "released", ms: 0 });
  }

  /**
   * Waits out the storage backoff, then probes the store: true when it answers (leasing resumes), false after a
   * failed probe (the next wait is twice as long) or on shutdown.
   */
  private async storageBack(): Promise<boolean> {
    const outage = this.storageOutage!;
    try {
      await sleep(Math.max(0, outage.until - Date.now()), this.leaseAbort.signal);
    } catch {
      return false;
    }
    if (await this.o.edge.probeStorage(outage.url, this.leaseAbort.signal)) {
      this.log({ event: "storage.probe", ok: true, failures: outage.failures });
      this.storageOutage = null;
      return true;
    }
    this.storageFailed(outage.url);
    return false;
  }

  /** Storage failed (a job's uploads, or a probe): lease nothing until the next probe, backing off exponentially. */
  private storageFailed(url: string): void {
    const { baseMs, maxMs } = this.o.storageBackoffMs ?? { baseMs: 1_000, maxMs: 30_000 };
    const failures = (this.storageOutage?.failures ?? 0) + 1;
    const wait = Math.min(maxMs, baseMs * 2 ** (failures - 1)) * (0.75 + Math.random() * 0.5);
    this.storageOutage = { until: Date.now() + wait, failures, url };
    this.log({ event: "storage.backoff", failures, wait_ms: Math.round(wait) });
  }

  /**
   * Stops leasing (hanging up the long poll in flight); finishes the job in hand within the grace period, else hands
   * it back to the queue. Resolves once the loop has let go of every job, so the pool can close behind it.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    this.leaseAbort.abort(new Error("runner stopping"));
    const grace = this.o.shutdownGraceMs ?? 30_000;
    const timer = setTimeout(() => this.jobAbort.abort(new Error("shutdown")), grace);
    this.wake();
    await (this.loop ?? Promise.all([...this.inHand]).then(() => this.batcher.idle()));
    clearTimeout(timer);
  }

  /** Fetches (or finds warm) the job's add-ons and turns them into what the inference worker applies. */
  private async prepareAddons(leased: LeasedJob): Promise<RequestAddons> {
    const fetched = new Map<string, FetchedAddon>();
    await Promise.all(
      leased.addons.map(async (a) => {
        if (!a.sha256) throw new AddonIntegrityError(`add-on ${a.ref} has no sha256 to verify against`);
        fetched.set(
          a.ref,
          await this.o.addons.get({ ref: a.ref, url: a.get_url, sha256: a.sha256, sizeBytes: a.size_bytes }),
        );
      }),
    );
    const need = (id: string, version: number) => {
      const f = fetched.get(formatAddonRef(id, version));
      if (!f) throw new Error(`the lease carries no URL for add-on ${formatAddonRef(id, version)}`);
      return f;
    };
    const r = leased.job.request;
    return {
      loras: r.loras.map((l) => ({
        sha256: need(l.id, l.version).sha256,
        bytes: need(l.id, l.version).bytes,
        scale: l.scale,
        allowPartial: l.allow_partial,
      })),
      controlnets: r.controlnets.map((c, i) => {
        const dir = this.unpackControlNet(need(c.id, c.version));
        const manifest = ControlNetManifest.safeParse(JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")));
        if (!manifest.success)
          throw new RunnerError(
            "addon_invalid",
            `ControlNet add-on ${formatAddonRef(c.id, c.version)}: manifest.json: ${describeIssues(manifest.error.issues).join("; ")}`,
          );
        try {
          return {
            dir,
            conditioning: conditioningTensor(decodePng(dataUrlBytes(c.image)), manifest.data.conditioning),
            scale: c.scale,
          };
        } catch (err) {
          throw new ControlImageError(`controlnets[${i}].image: ${(err as Error).message}`, { cause: err });
        }
      }),
    };
  }

  /** A ControlNet add-on is a tar of its bundle; unpacked once per hash, atomically. */
  private unpackControlNet(addon: FetchedAddon): string {
    const dir = join(this.o.controlNetDir, addon.sha256);
    if (existsSync(join(dir, "manifest.json"))) return dir;
    const tmp = `${dir}.${process.pid}.${Date.now()}.tmp`;
    let entries;
    try {
      entries = readTar(addon.bytes);
    } catch (err) {
      throw new RunnerError("addon_invalid", `ControlNet add-on ${addon.ref}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    for (const entry of entries) {
      const path = join(tmp, entry.path);
      mkdirSync(dirname(path), { recursive: true });
      writeFileSync(path, entry.data);
    }
    if (!existsSync(join(tmp, "manifest.json"))) {
      rmSync(tmp, { recursive: true, force: true });
      throw new RunnerError("addon_invalid", `ControlNet add-on ${addon.ref} has no manifest.json`);
    }
    try {
      renameSync(tmp, dir);
    } catch {
      rmSync(tmp, { recursive: true, force: true }); // another job unpacked it first
    }
    return dir;
  }

  /**
   * PUTs each image to its URL, all by the URLs' expiry (after it no try can succeed): the images as `complete`
   * names them. `onFailure` learns the URL of a store that failed, for the probe.
   */
  private async uploadAll<D extends { index: number }>(
    uploads: OutputUpload[],
    declared: D[],
    pngs: Uint8Array[],
    signal: AbortSignal,
    onFailure: (url: string) => void,
  ) {
    const deadline = Math.min(...uploads.map((u) => Date.parse(u.expires_at))) - UPLOAD_DEADLINE_MARGIN_MS;
    return Promise.all(
      declared.map(async (d) => {
        const up = uploads.find((u) => u.index === d.index);
        if (!up) throw new Error(`the edge gave no upload URL for image ${d.index}`);
        try {
          await this.o.edge.upload(up.put_url, pngs[d.index]!, up.headers, signal, deadline);
        } catch (err) {
          if (err instanceof StorageUnavailable) onFailure(up.put_url);
          throw err;
        }
        return { ...d, storage_key: up.storage_key };
      }),
    );
  }

  /**
   * Which jobs may share a U-Net batch: same bundle and `batchKey` fields; jobs with add-ons only with each other,
   * with the same ControlNets, and with the same LoRA set unless the model stacks LoRAs as branches (per sample).
   */
  private batchKeyOf(
    model: ModelEntry,
    leased: LeasedJob,
    request: GenerationRequest,
    loraSet?: string,
  ): BatchEntry["key"] {
    const fields = requestBatchKey(request);
    if (fields === null) return null;
    if (leased.addons.length === 0) return `plain|${fields}`;
    if (leased.job.request.loras.length > 0 && loraSet === undefined) return null;
    const nets = leased.job.request.controlnets.map((c) => formatAddonRef(c.id, c.version)).join(",");
    const loras = model.loraMode === "branch" ? "branch" : (loraSet ?? "");
    return `addons|${fields}|${loras}|${nets}`;
  }

  private async process(leased: LeasedJob): Promise<void> {
    const { job, lease_id: leaseId } = leased;
    const started = performance.now();
    const model = this.o.models.get(job.request.model);
    // Add-ons start loading now, beside the acknowledgement and any batching window (a lost lease wastes a warm cache).
    let addonLoadMs = 0;
    let addonsReady = false;
    const loading =
      leased.addons.length > 0
        ? this.prepareAddons(leased).then((a) => {
            addonLoadMs = performance.now() - started;
            addonsReady = true;
            return a;
          })
        : null;
    loading?.catch(() => {}); // its failure reaches the job where it is awaited
    const cancel = new AbortController();
    const abortOnShutdown = () => cancel.abort(this.jobAbort.signal.reason);
    this.jobAbort.signal.addEventListener("abort", abortOnShutdown);
    let progress: { step: number; total: number } | undefined;
    let canceled = false;
    /** Every storage URL the job failed to write to (the probe's target once it is handed back). */
    let storageUrl: string | undefined;
    const beat = async () => {
      try {
        const hb = await this.o.edge.heartbeat(job.id, {
          lease_id: leaseId,
          warm_addons: this.o.addons.warm(),
          ...(progress ? { progress } : {}),
        });
        if (hb.cancel && !cancel.signal.aborted) {
          canceled = true;
          cancel.abort(new Error("canceled by the tenant"));
        }
      } catch (err) {
        // A lost lease means another runner may have the job now: stop working on it.
        if (err instanceof EdgeError && err.status === 409) {
          canceled = true;
          cancel.abort(err);
        }
        this.log({ event: "heartbeat.error", job: job.id, error: String(err) });
      }
    };
    // The acknowledgement goes out beside the work rather than before it: it costs the job no round trip. The edge
    // counts the attempt when it arrives, as before; if it says the lease is gone (its deadline passed, or the job was
    // canceled), the work stops and its result is thrown away: nothing is stored or reported for a lease not held.
    let timer: ReturnType<typeof setInterval> | undefined;
    let finished = false;
    let lost: unknown;
    const acknowledged: Promise<boolean> = (
      leased.acknowledged
        ? // Acknowledged by the lease itself (`acknowledgeInLease`): no acknowledging round trip at all.
          Promise.resolve(leased.lease_ttl_ms)
        : this.o.edge.heartbeat(job.id, { lease_id: leaseId, warm_addons: this.o.addons.warm() }).then((ack) => {
            if (ack.cancel) throw new EdgeError(409, "job_canceled", "canceled before it started");
            return ack.lease_ttl_ms;
          })
    ).then(
      (ttl) => {
        if (!finished) timer = setInterval(beat, heartbeatInterval(ttl, this.heartbeatMs));
        return true;
      },
      (err) => {
        lost = err;
        cancel.abort(err);
        return false;
      },
    );
    // Progress goes out once the job has run a while: a job done within a few hundred ms costs the edge no extra write
    // (the regular beats still learn of cancel).
    let lastProgressBeat = performance.now();
    this.log({
      event: "job.start",
      job: job.id,
      attempt: job.attempt,
      queued_ms: job.queued_ms,
      sampler: job.request.sampler,
      steps: job.request.steps,
    });
    try {
      if (!model) throw new RunnerError("model_not_served", `this runner does not serve model '${job.request.model}'`);
      let joinedAt: number | null = null;
      let lorasMerged = false;
      let loraLoads: LoraLoadReport[] = [];
      // Add-ons still loading join the generation by a fraction of its steps (a job alone); loaded ones go with it.
      const late = loading !== null && this.o.addonJoinFraction !== undefined && !addonsReady;
      // The LoRA set's key is known from the lease before the files arrive: a worker holding it merged uses it.
      const shaOf = (id: string, version: number) =>
        leased.addons.find((a) => a.ref === formatAddonRef(id, version))?.sha256;
      const loras = job.request.loras.map((l) => ({ sha256: shaOf(l.id, l.version) ?? "", scale: l.scale }));
      const loraSet = loras.length && loras.every((l) => l.sha256) ? loraSetKey(loras) : undefined;
      const request = pipelineRequest(job.request);
      const t0 = performance.now();
      const result = await this.batcher.submit({
        key: this.batchKeyOf(model, leased, request, loraSet),
        bundleDir: model.dir,
        request,
        ...(loading === null ? {} : late ? {} : { addons: await loading }),
        ...(late ? { late: { loading: loading!, joinFraction: this.o.addonJoinFraction! } } : {}),
        ...(loraSet !== undefined ? { loraSet } : {}),
        onAddonsJoined: (step, merged, loads) => {
          joinedAt = step;
          lorasMerged = merged;
          loraLoads = loads;
        },
        signal: cancel.signal,
        onProgress: ({ step, steps }) => {
          progress = { step, total: steps };
          // Progress goes out promptly but at most a few times a second.
          if (performance.now() - lastProgressBeat > 250) {
            lastProgressBeat = performance.now();
            void beat();
          }
        },
      });
      const inferenceMs = performance.now() - t0;
      const t1 = performance.now();
      const declared = result.images.map((png, index) => ({
        index,
        sha256: createHash("sha256").update(png).digest("hex"),
        size_bytes: png.byteLength,
      }));
      let uploadMs = 0;
      const completion = (images: Array<(typeof declared)[number] & { storage_key: string }>) => ({
        lease_id: leaseId,
        images: images.map((i) => ({ ...i, width: result.width, height: result.height, seed: result.seeds[i.index]! })),
        timings: {
          addon_load_ms: round(addonLoadMs),
          inference_ms: round(inferenceMs),
          text_encoder_ms: round(result.timings.textEncoderMs),
          unet_ms: round(result.timings.unetMs),
          vae_ms: round(result.timings.vaeMs),
          png_ms: round(result.timings.pngMs),
          upload_ms: round(uploadMs),
          runner_total_ms: round(performance.now() - started),
        },
        provenance: {
          model: model.name,
          model_manifest_sha256: model.manifestSha256,
          sampler: result.sampler,
          steps: result.steps,
          timesteps: result.timesteps,
          guidance: result.guidance,
          seeds: result.seeds,
          cache: job.request.cache,
          addons: leased.addons.map((a) => ({ ref: a.ref, sha256: a.sha256 })),
          addons_joined_at_step: joinedAt,
          // The LoRAs ran merged into the weights (a hot set) rather than stacked into the branch inputs.
          loras_merged: lorasMerged,
          // Per LoRA of the request, in order: its file's keys used of its total (less only with allow_partial).
          lora_keys: job.request.loras.map((l, i) => ({
            ref: formatAddonRef(l.id, l.version),
            mapped: loraLoads[i]?.mapped ?? null,
            total: loraLoads[i]?.total ?? null,
          })),
        },
      });
      // Nothing is stored for a lease this runner does not hold.
      if (!(await acknowledged)) throw lost;
      // A store that lies (answers 200 without keeping the bytes, or keeps other bytes) shows at complete, which
      // checks what is stored: the images go up again, with fresh URLs, a few times before the job is handed back.
      for (let round = 1; ; round++) {
        // The URLs are signed with each image's size and checksum: the store refuses other bytes.
        const uploads = await this.o.edge.outputs(job.id, { lease_id: leaseId, images: declared });
        const images = await this.uploadAll(
          uploads,
          declared,
          result.images,
          cancel.signal,
          (url) => (storageUrl = url),
        );
        uploadMs = performance.now() - t1;
        try {
          await this.o.edge.complete(job.id, completion(images));
          break;
        } catch (err) {
          if (!(err instanceof EdgeError && STORED_WRONG.has(err.code))) throw err;
          storageUrl = uploads[0]?.put_url;
          if (round === STORE_ROUNDS)
            throw new StorageUnavailable(`the store did not keep the images after ${round} uploads: ${err.message}`, {
              cause: err,
            });
          this.log({ event: "upload.again", job: job.id, round, error: err.message });
        }
      }
      this.done.push({ id: job.id, status: "succeeded", ms: performance.now() - started });
      this.log({
        event: "job.done",
        job: job.id,
        batch_images: result.batchSize,
        ms: round(performance.now() - started),
        inference_ms: round(inferenceMs),
        upload_ms: round(uploadMs),
      });
    } catch (err) {
      // Whatever stopped the work, a lease that was never held is reported as lost, not failed or canceled.
      if (!(await acknowledged)) {
        this.done.push({ id: job.id, status: "lost", ms: performance.now() - started });
        this.log({ event: "lease.lost", job: job.id, error: String(lost) });
      } else if (canceled) {
        this.done.push({ id: job.id, status: "canceled", ms: performance.now() - started });
        this.log({ event: "job.canceled", job: job.id });
      } else if (this.jobAbort.signal.aborted) {
        // Shutting down: hand the job back so another runner finishes it.
        await this.o.edge
          .fail(job.id, {
            lease_id: leaseId,
            error: { code: "runner_shutdown", message: "The runner shut down mid-job; requeued." },
            retryable: FAILURE_CODES.runner_shutdown,
          })
          .catch(() => {});
        this.done.push({ id: job.id, status: "released", ms: performance.now() - started });
        this.log({ event: "job.released", job: job.id });
      } else {
        const { code, retryable } = failureOf(err);
        if (err instanceof StorageUnavailable && storageUrl) this.storageFailed(storageUrl);
        await this.o.edge
          .fail(job.id, {
            lease_id: leaseId,
            error: { code, message: String((err as Error).message).slice(0, 2000) },
            retryable,
          })
          .catch((e) => this.log({ event: "fail.error", job: job.id, error: String(e) }));
        this.done.push({ id: job.id, status: "failed", ms: performance.now() - started });
        this.log({ event: "job.failed", job: job.id, code, error: String((err as Error).message), retryable });
      }
    } finally {
      finished = true;
      clearInterval(timer);
      this.jobAbort.signal.removeEventListener("abort", abortOnShutdown);
    }
  }
}

const round = (ms: number) => Math.round(ms * 10) / 10;
/** The most leases a runner may hold (the runner API's `capacity` bound). */
const MAX_CAPACITY = 64;

/** Complete's refusals that mean the store does not hold what was uploaded (a lying or corrupting store). */
const STORED_WRONG = new Set(["output_missing", "output_checksum_mismatch"]);
/** Uploads of one job's images (fresh URLs each) before a store that keeps losing them counts as down. */
const STORE_ROUNDS = 3;
/** Tries stop this long before the URLs expire: a PUT that starts later would be refused anyway. */
const UPLOAD_DEADLINE_MARGIN_MS = 250;
/** Without an announced TTL (an older edge), beat this often: well inside the default 30 s lease. */
const DEFAULT_HEARTBEAT_MS = 5_000;

/** Three beats per lease TTL (two may be lost before the lease is), at most `maxMs` apart, at least 50 ms. */
export function heartbeatInterval(leaseTtlMs: number | undefined, maxMs = Number.POSITIVE_INFINITY): number {
  const follow = leaseTtlMs ? leaseTtlMs / 3 : DEFAULT_HEARTBEAT_MS;
  return Math.max(50, Math.floor(Math.min(follow, maxMs)));
}
