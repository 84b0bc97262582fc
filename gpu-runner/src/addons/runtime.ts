/**
 * The add-ons of a batch, inside an inference worker: LoRA files parsed once per hash (bounded cache) and stacked
 * per sample into the U-Net's branch inputs; ControlNets loaded once per bundle and run at every step, their
 * scaled residuals summed per sample. Produces the pipeline's `unetInputs` provider.
 */
import * as ort from "onnxruntime-node";
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { ControlNetManifest } from "../pipeline/manifest.ts";
import type { FromControlNet, PlainTensor, ToControlNet } from "../workers/controlnet-worker.ts";
import { Component, sessionOptions, type Bundle, type ComponentName, type SessionConfig } from "../pipeline/bundle.ts";
import { mergeLoras } from "./merge.ts";
import type { StepFeeds, UnetInputProvider } from "../pipeline/pipeline.ts";
import { controlNetResiduals, loadControlNet, type ControlNet, type ControlNetRef, type ControlNetUse } from "./controlnet.ts";
import { LoraError, parseLora, stackLoras, type LoraUse, type ParsedLora } from "./lora.ts";

/** What one request brings; crosses the thread boundary (bytes in SharedArrayBuffers, no copy). */
export interface RequestAddons {
  loras: Array<{ sha256: string; bytes: Uint8Array; scale: number }>;
  /** `conditioning`: one sample's [C, H, W] in the ControlNet's range (see control-image.ts). */
  controlnets: Array<{ dir: string; conditioning: Float32Array; scale: number }>;
}

const PARSED_LORAS_KEPT = 64;
/** Merged U-Nets kept per worker (each holds its own weights): a bounded cache of add-on sets. */
const MERGED_BUNDLES_KEPT = 4;
const SET_USES_KEPT = 256;

/** A ControlNet worker of this inference worker's own: steps' residuals are computed there, in parallel. */
class ControlNetWorker {
  private readonly worker: Worker;
  private nextId = 1;
  private nextKey = 1;
  private readonly waiting = new Map<number, { resolve: (r: Record<string, PlainTensor>) => void; reject: (e: Error) => void }>();

  constructor(session: SessionConfig) {
    this.worker = new Worker(new URL("../workers/controlnet-worker.ts", import.meta.url), { workerData: { session } });
    this.worker.unref();
    this.worker.on("message", (msg: FromControlNet) => {
      const w = this.waiting.get(msg.id);
      this.waiting.delete(msg.id);
      if (msg.type === "residuals") w?.resolve(msg.residuals);
      else w?.reject(Object.assign(new Error(msg.error.message), { name: msg.error.name }));
    });
    this.worker.on("error", (err) => {
      for (const w of this.waiting.values()) w.reject(err);
      this.waiting.clear();
    });
  }

  register(data: Float32Array): string {
    const key = `c${this.nextKey++}`;
    this.worker.postMessage({ type: "conditioning", key, data } satisfies ToControlNet);
    return key;
  }

  forget(keys: string[]): void {
    this.worker.postMessage({ type: "forget", keys } satisfies ToControlNet);
  }

  run(msg: Omit<Extract<ToControlNet, { type: "run" }>, "type" | "id">): Promise<Record<string, PlainTensor>> {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject });
      this.worker.postMessage({ type: "run", id, ...msg } satisfies ToControlNet);
    });
  }
}

const plain = (t: ort.Tensor): PlainTensor => ({ data: (t.data as Float32Array).slice(), dims: [...t.dims] });

export interface AddonRuntimeOptions {
  /** Run ControlNets in a worker of their own, beside the U-Net's head, or in sequence here (default). */
  parallelControlNet?: boolean;
  /** On a branch model, merge an add-on set into the weights on its n-th batch (bundleFor); 0: never. */
  mergeHotAfter?: number;
}

/** What identifies a request's LoRA set: its files' hashes and scales, in any order ("" for none). */
export function loraSetKey(loras: ReadonlyArray<{ sha256: string; scale: number }>): string {
  return loras.map((l) => `${l.sha256}:${l.scale}`).sort().join(",");
}

