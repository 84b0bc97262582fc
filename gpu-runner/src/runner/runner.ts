/**
 * The lease loop: lease a job (long poll, no sleeping between polls), run it in the inference pool while a
 * heartbeat extends the lease, reports progress and learns of cancel, upload the PNGs to the job's presigned
 * URLs, complete with image metadata, timings and provenance. A lease is acknowledged (first heartbeat) before
 * any work: only then does the edge count the attempt. On shutdown it hangs up its long poll, hands back untouched
 * a job that arrives anyway, finishes the job in hand, or, past the grace period, hands it back (a retryable failure
 * puts it back in the queue).
 */
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { performance } from "node:perf_hooks";
import type { InferencePool } from "../workers/pool.ts";
import { ControlImageError, conditioningTensor, dataUrlBytes, decodePng } from "../addons/control-image.ts";
import { loraSetKey, type RequestAddons } from "../addons/request-addons.ts";
import { AddonIntegrityError, type AddonStore, type FetchedAddon } from "../addons/store.ts";
import { describeIssues, FAILURE_CODES, failureOf, RunnerError } from "../errors.ts";
import { readTar } from "@imagegen/formats/tar";
import { ControlNetManifest } from "@imagegen/formats/manifest";

import { formatAddonRef } from "@imagegen/contracts/refs";
import type { GenerationRequest } from "../pipeline/request.ts";
import { EdgeError, type EdgeClient, type LeasedJob } from "./edge-client.ts";

export interface ModelEntry {
  name: string;
  dir: string;
  /** SHA-256 of the bundle's manifest.json (which lists its components' hashes): what produced an image. */
  manifestSha256: string;
}

