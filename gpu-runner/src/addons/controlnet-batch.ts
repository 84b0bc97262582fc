/**
 * The ControlNets of a batch: loaded once per bundle, each one's control images and scales laid out per sample of
 * the U-Net batch, and their residuals computed per step, here in sequence or in a ControlNet worker of this
 * inference worker's own (in parallel with the U-Net's head).
 */
import * as ort from "onnxruntime-node";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { ControlNetManifest, type ModelManifest } from "@imagegen/formats/manifest";
import { describeIssues, fromWire, RunnerError } from "../errors.ts";
import { BundleError, type SessionConfig } from "../pipeline/bundle.ts";
import type { StepContext, StepFeeds } from "../pipeline/pipeline.ts";
import type { FromControlNet, PlainTensor, ToControlNet } from "../workers/controlnet-worker.ts";
import { ControlImageError } from "./control-image.ts";
import { loadControlNet, type ControlNet, type ControlNetRef, type ControlNetUse } from "./controlnet.ts";
import type { RequestAddons } from "./request-addons.ts";

/** ControlNet sessions loaded in this thread, once per bundle folder (a failed load is retried next time). */
export class ControlNetSessions {
  private readonly nets = new Map<string, Promise<ControlNet>>();
  private readonly session: SessionConfig;

  constructor(session: SessionConfig) {
    this.session = session;
  }

  get(base: ModelManifest, dir: string): Promise<ControlNet> {
    let net = this.nets.get(dir);
    if (!net) {
      net = loadControlNet(dir, base, this.session);
      net.catch(() => this.nets.delete(dir));
      this.nets.set(dir, net);
    }
    return net;
  }
}

/** A ControlNet known by its manifest only (its session runs in the ControlNet worker). */
export function manifestOnly(dir: string): ControlNetRef {
  const path = join(dir, "manifest.json");
  if (!existsSync(path)) throw new RunnerError("bundle_invalid", `ControlNet bundle ${dir} has no manifest.json`);
  const parsed = ControlNetManifest.safeParse(JSON.parse(readFileSync(path, "utf8")));
  if (!parsed.success) throw new BundleError(dir, describeIssues(parsed.error.issues));
  return { dir, manifest: parsed.data };
}

/**
 * Each ControlNet's use across a U-Net batch of `unetBatch` samples (sample s is image s mod n: with classifier-free
 * guidance both halves get the add-ons). One run per (bundle, k-th use of it in a request): a request may use one
 * ControlNet twice, with two control images.
 */
export function batchControlNets<N extends ControlNetRef>(
  nets: ReadonlyMap<string, N>,
  perImage: ReadonlyArray<RequestAddons["controlnets"]>,
  unetBatch: number,
): ControlNetUse<N>[] {
  const images = perImage.length;
  const slots = new Map<string, { dir: string; k: number }>();
  for (const uses of perImage) {
    const seen = new Map<string, number>();
    for (const u of uses) {
      const k = seen.get(u.dir) ?? 0;
      seen.set(u.dir, k + 1);
      slots.set(`${u.dir}#${k}`, { dir: u.dir, k });
    }
  }
  return [...slots.values()].map(({ dir, k }) => {
    const net = nets.get(dir)!;
    const { channels, height, width } = net.manifest.conditioning;
    const per = channels * height * width;
    const conditioning = new Float32Array(unetBatch * per);
    const scales = new Float32Array(unetBatch);
    for (let s = 0; s < unetBatch; s++) {
      const use = perImage[s % images]!.filter((c) => c.dir === dir)[k];
      if (!use) continue;
      if (use.conditioning.length !== per)
        throw new ControlImageError(
          `control image for ${net.manifest.name} has ${use.conditioning.length} values, expected ${per}`,
        );
      conditioning.set(use.conditioning, s * per);
      scales[s] = use.scale;
    }
    return { net, conditioning, scales };
  });
}

const plain = (t: ort.Tensor): PlainTensor => ({ data: (t.data as Float32Array).slice(), dims: [...t.dims] });

/** A ControlNet worker of this inference worker's own: steps' residuals are computed there, in parallel. */
export class ControlNetWorker {
  private readonly worker: Worker;
  private nextId = 1;
  private nextKey = 1;
  private readonly waiting = new Map<
    number,
    { resolve: (r: Record<string, PlainTensor>) => void; reject: (e: Error) => void }
  >();
  /** The current batch's control images, registered in the worker once each. */
  private readonly registered = new Map<ControlNetUse<ControlNetRef>, string>();

  constructor(session: SessionConfig) {
    this.worker = new Worker(new URL("../workers/controlnet-worker.ts", import.meta.url), { workerData: { session } });
    this.worker.unref();
    this.worker.on("message", (msg: FromControlNet) => {
      const w = this.waiting.get(msg.id);
      this.waiting.delete(msg.id);
      if (msg.type === "residuals") w?.resolve(msg.residuals);
      else w?.reject(fromWire(msg.error));
    });
    this.worker.on("error", (err) => {
      for (const w of this.waiting.values()) w.reject(err);
      this.waiting.clear();
    });
  }

  /**
   * One step's residuals as U-Net feeds, promised: the worker computes them while the U-Net's head (which reads
   * none) runs here. Control images go over once per batch; each step sends only the sample.
   */
  residuals(base: ModelManifest, uses: ControlNetUse<ControlNetRef>[], step: StepContext): StepFeeds {
    for (const use of uses) {
      if (this.registered.has(use)) continue;
      const key = `c${this.nextKey++}`;
      this.worker.postMessage({ type: "conditioning", key, data: use.conditioning } satisfies ToControlNet);
      this.registered.set(use, key);
    }
    const residuals = this.run({
      base,
      uses: uses.map((use) => ({ dir: use.net.dir, key: this.registered.get(use)!, scales: use.scales })),
      sample: plain(step.sample),
      timestep: plain(step.timestepTensor),
      encoderHiddenStates: plain(step.encoderHiddenStates),
    });
    const feeds: StepFeeds = {};
    for (const name of new Set(uses.flatMap((u) => Object.values(u.net.manifest.residuals)))) {
      const residual = residuals.then((r) => new ort.Tensor("float32", r[name]!.data, r[name]!.dims));
      // A part that does not read this residual on this step (a DeepCache step) must not turn a failure into
      // an unhandled rejection; the parts that do read it still see the error.
      residual.catch(() => {});
      feeds[name] = residual;
    }
    return feeds;
  }

  /** Called when a batch ends: the worker forgets the batch's control images. */
  endBatch(): void {
    if (this.registered.size === 0) return;
    this.worker.postMessage({ type: "forget", keys: [...this.registered.values()] } satisfies ToControlNet);
    this.registered.clear();
  }

  private run(msg: Omit<Extract<ToControlNet, { type: "run" }>, "type" | "id">): Promise<Record<string, PlainTensor>> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ type: "run", id, ...msg } satisfies ToControlNet);
    });
  }
}