/** The cache key of a branch model's batch whose requests all bring one non-empty LoRA set; else undefined. */
function hotSetKey(bundle: Bundle, keys: string[]): string | undefined {
  if (bundle.manifest.lora?.mode !== "branch" || keys.length === 0 || keys[0] === "" || keys.some((k) => k !== keys[0])) return undefined;
  return `${bundle.dir}|${keys[0]}`;
}

/** A set seen in 3 batches is likely to come again: merging it costs about one LCM-4 generation (bench/ADDONS.md). */
export const DEFAULT_MERGE_HOT_AFTER = 3;

export class AddonRuntime {
  private readonly loras = new Map<string, ParsedLora>();
  private readonly controlnets = new Map<string, Promise<ControlNet>>();
  private readonly session: SessionConfig;
  private readonly parallel: boolean;
  private cnWorker: ControlNetWorker | undefined;
  private readonly batchKeys: string[] = [];
  private readonly merged = new Map<string, { promise: Promise<Bundle>; ready?: Bundle }>();
  /** Batches per add-on set on a branch model, towards `mergeHotAfter` (bounded, least recent dropped). */
  private readonly setUses = new Map<string, number>();
  private readonly mergeHotAfter: number;
  /** How many merged sessions were built (a warm add-on set builds none): for tests and the bench. */
  mergedBuilds = 0;

  constructor(session: SessionConfig, options: AddonRuntimeOptions = {}) {
    this.session = session;
    this.parallel = options.parallelControlNet ?? false;
    this.mergeHotAfter = options.mergeHotAfter ?? DEFAULT_MERGE_HOT_AFTER;
  }

  /**
   * The bundle a batch runs on: the bundle itself, or a copy whose U-Net sessions have the batch's LoRAs merged into
   * their weights, built once per add-on set and kept in a bounded cache.
   * - A merge-mode model (no branch inputs) always runs merged: the set is merged before the batch starts, and
   *   requests with different LoRAs cannot share a batch.
   * - A branch model runs a set stacked into its branch inputs, and merges it once it is hot: on the set's
   *   `mergeHotAfter`-th batch the merge starts in the background, and the batches that come after it is ready run
   *   merged, with the branches at rank 0. Stacking costs each U-Net call what the branches compute (a LoCon LoRA at
   *   rank 16 adds 18% of this U-Net's multiply-adds); merged weights cost nothing per call (bench/ADDONS.md).
   */
  async bundleFor(bundle: Bundle, addons: RequestAddons[]): Promise<Bundle> {
    const spec = bundle.manifest.lora;
    if (!spec || addons.length === 0) return bundle;
    const keys = addons.map((a) => loraSetKey(a.loras));
    if (spec.mode === "merge") {
      if (keys.some((k) => k !== keys[0])) throw new LoraError(`model ${bundle.manifest.name} merges LoRAs: requests with different LoRAs cannot share a batch`);
      if (keys[0] === "") return bundle;
      return this.mergedSet(bundle, keys[0]!, addons[0]!).promise;
    }
    const hot = this.hotMerged(bundle, keys);
    this.countUse(bundle, addons);
    return hot ?? bundle;
  }

  /** A branch model's merged copy for the batch's one LoRA set (`loraSetKey` per request), if it is ready. */
  hotMerged(bundle: Bundle, keys: string[]): Bundle | undefined {
    const cacheKey = hotSetKey(bundle, keys);
    if (cacheKey === undefined) return undefined;
    const entry = this.merged.get(cacheKey);
    if (!entry?.ready) return undefined;
    this.merged.delete(cacheKey); // most recently used last
    this.merged.set(cacheKey, entry);
    return entry.ready;
  }

  /** Counts a batch's LoRA set on a branch model and starts merging it in the background once it is hot. */
  countUse(bundle: Bundle, addons: RequestAddons[]): void {
    const cacheKey = hotSetKey(bundle, addons.map((a) => loraSetKey(a.loras)));
    if (cacheKey === undefined || this.mergeHotAfter === 0) return;
    // Every target's weight must be named in every component that holds it, or a merge would drop layers.
    if (!bundle.manifest.lora!.targets.every((t) => t.components.every((c) => t.weight?.[c]))) return;
    const uses = (this.setUses.get(cacheKey) ?? 0) + 1;
    this.setUses.delete(cacheKey);
    this.setUses.set(cacheKey, uses);
    while (this.setUses.size > SET_USES_KEPT) this.setUses.delete(this.setUses.keys().next().value!);
    if (uses >= this.mergeHotAfter && !this.merged.has(cacheKey)) this.mergedSet(bundle, loraSetKey(addons[0]!.loras), addons[0]!).promise.catch(() => {});
  }

