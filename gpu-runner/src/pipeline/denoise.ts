/**
 * The denoising loop: per step the U-Net (one graph, or DeepCache's parts with the deep features of the last full
 * step), classifier-free guidance, and the sampler's update. Add-ons plug in through the step's U-Net inputs:
 * stacked LoRA branches and ControlNet residuals (`UnetInputProvider`), zeros where no request brings any.
 */
import type * as ort from "onnxruntime-node";
import type { TensorSpec } from "@imagegen/formats/manifest";
import { deepCacheSchedule } from "../cache/deepcache.ts";
import { guidanceScaleEmbedding } from "../samplers/lcm.ts";
import type { NoiseSource, Sampler } from "../samplers/types.ts";
import { UNET_IO, type Bundle, type Component, type ComponentName, type Feeds } from "./bundle.ts";
import type { LatentShape } from "./latents.ts";
import type { StageClock } from "./pipeline.ts";
import type { CachePolicy } from "./request.ts";
import { floatTensor, GenerationError, tensorOf, tile } from "./tensors.ts";

export interface StepContext {
  stepIndex: number;
  /** The generation's number of steps. */
  steps: number;
  timestep: number;
  /** The U-Net's batch: n, or 2n with classifier-free guidance (unconditional half first). */
  unetBatch: number;
  /** The U-Net's sample input for this step, [unetBatch, C, h, w]. */
  sample: ort.Tensor;
  /** The U-Net's text conditioning, [unetBatch, tokens, D] (a ControlNet reads it too). */
  encoderHiddenStates: ort.Tensor;
  /** The U-Net's timestep input for this step. */
  timestepTensor: ort.Tensor;
}

/** U-Net inputs for one step; a promised tensor is awaited only when the U-Net part that reads it runs. */
export type StepFeeds = Record<string, ort.Tensor | Promise<ort.Tensor>>;

/**
 * Supplies U-Net inputs per step, overriding the defaults (zeros for ControlNet residuals, rank-0 LoRA
 * branches). This is where add-on serving plugs in: stacked LoRA branches (constant over the steps, or joining
 * at a bounded step) and ControlNet residuals computed from the step's sample and timestep. Returning residuals
 * as promises lets a ControlNet in another worker run while the U-Net's head runs (the head reads none of them).
 */
export type UnetInputProvider = (step: StepContext) => StepFeeds | Promise<StepFeeds>;

/**
 * The U-Net as two sessions split where the ControlNet residuals first enter (onnx/partition.ts): `early` reads
 * none of them and hands its tensors to `late`.
 */
export interface OverlapParts {
  early: Component;
  late: Component;
}

/** What the loop needs to know of the batch; the sampler has its timesteps set. */
export interface DenoiseSpec {
  sampler: Sampler;
  steps: number;
  guidance: number;
  classifierFreeGuidance: boolean;
  latentShape: LatentShape;
  /** [unetBatch, tokens, D] from `encodePrompt`. */
  encoderHiddenStates: ort.Tensor;
  /** Further U-Net inputs from `encodePrompt` (SDXL's `text_embeds` and `time_ids`), constant over the steps. */
  textInputs?: Feeds;
  cache: CachePolicy | null;
}

export interface DenoiseOptions {
  unetInputs?: UnetInputProvider | undefined;
  signal?: AbortSignal | undefined;
  /** Every step through the split parts (see GenerateOptions.splitUnet). */
  splitUnet?: boolean | undefined;
  /** The U-Net split where the ControlNet residuals enter (see GenerateOptions.overlap). */
  overlap?: OverlapParts | undefined;
  onProgress?: ((progress: { step: number; steps: number }) => void) | undefined;
}

/** The timestep input as the graph declares it: a scalar, a fixed [1], or one per batch entry. */
function timestepTensor(spec: TensorSpec, t: number, batch: number): ort.Tensor {
  if (spec.shape.length === 0) return tensorOf(spec.dtype, [t], []);
  const len = spec.shape[0] === 1 ? 1 : batch;
  return tensorOf(spec.dtype, new Array<number>(len).fill(t), [len]);
}

/** Resolves the inputs one component reads; the others stay pending. */
async function awaitInputs(component: Component, feeds: StepFeeds): Promise<Feeds> {
  const out: Feeds = {};
  for (const spec of component.spec.inputs) {
    const value = feeds[spec.name];
    if (value !== undefined) out[spec.name] = await value;
  }
  return out;
}

