/**
 * The add-ons of a batch, inside an inference worker. It composes: parsed LoRAs (lora-cache.ts) stacked per sample
 * into the U-Net's branch inputs, or merged into the weights when the set is hot or the model merges (hot-merge.ts),
 * and ControlNets whose scaled residuals are summed per sample (controlnet-batch.ts). Produces the pipeline's
 * `unetInputs` provider; late-join.ts lets it join a generation already under way.
 */
import { statSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import type { Bundle, SessionConfig } from "../pipeline/bundle.ts";
import type { OverlapParts, StepFeeds, UnetInputProvider } from "../pipeline/pipeline.ts";
import type { TextEncoderInputs, TextEncoderName } from "../pipeline/text.ts";
import { batchControlNets, ControlNetSessions, ControlNetWorker, manifestOnly } from "./controlnet-batch.ts";
import { ControlNetModeChooser, type ControlNetMode, controlNetKind } from "./controlnet-mode.ts";
import { ControlNetOverlap } from "./controlnet-overlap.ts";
import { controlNetResiduals, type ControlNet, type ControlNetRef, type ControlNetUse } from "./controlnet.ts";
import { LoraFold } from "./fold.ts";
import { DEFAULT_MERGE_HOT_AFTER, HotMerge } from "./hot-merge.ts";
import { LoraCache } from "./lora-cache.ts";
import { LoraError, stackLoras, type LoraUse } from "./lora.ts";
import { loraSetKey, type LoraLoadReport, type RequestAddons } from "./request-addons.ts";

/** Models whose U-Net file is at most this big build their add-on sessions (fold, overlap) when a worker loads them. */
const EAGER_PREPARE_BYTES = 256 * 1024 * 1024;

/** An imported model's text encoders take LoRA branches too; the U-Net's stacking skips their targets. */
const isTextEncoder = (component: string) => component === "text_encoder" || component === "text_encoder_2";
const branchesLive = (bundle: Bundle) => bundle.manifest.lora?.mode === "branch" && bundle.lorasMerged === undefined;

export interface AddonRuntimeOptions {
  /**
   * Run ControlNets in a worker of their own, beside the U-Net's head (true), in sequence here (false, the default),
   * or whichever measures faster per model and ControlNet set ("auto", controlnet-mode.ts: what workers run).
   */
  parallelControlNet?: boolean | "auto";
  /** On a branch model, merge an add-on set into the weights on its n-th batch (bundleFor); 0: never. */
  mergeHotAfter?: number;
  /**
   * Run a batch whose requests share one LoRA set on its merged weights, fed as inputs of a shared session (fold.ts),
   * instead of per-sample branches: on by default; off keeps the branches (tests compare the two).
   */
  foldLoras?: boolean;
}

export class AddonRuntime {
  private readonly session: SessionConfig;
  private readonly parallel: boolean | "auto";
  private readonly modes = new ControlNetModeChooser({ cores: availableParallelism() });
  private readonly loras = new LoraCache();
  private readonly hot: HotMerge;
  private readonly fold: LoraFold | undefined;
  private readonly overlap: ControlNetOverlap | undefined;
  private readonly controlnets: ControlNetSessions;
  private cnWorker: ControlNetWorker | undefined;

  constructor(session: SessionConfig, options: AddonRuntimeOptions = {}) {
    this.session = session;
    this.parallel = options.parallelControlNet ?? false;
    this.hot = new HotMerge(session, this.loras, options.mergeHotAfter ?? DEFAULT_MERGE_HOT_AFTER);
    this.fold = options.foldLoras === false ? undefined : new LoraFold(session, this.loras);
    this.overlap = this.parallel === false ? undefined : new ControlNetOverlap(session);
    this.controlnets = new ControlNetSessions(session);
  }

  /** How many merged sessions were built (a warm add-on set builds none): for tests and the bench. */
  get mergedBuilds(): number {
    return this.hot.builds;
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
    const hot = await this.hot.bundleFor(bundle, addons);
    if (hot !== bundle || !this.fold) return hot;
    // Not merged (yet): one set for the whole batch folds into the weights, mixed sets stay on the branches.
    return (await this.fold.bundleFor(bundle, addons)) ?? bundle;
  }

  /**
   * Starts, in the background, the sessions a bundle's add-ons will use: the shared weights-as-inputs sessions of
   * fold.ts and the U-Net cut of controlnet-overlap.ts (a batch that needs one before it is built waits for it).
   * Called when a worker loads a bundle.
   */
  prepare(bundle: Bundle): void {
    // Each costs about one more copy of the U-Net's weights: a big model builds them on the first batch that needs them.
    let size = Number.POSITIVE_INFINITY;
    try {
      size = statSync(join(bundle.dir, bundle.components.unet.spec.path)).size;
    } catch {}
    if (size > EAGER_PREPARE_BYTES) return;
    this.fold?.prepare(bundle);
    this.overlap?.prepare(bundle);
  }

  /** Resolves when the background preparations started so far are done: for tests and the bench. */
  async prepared(): Promise<void> {
    await this.fold?.settled();
  }

  /**
   * For a batch whose ControlNets run in parallel: the U-Net split where their residuals enter (controlnet-overlap.ts),
   * or undefined where the bundle has none (merged or folded weights: those batches run the DeepCache parts).
   */
  overlapParts(bundle: Bundle): Promise<OverlapParts | undefined> {
    return this.overlap?.parts(bundle) ?? Promise.resolve(undefined);
  }

  /** Merged weight sets the fold computed (per component), and why a bundle does not fold: for tests and the bench. */
  get foldStats(): { folds: number; unsupported: ReadonlyMap<string, string> } {
    return { folds: this.fold?.folds ?? 0, unsupported: this.fold?.unsupported ?? new Map() };
  }

  /** A branch model's merged copy for the batch's one LoRA set (`loraSetKey` per request), if it is ready. */
  hotMerged(bundle: Bundle, keys: string[]): Bundle | undefined {
    return this.hot.hotMerged(bundle, keys);
  }

  /** Counts a batch's LoRA set on a branch model and starts merging it in the background once it is hot. */
  countUse(bundle: Bundle, addons: RequestAddons[]): void {
    this.hot.countUse(bundle, addons);
  }

  /** Resolves when every merge started so far has finished (built or failed): for tests and the bench. */
  mergesSettled(): Promise<void> {
    return this.hot.settled();
  }

  /** Per request, each LoRA's keys mapped / total on `bundle` (the files are parsed already: cache hits). */
  loraReports(bundle: Bundle, addons: RequestAddons[]): LoraLoadReport[][] {
    return this.loras.reports(bundle, addons);
  }

  /** Whether the text encoders take LoRA branches: the text is encoded before any step, so late add-ons must be waited for. */
  textEncoderLoras(bundle: Bundle): boolean {
    return (
      bundle.manifest.lora?.mode === "branch" &&
      bundle.manifest.lora.targets.some((t) => t.components.some(isTextEncoder))
    );
  }

  /**
   * The text encoders' LoRA branches for a batch (`imagesPer[r]` images per request; prompt row i is image
   * i mod images). Undefined when they have none to take, or the LoRAs are merged into their weights.
   */
  textInputs(bundle: Bundle, imagesPer: number[], addons: RequestAddons[]): TextEncoderInputs | undefined {
    if (!this.textEncoderLoras(bundle) || !branchesLive(bundle) || addons.every((a) => a.loras.length === 0))
      return undefined;
    const spec = bundle.manifest.lora!;
    const perImage = imagesPer.flatMap((n, r) => Array<number>(n).fill(r));
    const requestOf = (row: number) => addons[perImage[row % perImage.length]!]!;
    const uses = new Map<string, LoraUse[]>();
    const built = new Map<string, Record<string, ort.Tensor>>();
    return {
      key: (row) => loraSetKey(requestOf(row).loras),
      feeds: (row, encoder: TextEncoderName) => {
        const set = requestOf(row);
        const key = `${encoder}|${loraSetKey(set.loras)}`;
        let feeds = built.get(key);
        if (feeds === undefined) {
          const setKey = loraSetKey(set.loras);
          if (!uses.has(setKey)) uses.set(setKey, this.loras.uses(bundle, set.loras));
          const targets = spec.targets.filter((t) => t.components.includes(encoder));
          feeds = Object.fromEntries(
            stackLoras(targets, [uses.get(setKey)!], spec.max_rank).map((f) => [
              f.name,
              new ort.Tensor("float32", f.data, f.dims),
            ]),
          );
          built.set(key, feeds);
        }
        return feeds;
      },
    };
  }

  /** Whether a batch with these add-ons should run the U-Net split, so the head overlaps the ControlNets. */
  wantsSplit(addons: RequestAddons[]): boolean {
    return this.parallel === true && addons.some((a) => a.controlnets.length > 0);
  }

  /**
   * How a batch's ControlNets run (undefined: it has none): as the options fix it, or, with "auto", as measured
   * (controlnet-mode.ts). A model without split U-Net parts has nothing to overlap: sequence. The batch runs its
   * U-Net split when the mode is "parallel"; report its step time with `recordControlNet`.
   */
  controlNetMode(bundle: Bundle, addons: RequestAddons[]): ControlNetMode | undefined {
    if (!addons.some((a) => a.controlnets.length > 0)) return undefined;
    if (this.parallel !== "auto") return this.parallel ? "parallel" : "sequence";
    // Nothing to overlap without a split: neither the residual cut (the model's own weights) nor DeepCache parts.
    if (!ControlNetOverlap.eligible(bundle) && bundle.manifest.cache === undefined) return "sequence";
    return this.modes.choose(controlNetKind(bundle.dir, addons));
  }

  /** A ControlNet batch ran in `mode` at `msPerStep` (U-Net and ControlNets): feeds the "auto" choice. */
  recordControlNet(bundle: Bundle, addons: RequestAddons[], mode: ControlNetMode, msPerStep: number): void {
    if (this.parallel === "auto") this.modes.record(controlNetKind(bundle.dir, addons), mode, msPerStep);
  }

  /** Median step time per mode so far for this kind of batch (for logs and the bench). */
  controlNetTimes(bundle: Bundle, addons: RequestAddons[]): Partial<Record<ControlNetMode, number>> {
    return this.modes.summary(controlNetKind(bundle.dir, addons));
  }

  /**
   * The provider for a batch of requests (`imagesPer[r]` images each, in order). Undefined when no request
   * brings add-ons, so the pipeline keeps its zero defaults untouched.
   */
  async provider(
    bundle: Bundle,
    imagesPer: number[],
    addons: RequestAddons[],
    mode: ControlNetMode = this.parallel === true ? "parallel" : "sequence",
  ): Promise<UnetInputProvider | undefined> {
    const parallel = mode === "parallel";
    if (bundle.lorasMerged !== undefined && addons.some((a) => loraSetKey(a.loras) !== bundle.lorasMerged)) {
      throw new LoraError("a batch on merged weights got LoRAs other than the ones merged");
    }
    if (addons.every((a) => a.loras.length === 0 && a.controlnets.length === 0)) return undefined;
    const perImage = <T>(pick: (a: RequestAddons) => T): T[] =>
      imagesPer.flatMap((n, r) => Array<T>(n).fill(pick(addons[r]!)));
    const loraUses = perImage((a) => this.loras.uses(bundle, a.loras));
    // In parallel mode this worker only needs the ControlNets' manifests; their sessions live in the ControlNet worker.
    const nets = new Map<string, ControlNetRef>();
    for (const a of addons) {
      for (const c of a.controlnets) {
        if (nets.has(c.dir)) continue;
        nets.set(c.dir, parallel ? manifestOnly(c.dir) : await this.controlnets.get(bundle.manifest, c.dir));
      }
    }
    const cnPerImage = perImage((a) => a.controlnets);
    const images = loraUses.length;

    // The U-Net batch is the images, twice over with classifier-free guidance (unconditional half first);
    // add-ons apply to both halves. Built once per U-Net batch size, then the same every step.
    const built = new Map<number, { loraFeeds: StepFeeds; cn: ControlNetUse<ControlNetRef>[] }>();
    const forBatch = (unetBatch: number) => {
      let b = built.get(unetBatch);
      if (b) return b;
      const loraFeeds: StepFeeds = {};
      // A merge-mode model, or a hot set's merged copy of a branch model, has the LoRAs in its weights already
      // (bundleFor): its branches stay at rank 0.
      if (loraUses.some((u) => u.length > 0) && branchesLive(bundle)) {
        const spec = bundle.manifest.lora!;
        const perSample = Array.from({ length: unetBatch }, (_, s) => loraUses[s % images]!);
        const unetTargets = spec.targets.filter((t) => !t.components.some(isTextEncoder));
        for (const f of stackLoras(unetTargets, perSample, spec.max_rank))
          loraFeeds[f.name] = new ort.Tensor("float32", f.data, f.dims);
      }
      const cn = batchControlNets(nets, cnPerImage, unetBatch);
      if (!Number.isInteger(unetBatch / images))
        throw new LoraError(`U-Net batch ${unetBatch} is not a multiple of ${images} images`);
      b = { loraFeeds, cn };
      built.set(unetBatch, b);
      return b;
    };

    if (!parallel) {
      return (step) => {
        const { loraFeeds, cn } = forBatch(step.unetBatch);
        // Sequential mode loaded every ControlNet's session in this thread (see `nets` above).
        return cn.length
          ? { ...loraFeeds, ...controlNetResiduals(cn as ControlNetUse<ControlNet>[], step) }
          : loraFeeds;
      };
    }
    const worker = (this.cnWorker ??= new ControlNetWorker(this.session));
    return (step) => {
      const { loraFeeds, cn } = forBatch(step.unetBatch);
      return cn.length ? { ...loraFeeds, ...worker.residuals(bundle.manifest, cn, step) } : loraFeeds;
    };
  }

  /** Called when a batch ends: the ControlNet worker forgets the batch's control images. */
  endBatch(): void {
    this.cnWorker?.endBatch();
  }
}