  /** Resolves when every merge started so far has finished (built or failed): for tests and the bench. */
  async mergesSettled(): Promise<void> {
    await Promise.allSettled([...this.merged.values()].map((e) => e.promise));
  }

  /** The cache entry of an add-on set's merged bundle, building it when absent (evicting the least recent). */
  private mergedSet(bundle: Bundle, key: string, addons: RequestAddons): { promise: Promise<Bundle>; ready?: Bundle } {
    const cacheKey = `${bundle.dir}|${key}`;
    let entry = this.merged.get(cacheKey);
    if (entry) {
      this.merged.delete(cacheKey);
    } else {
      const promise = this.buildMerged(bundle, key, addons);
      const created: { promise: Promise<Bundle>; ready?: Bundle } = { promise };
      promise.then(
        (b) => (created.ready = b),
        () => this.merged.delete(cacheKey),
      );
      entry = created;
    }
    this.merged.set(cacheKey, entry);
    while (this.merged.size > MERGED_BUNDLES_KEPT) {
      const [oldest, evicted] = this.merged.entries().next().value!;
      this.merged.delete(oldest);
      void evicted.promise.then((b) => b.release()).catch(() => {});
    }
    return entry;
  }

  private async buildMerged(bundle: Bundle, key: string, addons: RequestAddons): Promise<Bundle> {
    const spec = bundle.manifest.lora!;
    const uses = addons.loras.map((l): LoraUse => ({ lora: this.lora(bundle, l.sha256, l.bytes), scale: l.scale }));
    const replaced: Partial<Record<ComponentName, Component>> = {};
    for (const [name, component] of Object.entries(bundle.components) as [ComponentName, Component][]) {
      if (!spec.targets.some((t) => t.weight?.[name])) continue;
      const merged = mergeLoras(new Uint8Array(readFileSync(join(bundle.dir, component.spec.path))), name, spec.targets, uses);
      replaced[name] = new Component(name, component.spec, await ort.InferenceSession.create(merged, sessionOptions(this.session)));
      this.mergedBuilds++;
    }
    return {
      ...bundle,
      lorasMerged: key,
      components: { ...bundle.components, ...replaced },
      release: async () => {
        await Promise.all(Object.values(replaced).map((c) => c.session.release()));
      },
    };
  }

  /** Whether a batch with these add-ons should run the U-Net split, so the head overlaps the ControlNets. */
  wantsSplit(addons: RequestAddons[]): boolean {
    return this.parallel && addons.some((a) => a.controlnets.length > 0);
  }

  private lora(bundle: Bundle, sha256: string, bytes: Uint8Array): ParsedLora {
    const key = `${bundle.dir}|${sha256}`;
    let parsed = this.loras.get(key);
    if (parsed) {
      this.loras.delete(key);
    } else {
      const spec = bundle.manifest.lora;
      if (!spec) throw new LoraError(`model ${bundle.manifest.name} takes no LoRAs`);
      parsed = parseLora(bytes, spec.targets, spec.max_rank);
    }
    this.loras.set(key, parsed);
    while (this.loras.size > PARSED_LORAS_KEPT) this.loras.delete(this.loras.keys().next().value!);
    return parsed;
  }

  private controlnet(bundle: Bundle, dir: string): Promise<ControlNet> {
    let net = this.controlnets.get(dir);
    if (!net) {
      net = loadControlNet(dir, bundle.manifest, this.session);
      net.catch(() => this.controlnets.delete(dir));
      this.controlnets.set(dir, net);
    }
    return net;
  }