/**
 * The U-Net as one graph, or as DeepCache's three parts wired by tensor name. When the whole graph also outputs
 * everything the deep part outputs, full steps run it in one session instead of head → deep → tail: one run
 * instead of three, with no shared work recomputed per part.
 */
type UnetParts =
  | { kind: "whole"; whole: Component }
  | { kind: "overlap"; early: Component; late: Component }
  | { kind: "cached"; head: Component; deep: Component; tail: Component; fullPass: Component | null };

function unetParts(bundle: Bundle, cached: boolean): UnetParts {
  const c = bundle.components;
  if (!cached) return { kind: "whole", whole: c.unet };
  const spec = bundle.manifest.cache;
  if (spec === undefined) {
    throw new GenerationError(
      `model ${bundle.manifest.name} is not split for block caching (no "cache" in its manifest)`,
    );
  }
  const head = c[spec.head as ComponentName];
  const deep = c[spec.deep as ComponentName];
  const tail = c[spec.tail as ComponentName];
  if (!head || !deep || !tail) throw new GenerationError(`model ${bundle.manifest.name}: cache parts are missing`);
  const wholeOutputs = new Set(c.unet.spec.outputs.map((t) => t.name));
  const fullPass = deep.spec.outputs.every((t) => wholeOutputs.has(t.name)) ? c.unet : null;
  return { kind: "cached", head, deep, tail, fullPass };
}

/** Inputs the U-Net (or its parts) take from outside, i.e. not produced by another part. */
function externalInputs(parts: UnetParts): TensorSpec[] {
  const list =
    parts.kind === "whole"
      ? [parts.whole]
      : parts.kind === "overlap"
        ? [parts.early, parts.late]
        : [parts.head, parts.deep, parts.tail, ...(parts.fullPass ? [parts.fullPass] : [])];
  const produced = new Set(list.flatMap((c) => c.spec.outputs.map((t) => t.name)));
  const seen = new Map<string, TensorSpec>();
  for (const c of list)
    for (const t of c.spec.inputs) if (!produced.has(t.name) && !seen.has(t.name)) seen.set(t.name, t);
  return [...seen.values()];
}

/** The noise (or velocity) prediction: a component's first declared output. */
const predictionOf = (component: Component, outputs: Feeds): ort.Tensor => outputs[component.spec.outputs[0]!.name]!;

const BATCH_AXIS = "batch";

/**
 * Zeros for the add-on inputs no request filled: rank-0 LoRA branches (the dynamic rank axis at 0), and
 * ControlNet residuals (zero residuals leave the U-Net unchanged).
 */
function addonDefaults(bundle: Bundle, inputs: readonly TensorSpec[], unetBatch: number, fed: Feeds): Feeds {
  const m = bundle.manifest;
  const loraInputs = new Set(
    (m.lora?.targets ?? []).flatMap((t) => [t.down_input, t.up_input]).filter((n) => n !== undefined),
  );
  const residuals = new Set(m.controlnet?.residuals ?? []);
  const core = new Set<string>([
    ...Object.values(UNET_IO),
    ...(m.guidance.embedding ? [m.guidance.embedding.input] : []),
    ...Object.keys(fed),
  ]);
  const feeds: Feeds = {};
  for (const spec of inputs) {
    if (core.has(spec.name)) continue;
    const isLora = loraInputs.has(spec.name);
    if (!isLora && !residuals.has(spec.name)) {
      throw new GenerationError(
        `model ${m.name}: U-Net input "${spec.name}" is neither core, LoRA nor ControlNet; the pipeline cannot feed it`,
      );
    }
    const dims = spec.shape.map((d) => {
      if (typeof d === "number") return d;
      if (d === BATCH_AXIS) return unetBatch;
      if (isLora) return 0; // the rank axis: no LoRA is a rank-0 branch
      throw new GenerationError(
        `model ${m.name}: U-Net input "${spec.name}" has a symbolic axis "${d}" the pipeline cannot size`,
      );
    });
    feeds[spec.name] = floatTensor(new Float32Array(dims.reduce((a, b) => a * b, 1)), dims);
  }
  return feeds;
}

/**
 * Runs the sampler's steps from `latents` and returns the final latents, with, per step, whether the deep part
 * ran (null without block caching). The U-Net's time goes to `clock.unetMs`.
 */