/** Every diffusion bundle under `modelsDir`, by model name. */
export function discoverModels(modelsDir: string): Map<string, ModelEntry> {
  const models = new Map<string, ModelEntry>();
  if (!existsSync(modelsDir)) return models;
  for (const name of readdirSync(modelsDir)) {
    const path = join(modelsDir, name, "manifest.json");
    if (!existsSync(path)) continue;
    const text = readFileSync(path);
    const manifest = JSON.parse(text.toString("utf8")) as { kind?: string; name?: string };
    if (manifest.kind !== "diffusion" || !manifest.name) continue;
    models.set(manifest.name, { name: manifest.name, dir: join(modelsDir, name), manifestSha256: createHash("sha256").update(text).digest("hex") });
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
  /** How often to heartbeat; well inside the edge's lease TTL. */
  heartbeatMs?: number;
  /** How long shutdown waits for the job in hand before handing it back. */
  shutdownGraceMs?: number;
  leaseWaitMs?: number;
  log?: (event: Record<string, unknown>) => void;
}

/** How a lease names an add-on version (`LeasedJob.addons[].ref`). */

export class Runner {
  private stopping = false;
  private current: Promise<void> | null = null;
  private loop: Promise<void> | null = null;
  private readonly leaseAbort = new AbortController();
  private readonly jobAbort = new AbortController();
  private readonly heartbeatMs: number;
  private readonly log: (event: Record<string, unknown>) => void;
  /** Jobs finished by this runner, for the CLI's summary and the tests. */
  readonly done: Array<{ id: string; status: "succeeded" | "failed" | "canceled" | "released" | "lost"; ms: number }> = [];

  private readonly o: RunnerOptions;

  constructor(options: RunnerOptions) {
    this.o = options;
    this.heartbeatMs = options.heartbeatMs ?? 5_000;
    this.log = options.log ?? ((e) => process.stderr.write(`${JSON.stringify({ t: new Date().toISOString(), ...e })}\n`));
  }

  /** Leases and runs jobs until `stop()`. */
  run(): Promise<void> {
    this.loop ??= this.leaseLoop();
    return this.loop;
  }

  private async leaseLoop(): Promise<void> {
    const models = [...this.o.models.keys()];
    if (models.length === 0) throw new Error("no model bundles to serve");
    this.log({ event: "runner.start", models });
    while (!this.stopping) {
      let leased: LeasedJob | null;
      try {
        leased = await this.o.edge.lease({ models, warm_addons: this.o.addons.warm(), capacity: 1, wait_ms: this.o.leaseWaitMs ?? 25_000 }, this.leaseAbort.signal);
      } catch (err) {
        if (this.stopping) break;
        this.log({ event: "lease.error", error: String(err) });
        await new Promise((r) => setTimeout(r, 1_000));
        continue;
      }
      if (!leased) continue;
      if (this.stopping) {
        // The answer won the race with stop(): hand the job back unacknowledged, which costs it no attempt.
        await this.o.edge
          .fail(leased.job.id, { lease_id: leased.lease_id, error: { code: "runner_shutdown", message: "The runner stopped as the job arrived; handed back untouched." }, retryable: true })
          .catch((e) => this.log({ event: "fail.error", job: leased.job.id, error: String(e) }));
        this.done.push({ id: leased.job.id, status: "released", ms: 0 });
        break;
      }
      this.current = this.process(leased);
      await this.current;
      this.current = null;
    }
    this.log({ event: "runner.stop" });
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
    await (this.loop ?? this.current);
    clearTimeout(timer);
  }

  /** Fetches (or finds warm) the job's add-ons and turns them into what the inference worker applies. */
  private async prepareAddons(leased: LeasedJob): Promise<RequestAddons> {
    const fetched = new Map<string, FetchedAddon>();
    await Promise.all(
      leased.addons.map(async (a) => {
        if (!a.sha256) throw new AddonIntegrityError(`add-on ${a.ref} has no sha256 to verify against`);
        fetched.set(a.ref, await this.o.addons.get({ ref: a.ref, url: a.get_url, sha256: a.sha256, sizeBytes: a.size_bytes }));
      }),
    );
    const need = (id: string, version: number) => {
      const f = fetched.get(formatAddonRef(id, version));
      if (!f) throw new Error(`the lease carries no URL for add-on ${formatAddonRef(id, version)}`);
      return f;
    };
    const r = leased.job.request;
    return {
      loras: r.loras.map((l) => ({ sha256: need(l.id, l.version).sha256, bytes: need(l.id, l.version).bytes, scale: l.scale })),
      controlnets: r.controlnets.map((c, i) => {
        const dir = this.unpackControlNet(need(c.id, c.version));
        const manifest = ControlNetManifest.safeParse(JSON.parse(readFileSync(join(dir, "manifest.json"), "utf8")));
        if (!manifest.success) throw new RunnerError("addon_invalid", `ControlNet add-on ${formatAddonRef(c.id, c.version)}: manifest.json: ${describeIssues(manifest.error.issues).join("; ")}`);
        try {
          return { dir, conditioning: conditioningTensor(decodePng(dataUrlBytes(c.image)), manifest.data.conditioning), scale: c.scale };
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
      throw new RunnerError("addon_invalid", `ControlNet add-on ${addon.ref}: ${(err as Error).message}`, { cause: err });
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

  private async process(leased: LeasedJob): Promise<void> {
    const { job, lease_id: leaseId } = leased;
    const started = performance.now();
    const model = this.o.models.get(job.request.model);
    const cancel = new AbortController();
    const abortOnShutdown = () => cancel.abort(this.jobAbort.signal.reason);
    this.jobAbort.signal.addEventListener("abort", abortOnShutdown);
    let progress: { step: number; total: number } | undefined;
    let canceled = false;
    const beat = async () => {
      try {
        const hb = await this.o.edge.heartbeat(job.id, { lease_id: leaseId, warm_addons: this.o.addons.warm(), ...(progress ? { progress } : {}) });
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
    try {
      // The acknowledgement: the edge counts the attempt now, or says the lease is gone (its deadline passed).
      const ack = await this.o.edge.heartbeat(job.id, { lease_id: leaseId, warm_addons: this.o.addons.warm() });
      if (ack.cancel) throw new EdgeError(409, "job_canceled", "canceled before it started");
    } catch (err) {
      this.jobAbort.signal.removeEventListener("abort", abortOnShutdown);
      this.done.push({ id: job.id, status: "lost", ms: performance.now() - started });
      this.log({ event: "lease.lost", job: job.id, error: String(err) });
      return;
    }
    const timer = setInterval(beat, this.heartbeatMs);
    let lastProgressBeat = 0;
    this.log({ event: "job.start", job: job.id, attempt: job.attempt, queued_ms: job.queued_ms, sampler: job.request.sampler, steps: job.request.steps });
    try {
      if (!model) throw new RunnerError("model_not_served", `this runner does not serve model '${job.request.model}'`);
      const tAddons = performance.now();
      let addonLoadMs = 0;
      let joinedAt: number | null = null;
      let lorasMerged = false;
      const loading = this.prepareAddons(leased).then((a) => {
        addonLoadMs = performance.now() - tAddons;
        return [a];
      });
      const late = this.o.addonJoinFraction !== undefined && leased.addons.length > 0;
      // The LoRA set's key is known from the lease before the files arrive: a worker holding it merged uses it.
      const shaOf = (id: string, version: number) => leased.addons.find((a) => a.ref === formatAddonRef(id, version))?.sha256;
      const loras = job.request.loras.map((l) => ({ sha256: shaOf(l.id, l.version) ?? "", scale: l.scale }));
      const t0 = performance.now();
      const result = await this.o.pool.generate(model.dir, pipelineRequest(job.request), {
        addons: late ? loading : await loading,
        ...(late ? { addonJoinFraction: this.o.addonJoinFraction } : {}),
        ...(loras.length && loras.every((l) => l.sha256) ? { loraSets: [loraSetKey(loras)] } : {}),
        onAddonsJoined: (step, merged) => {
          joinedAt = step;
          lorasMerged = merged;
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
      const declared = result.images.map((png, index) => ({ index, sha256: createHash("sha256").update(png).digest("hex"), size_bytes: png.byteLength }));
      // The URLs are signed with each image's size and checksum: the store refuses other bytes.
      const uploads = await this.o.edge.outputs(job.id, { lease_id: leaseId, images: declared });
      const images = await Promise.all(
        declared.map(async (d) => {
          const up = uploads.find((u) => u.index === d.index);
          if (!up) throw new Error(`the edge gave no upload URL for image ${d.index}`);
          await this.o.edge.upload(up.put_url, result.images[d.index]!, up.headers, cancel.signal);
          return { ...d, storage_key: up.storage_key, width: result.width, height: result.height, seed: result.seeds[d.index]! };
        }),
      );
      const uploadMs = performance.now() - t1;
      await this.o.edge.complete(job.id, {
        lease_id: leaseId,
        images,
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
        },
      });
      this.done.push({ id: job.id, status: "succeeded", ms: performance.now() - started });
      this.log({ event: "job.done", job: job.id, ms: round(performance.now() - started), inference_ms: round(inferenceMs), upload_ms: round(uploadMs) });
    } catch (err) {
      if (canceled) {
        this.done.push({ id: job.id, status: "canceled", ms: performance.now() - started });
        this.log({ event: "job.canceled", job: job.id });
      } else if (this.jobAbort.signal.aborted) {
        // Shutting down: hand the job back so another runner finishes it.
        await this.o.edge.fail(job.id, { lease_id: leaseId, error: { code: "runner_shutdown", message: "The runner shut down mid-job; requeued." }, retryable: FAILURE_CODES.runner_shutdown }).catch(() => {});
        this.done.push({ id: job.id, status: "released", ms: performance.now() - started });
        this.log({ event: "job.released", job: job.id });
      } else {
        const { code, retryable } = failureOf(err);
        await this.o.edge
          .fail(job.id, { lease_id: leaseId, error: { code, message: String((err as Error).message).slice(0, 2000) }, retryable })
          .catch((e) => this.log({ event: "fail.error", job: job.id, error: String(e) }));
        this.done.push({ id: job.id, status: "failed", ms: performance.now() - started });
        this.log({ event: "job.failed", job: job.id, code, error: String((err as Error).message), retryable });
      }
    } finally {
      clearInterval(timer);
      this.jobAbort.signal.removeEventListener("abort", abortOnShutdown);
    }
  }
}

const round = (ms: number) => Math.round(ms * 10) / 10;