  /**
   * The provider for a batch of requests (`imagesPer[r]` images each, in order). Undefined when no request
   * brings add-ons, so the pipeline keeps its zero defaults untouched.
   */
  async provider(bundle: Bundle, imagesPer: number[], addons: RequestAddons[]): Promise<UnetInputProvider | undefined> {
    if (bundle.lorasMerged !== undefined && addons.some((a) => loraSetKey(a.loras) !== bundle.lorasMerged)) {
      throw new LoraError("a batch on merged weights got LoRAs other than the ones merged");
    }
    if (addons.every((a) => a.loras.length === 0 && a.controlnets.length === 0)) return undefined;
    const perImage = <T>(pick: (a: RequestAddons) => T): T[] => imagesPer.flatMap((n, r) => Array<T>(n).fill(pick(addons[r]!)));
    const loraUses = perImage((a) => a.loras.map((l): LoraUse => ({ lora: this.lora(bundle, l.sha256, l.bytes), scale: l.scale })));
    // In parallel mode this worker only needs the ControlNets' manifests; their sessions live in the ControlNet worker.
    const nets = new Map<string, ControlNetRef>();
    for (const a of addons) {
      for (const c of a.controlnets) {
        if (nets.has(c.dir)) continue;
        nets.set(c.dir, this.parallel ? manifestOnly(c.dir) : await this.controlnet(bundle, c.dir));
      }
    }
    const cnPerImage = perImage((a) => a.controlnets);
    const images = loraUses.length;

    // The U-Net batch is the images, twice over with classifier-free guidance (unconditional half first);
    // add-ons apply to both halves.
    const built = new Map<number, { loraFeeds: StepFeeds; cn: ControlNetUse<ControlNetRef>[] }>();
    const forBatch = (unetBatch: number) => {
      let b = built.get(unetBatch);
      if (b) return b;
      const repeat = unetBatch / images;
      const sampleOf = (s: number) => s % images;
      const loraFeeds: StepFeeds = {};
      // A merge-mode model, or a hot set's merged copy of a branch model, has the LoRAs in its weights already
      // (bundleFor): its branches stay at rank 0.
      if (loraUses.some((u) => u.length > 0) && bundle.manifest.lora?.mode !== "merge" && bundle.lorasMerged === undefined) {
        const spec = bundle.manifest.lora!;
        const perSample = Array.from({ length: unetBatch }, (_, s) => loraUses[sampleOf(s)]!);
        for (const f of stackLoras(spec.targets, perSample, spec.max_rank)) loraFeeds[f.name] = new ort.Tensor("float32", f.data, f.dims);
      }
      // One ControlNet run per (bundle, k-th use of it in a request): a request may use one ControlNet twice,
      // with two control images.
      const slots = new Map<string, { dir: string; k: number }>();
      for (const uses of cnPerImage) {
        const seen = new Map<string, number>();
        for (const u of uses) {
          const k = seen.get(u.dir) ?? 0;
          seen.set(u.dir, k + 1);
          slots.set(`${u.dir}#${k}`, { dir: u.dir, k });
        }
      }
      const cn: ControlNetUse<ControlNetRef>[] = [...slots.values()].map(({ dir, k }) => {
        const net = nets.get(dir)!;
        const { channels, height, width } = net.manifest.conditioning;
        const per = channels * height * width;
        const conditioning = new Float32Array(unetBatch * per);
        const scales = new Float32Array(unetBatch);
        for (let s = 0; s < unetBatch; s++) {
          const use = cnPerImage[sampleOf(s)]!.filter((c) => c.dir === dir)[k];
          if (!use) continue;
          if (use.conditioning.length !== per) throw new LoraError(`control image for ${net.manifest.name} has ${use.conditioning.length} values, expected ${per}`);
          conditioning.set(use.conditioning, s * per);
          scales[s] = use.scale;
        }
        return { net, conditioning, scales };
      });
      if (!Number.isInteger(repeat)) throw new LoraError(`U-Net batch ${unetBatch} is not a multiple of ${images} images`);
      b = { loraFeeds, cn };
      built.set(unetBatch, b);
      return b;
    };

    if (!this.parallel) {
      return (step) => {
        const { loraFeeds, cn } = forBatch(step.unetBatch);
        // Sequential mode loaded every ControlNet's session in this thread (see `nets` above).
        return cn.length ? { ...loraFeeds, ...controlNetResiduals(cn as ControlNetUse<ControlNet>[], step) } : loraFeeds;
      };
    }
    const worker = (this.cnWorker ??= new ControlNetWorker(this.session));
    const keys = new Map<ControlNetUse<ControlNetRef>, string>();
    return (step) => {
      const { loraFeeds, cn } = forBatch(step.unetBatch);
      if (cn.length === 0) return loraFeeds;
      for (const use of cn) {
        if (keys.has(use)) continue;
        const key = worker.register(use.conditioning);
        keys.set(use, key);
        this.batchKeys.push(key);
      }
      const residuals = worker.run({
        base: bundle.manifest,
        uses: cn.map((use) => ({ dir: use.net.dir, key: keys.get(use)!, scales: use.scales })),
        sample: plain(step.sample),
        timestep: plain(step.timestepTensor),
        encoderHiddenStates: plain(step.encoderHiddenStates),
      });
      const names = [...new Set(cn.flatMap((u) => Object.values(u.net.manifest.residuals)))];
      const feeds: StepFeeds = { ...loraFeeds };
      for (const name of names) {
        const residual = residuals.then((r) => new ort.Tensor("float32", r[name]!.data, r[name]!.dims));
        // A part that does not read this residual on this step (a DeepCache step) must not turn a failure into
        // an unhandled rejection; the parts that do read it still see the error.
        residual.catch(() => {});
        feeds[name] = residual;
      }
      return feeds;
    };
  }