export async function denoise(
  bundle: Bundle,
  spec: DenoiseSpec,
  initial: Float32Array,
  noise: NoiseSource,
  options: DenoiseOptions,
  clock: StageClock,
): Promise<{ latents: Float32Array; fullSteps: boolean[] | null }> {
  const { sampler, steps, guidance, latentShape, cache } = spec;
  const cfg = spec.classifierFreeGuidance;
  const m = bundle.manifest;
  const n = latentShape[0];
  const perImage = latentShape[1] * latentShape[2] * latentShape[3];
  const unetBatch = cfg ? 2 * n : n;

  const split = options.splitUnet === true && m.cache !== undefined;
  const parts: UnetParts =
    options.overlap && cache === null
      ? { kind: "overlap", ...options.overlap }
      : unetParts(bundle, cache !== null || split);
  const fullSteps = cache ? deepCacheSchedule(steps, { interval: cache.interval, mode: cache.schedule }) : null;
  // Split only for overlap: every step is a full pass through head, deep and tail (never the one-graph shortcut).
  if (split && parts.kind === "cached") parts.fullPass = null;
  const runsDeep = (i: number) => (fullSteps ? fullSteps[i]! : true);
  const textInputs = spec.textInputs ?? {};
  const defaults = addonDefaults(bundle, externalInputs(parts), unetBatch, textInputs);
  const timestepSpec = (
    parts.kind === "whole" ? parts.whole : parts.kind === "overlap" ? bundle.components.unet : parts.head
  ).input(UNET_IO.timestep)!;
  const constant: Feeds = { ...defaults, ...textInputs, [UNET_IO.encoderHiddenStates]: spec.encoderHiddenStates };
  if (m.guidance.embedding) {
    const { input, dim, w_scale, freq_shift } = m.guidance.embedding;
    constant[input] = floatTensor(tile(guidanceScaleEmbedding(guidance, dim, w_scale, freq_shift), unetBatch), [
      unetBatch,
      dim,
    ]);
  }

  let latents = initial;
  let deepOutputs: Feeds | null = null;
  for (let i = 0; i < steps; i++) {
    if (options.signal?.aborted) throw options.signal.reason ?? new Error("aborted");
    const t = sampler.timesteps[i]!;
    const sampleDims = [unetBatch, ...latentShape.slice(1)];
    // diffusers' scale_model_input: σ-parameterised samplers (Euler) feed x / √(σ² + 1); the others x itself.
    const input = sampler.scaleModelInput(latents, i);
    const sample = floatTensor(cfg ? tile(input, 2) : input, sampleDims);
    const timestepInput = timestepTensor(timestepSpec, t, unetBatch);
    const feeds: StepFeeds = {
      ...constant,
      [UNET_IO.sample]: sample,
      [UNET_IO.timestep]: timestepInput,
      ...(await options.unetInputs?.({
        stepIndex: i,
        steps,
        timestep: t,
        unetBatch,
        sample,
        encoderHiddenStates: constant[UNET_IO.encoderHiddenStates]!,
        timestepTensor: timestepInput,
      })),
    };
    const prediction = await clock.time("unetMs", async () => {
      if (parts.kind === "whole")
        return predictionOf(parts.whole, await parts.whole.run(await awaitInputs(parts.whole, feeds)));
      if (parts.kind === "overlap") {
        // The early part reads no residual: it runs while they are computed elsewhere.
        const handed = await parts.early.run(await awaitInputs(parts.early, feeds));
        return predictionOf(parts.late, await parts.late.run(await awaitInputs(parts.late, { ...feeds, ...handed })));
      }
      const full = runsDeep(i) || deepOutputs === null;
      if (full && parts.fullPass) {
        const out = await parts.fullPass.run(await awaitInputs(parts.fullPass, feeds));
        deepOutputs = Object.fromEntries(parts.deep.spec.outputs.map((t) => [t.name, out[t.name]!]));
        return predictionOf(parts.fullPass, out);
      }
      const env: StepFeeds = { ...feeds, ...(await parts.head.run(await awaitInputs(parts.head, feeds))) };
      if (full) deepOutputs = await parts.deep.run(await awaitInputs(parts.deep, env));
      return predictionOf(parts.tail, await parts.tail.run(await awaitInputs(parts.tail, { ...env, ...deepOutputs })));
    });
    let modelOutput = prediction.data as Float32Array;
    if (cfg) {
      const guided = new Float32Array(n * perImage);
      const half = n * perImage;
      for (let j = 0; j < half; j++) {
        const u = modelOutput[j]!;
        guided[j] = u + guidance * (modelOutput[half + j]! - u);
      }
      modelOutput = guided;
    }
    latents = sampler.step(modelOutput, i, latents, noise).prevSample;
    options.onProgress?.({ step: i + 1, steps });
  }
  return { latents, fullSteps };
}