  /** Called when a batch ends: the ControlNet worker forgets the batch's control images. */
  endBatch(): void {
    if (this.cnWorker && this.batchKeys.length) this.cnWorker.forget(this.batchKeys.splice(0));
  }
}

/**
 * Bounded asynchronous loading (SwiftDiffusion/Katz): the generation starts while add-ons are still being fetched
 * and parsed; steps before step ⌊joinFraction · steps⌋ run without them if they are not there yet, and there the
 * generation waits for them. A fraction, not a step number, so that one bound means the same on DDIM-50 and LCM-4.
 * `joinedAt` tells at which step they took effect (0 when they were there in time).
 */
export function lateAddons(
  pending: Promise<UnetInputProvider | undefined>,
  joinFraction: number,
): { provider: UnetInputProvider; joinedAt: () => number | null } {
  let ready: UnetInputProvider | undefined | null = null; // null: not arrived yet
  let joinedAt: number | null = null;
  pending.then((p) => (ready = p), () => {});
  return {
    joinedAt: () => joinedAt,
    provider: async (step) => {
      if (ready === null && step.stepIndex < joinStepOf(joinFraction, step.steps)) return {};
      if (ready === null) ready = await pending;
      if (joinedAt === null) joinedAt = step.stepIndex;
      return ready ? ready(step) : {};
    },
  };
}

/**
 * The runner's default bound: late add-ons must be there by the first step (fraction 0), so loading overlaps the
 * prompt's encoding but no sampling step. Measured (bench/JOIN.md, trained style LoRAs scored by the evaluator on
 * 96 held-out prompts, DDIM-50 + CFG): style detection 0.385 joining at step 0, 0.302 at step 3, 0.250 at step 5,
 * 0.094 at step 20; the style is decided in the first steps, so any later join costs more than the 0.05 allowed.
 * Deployments that prefer latency over style fidelity raise it (`--addon-join-fraction`).
 */
export const DEFAULT_ADDON_JOIN_FRACTION = 0;

/** The step by which late add-ons must have joined: ⌊fraction · steps⌋, and never past the last step. */
export function joinStepOf(fraction: number, steps: number): number {
  return Math.min(Math.floor(fraction * steps), steps - 1);
}

/** A ControlNet known by its manifest only (its session runs in the ControlNet worker). */
function manifestOnly(dir: string): ControlNetRef {
  const path = join(dir, "manifest.json");
  if (!existsSync(path)) throw new LoraError(`ControlNet bundle ${dir} has no manifest.json`);
  return { dir, manifest: ControlNetManifest.parse(JSON.parse(readFileSync(path, "utf8"))) };
}
