/**
 * The text-to-image pipeline: tokenize and encode the prompt (and the negative prompt when the sampler uses
 * classifier-free guidance), sample with the chosen sampler and cache policy, decode with the VAE, encode PNG.
 * It only composes: the sampler, the DeepCache schedule and the bundle's sessions each live in their own module.
 *
 * Determinism: image i of a request starts from its own generator seeded with `seed + i`, so an image does not
 * depend on the batch it was generated in, and the same request gives the same bytes on the same machine.
 */
import { performance } from "node:perf_hooks";
import * as ort from "onnxruntime-node";
import { deepCacheSchedule } from "../cache/deepcache.ts";
import { createSampler } from "../samplers/index.ts";
import { guidanceScaleEmbedding } from "../samplers/lcm.ts";
import type { NoiseSource, Sampler } from "../samplers/types.ts";
import { UNET_IO, type Bundle, type Component, type ComponentName, type Feeds } from "./bundle.ts";
import type { SamplerName, TensorSpec } from "./manifest.ts";
import { encodePng, vaeOutputToRgb } from "./png.ts";
import { GenerationRequest, type ResolvedRequest } from "./request.ts";
import { Rng } from "./rng.ts";

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

export interface GenerateOptions {
  onProgress?: (progress: { step: number; steps: number }) => void;
  unetInputs?: UnetInputProvider;
  signal?: AbortSignal;
  /**
   * Run the U-Net as its split parts on every step (when the bundle has them), so inputs the head does not
   * read, ControlNet residuals computed in another thread, can arrive while the head runs.
   */
  splitUnet?: boolean;
}

export interface GenerationTimings {
  textEncoderMs: number;
  unetMs: number;
  vaeMs: number;
  pngMs: number;
  totalMs: number;
}

export interface GenerationResult {
  /** PNG files, one per image. */
  images: Uint8Array[];
  /** The sampler's final latents (before division by the VAE scaling factor), [n, C, h, w]. */
  latents: Float32Array;
  latentShape: [number, number, number, number];
  width: number;
  height: number;
  sampler: SamplerName;
  steps: number;
  timesteps: number[];
  seeds: number[];
  guidance: number;
  classifierFreeGuidance: boolean;
  /** Per step, whether the deep part ran (null without block caching). */
  fullSteps: boolean[] | null;
  timings: GenerationTimings;
  /** Session runs per component during this generation (of the whole batch when requests shared one). */
  componentRuns: Partial<Record<ComponentName, number>>;
  /** Milliseconds in each component's session runs during this generation (of the whole batch). */
  componentMs: Partial<Record<ComponentName, number>>;
  /** Images in the U-Net batch this request ran in (its own n, or more when it shared a batch). */
  batchSize: number;
}

export class GenerationError extends Error {
  override readonly name = "GenerationError";
}

type Stage = keyof Omit<GenerationTimings, "totalMs">;

class StageClock {
  readonly ms: Record<Stage, number> = { textEncoderMs: 0, unetMs: 0, vaeMs: 0, pngMs: 0 };

  async time<T>(stage: Stage, fn: () => Promise<T> | T): Promise<T> {
    const start = performance.now();
    try {
      return await fn();
    } finally {
      this.ms[stage] += performance.now() - start;
    }
  }
}

function floatTensor(data: Float32Array, dims: readonly number[]): ort.Tensor {
  return new ort.Tensor("float32", data, dims);
}

/** A tensor of `values` in the dtype the graph declares (ids and timesteps come as plain numbers). */
function tensorOf(dtype: TensorSpec["dtype"], values: readonly number[], dims: readonly number[]): ort.Tensor {
  if (dtype === "int64") return new ort.Tensor("int64", BigInt64Array.from(values, (v) => BigInt(Math.round(v))), dims);
  if (dtype === "int32") return new ort.Tensor("int32", Int32Array.from(values, Math.round), dims);
  if (dtype === "float32") return new ort.Tensor("float32", Float32Array.from(values), dims);
  throw new GenerationError(`${dtype} inputs are not supported by the pipeline`);
}

/** The timestep input as the graph declares it: a scalar, a fixed [1], or one per batch entry. */
function timestepTensor(spec: TensorSpec, t: number, batch: number): ort.Tensor {
  if (spec.shape.length === 0) return tensorOf(spec.dtype, [t], []);
  const len = spec.shape[0] === 1 ? 1 : batch;
  return tensorOf(spec.dtype, new Array<number>(len).fill(t), [len]);
}

function tile(data: Float32Array, times: number): Float32Array {
  const out = new Float32Array(data.length * times);
  for (let i = 0; i < times; i++) out.set(data, i * data.length);
  return out;
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
  | { kind: "cached"; head: Component; deep: Component; tail: Component; fullPass: Component | null };

function unetParts(bundle: Bundle, cached: boolean): UnetParts {
  const c = bundle.components;
  if (!cached) return { kind: "whole", whole: c.unet };
  const spec = bundle.manifest.cache;
  if (spec === undefined) {
    throw new GenerationError(`model ${bundle.manifest.name} is not split for block caching (no "cache" in its manifest)`);
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
  const list = parts.kind === "whole" ? [parts.whole] : [parts.head, parts.deep, parts.tail, ...(parts.fullPass ? [parts.fullPass] : [])];
  const produced = new Set(list.flatMap((c) => c.spec.outputs.map((t) => t.name)));
  const seen = new Map<string, TensorSpec>();
  for (const c of list) for (const t of c.spec.inputs) if (!produced.has(t.name) && !seen.has(t.name)) seen.set(t.name, t);
  return [...seen.values()];
}

/** The noise (or velocity) prediction: a component's first declared output. */
const predictionOf = (component: Component, outputs: Feeds): ort.Tensor => outputs[component.spec.outputs[0]!.name]!;

const BATCH_AXIS = "batch";

/**
 * Zeros for the add-on inputs no request filled: rank-0 LoRA branches (the dynamic rank axis at 0), and
 * ControlNet residuals (zero residuals leave the U-Net unchanged).
 */
function addonDefaults(bundle: Bundle, inputs: readonly TensorSpec[], unetBatch: number): Feeds {
  const m = bundle.manifest;
  const loraInputs = new Set((m.lora?.targets ?? []).flatMap((t) => [t.down_input, t.up_input]).filter((n) => n !== undefined));
  const residuals = new Set(m.controlnet?.residuals ?? []);
  const core = new Set<string>([...Object.values(UNET_IO), ...(m.guidance.embedding ? [m.guidance.embedding.input] : [])]);
  const feeds: Feeds = {};
  for (const spec of inputs) {
    if (core.has(spec.name)) continue;
    const isLora = loraInputs.has(spec.name);
    if (!isLora && !residuals.has(spec.name)) {
      throw new GenerationError(`model ${m.name}: U-Net input "${spec.name}" is neither core, LoRA nor ControlNet; the pipeline cannot feed it`);
    }
    const dims = spec.shape.map((d) => {
      if (typeof d === "number") return d;
      if (d === BATCH_AXIS) return unetBatch;
      if (isLora) return 0; // the rank axis: no LoRA is a rank-0 branch
      throw new GenerationError(`model ${m.name}: U-Net input "${spec.name}" has a symbolic axis "${d}" the pipeline cannot size`);
    });
    feeds[spec.name] = floatTensor(new Float32Array(dims.reduce((a, b) => a * b, 1)), dims);
  }
  return feeds;
}

/** The fields a request shares with the others in its batch; prompts, seeds and n may differ. */
export function batchKey(request: GenerationRequest): string {
  const r = GenerationRequest.parse(request);
  return JSON.stringify([r.sampler, r.steps, r.guidance, r.width, r.height, r.cache, r.forceSampler]);
}

/**
 * Generates `n` images for one request on a loaded bundle.
 *
 * @example
 * const bundle = await loadBundle("gpu-runner/zoo/models/tiny-shapes");
 * const { images } = await generate(bundle, { prompt: "a red circle", seed: 7, sampler: "lcm", steps: 4 });
 */
export async function generate(
  bundle: Bundle,
  request: GenerationRequest,
  options: GenerateOptions = {},
): Promise<GenerationResult> {
  return (await generateBatch(bundle, [request], options))[0]!;
}

/**
 * Generates several compatible requests (equal `batchKey`) in one U-Net batch: each keeps its own prompts and
 * seeds, so its images are the bytes it would get alone. Timings and component runs are the batch's.
 */
export async function generateBatch(
  bundle: Bundle,
  inputs: readonly GenerationRequest[],
  options: GenerateOptions = {},
): Promise<GenerationResult[]> {
  const started = performance.now();
  if (inputs.length === 0) return [];
  const requests: ResolvedRequest[] = inputs.map((r) => GenerationRequest.parse(r));
  const key = batchKey(inputs[0]!);
  if (inputs.some((r) => batchKey(r) !== key)) {
    throw new GenerationError("requests in one batch must share sampler, steps, guidance, size, cache and forceSampler");
  }
  const request = requests[0]!;
  const m = bundle.manifest;
  const c = bundle.components;
  const runsBefore = Object.fromEntries(Object.entries(c).map(([k, v]) => [k, v.runs]));
  const msBefore = Object.fromEntries(Object.entries(c).map(([k, v]) => [k, v.totalMs]));
  const clock = new StageClock();

  const samplerName = request.sampler ?? m.default_sampler;
  const sampler: Sampler = createSampler(samplerName, m, { force: request.forceSampler });
  const steps = request.steps ?? m.default_steps;
  sampler.setTimesteps(steps);
  const guidance = request.guidance ?? m.guidance.default_scale;
  const cfg = sampler.classifierFreeGuidance && m.guidance.cfg && guidance > 1;

  const width = request.width ?? m.image.width;
  const height = request.height ?? m.image.height;
  for (const [label, size] of [["width", width], ["height", height]] as const) {
    if (size < m.image.min_size || size > m.image.max_size || size % m.image.multiple_of !== 0) {
      throw new GenerationError(
        `${label} ${size} is outside [${m.image.min_size}, ${m.image.max_size}] or not a multiple of ${m.image.multiple_of}`,
      );
    }
  }
  // One entry per image of the batch, in request order.
  const images = requests.flatMap((r) =>
    Array.from({ length: r.n }, (_, i) => ({ prompt: r.prompt, negativePrompt: r.negativePrompt, seed: r.seed + i })),
  );
  const n = images.length;
  const latentShape: [number, number, number, number] = [
    n,
    m.latent.channels,
    height / m.latent.downsample,
    width / m.latent.downsample,
  ];
  const perImage = latentShape[1] * latentShape[2] * latentShape[3];
  const unetBatch = cfg ? 2 * n : n;

  // Text: one pass per distinct prompt, laid out per image (unconditional half first with CFG).
  const encoded = new Map<string, { data: Float32Array; dims: readonly number[] }>();
  const encode = async (prompt: string): Promise<{ data: Float32Array; dims: readonly number[] }> => {
    const known = encoded.get(prompt);
    if (known) return known;
    const tokens = bundle.tokenizer.encode(prompt);
    const specs = c.text_encoder.spec.inputs;
    const feeds: Feeds = {};
    for (const spec of specs) {
      if (spec === specs[0]) feeds[spec.name] = tensorOf(spec.dtype, tokens.ids, [1, tokens.ids.length]);
      else if (spec.name === "attention_mask") feeds[spec.name] = tensorOf(spec.dtype, tokens.attentionMask, [1, tokens.ids.length]);
      else throw new GenerationError(`text_encoder input "${spec.name}" is not token ids or attention_mask`);
    }
    const out = (await c.text_encoder.run(feeds))[c.text_encoder.spec.outputs[0]!.name]!;
    const result = { data: out.data as Float32Array, dims: out.dims };
    encoded.set(prompt, result);
    return result;
  };
  const { hidden, hiddenDims } = await clock.time("textEncoderMs", async () => {
    const rows = [...(cfg ? images.map((img) => img.negativePrompt) : []), ...images.map((img) => img.prompt)];
    const states = [];
    for (const prompt of rows) states.push(await encode(prompt));
    const one = states[0]!.data.length;
    const data = new Float32Array(one * unetBatch);
    states.forEach((st, i) => data.set(st.data, i * one));
    return { hidden: data, hiddenDims: [unetBatch, ...states[0]!.dims.slice(1)] };
  });

  // Noise: each image from Rng(seed + i); the same generators continue for LCM's re-noising.
  const rngs = images.map((img) => new Rng(img.seed));
  const noise: NoiseSource = (size) => {
    if (size !== n * perImage) throw new GenerationError(`noise of ${size} values asked for a batch of ${n}×${perImage}`);
    const out = new Float32Array(size);
    rngs.forEach((rng, i) => rng.fillGaussian(out.subarray(i * perImage, (i + 1) * perImage)));
    return out;
  };
  let latents = noise(n * perImage);
  if (sampler.initNoiseSigma !== 1) for (let i = 0; i < latents.length; i++) latents[i]! *= sampler.initNoiseSigma;

  const split = options.splitUnet === true && bundle.manifest.cache !== undefined;
  const parts = unetParts(bundle, request.cache !== null || split);
  const fullSteps = request.cache ? deepCacheSchedule(steps, { interval: request.cache.interval, mode: request.cache.schedule }) : null;
  // Split only for overlap: every step is a full pass through head, deep and tail (never the one-graph shortcut).
  if (split && parts.kind === "cached") parts.fullPass = null;
  const runsDeep = (i: number) => (fullSteps ? fullSteps[i]! : true);
  const defaults = addonDefaults(bundle, externalInputs(parts), unetBatch);
  const timestepSpec = (parts.kind === "whole" ? parts.whole : parts.head).input(UNET_IO.timestep)!;
  const constant: Feeds = { ...defaults, [UNET_IO.encoderHiddenStates]: floatTensor(hidden, hiddenDims) };
  if (m.guidance.embedding) {
    const { input, dim, w_scale, freq_shift } = m.guidance.embedding;
    constant[input] = floatTensor(tile(guidanceScaleEmbedding(guidance, dim, w_scale, freq_shift), unetBatch), [unetBatch, dim]);
  }

  let deepOutputs: Feeds | null = null;
  for (let i = 0; i < steps; i++) {
    if (options.signal?.aborted) throw options.signal.reason ?? new Error("aborted");
    const t = sampler.timesteps[i]!;
    const sampleDims = [unetBatch, ...latentShape.slice(1)];
    const sample = floatTensor(cfg ? tile(latents, 2) : latents, sampleDims);
    const timestepInput = timestepTensor(timestepSpec, t, unetBatch);
    const feeds: StepFeeds = {
      ...constant,
      [UNET_IO.sample]: sample,
      [UNET_IO.timestep]: timestepInput,
      ...(await options.unetInputs?.({ stepIndex: i, steps, timestep: t, unetBatch, sample, encoderHiddenStates: constant[UNET_IO.encoderHiddenStates]!, timestepTensor: timestepInput })),
    };
    const prediction = await clock.time("unetMs", async () => {
      if (parts.kind === "whole") return predictionOf(parts.whole, await parts.whole.run(await awaitInputs(parts.whole, feeds)));
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

  const decoded = await clock.time("vaeMs", async () => {
    const scaled = new Float32Array(latents.length);
    for (let i = 0; i < latents.length; i++) scaled[i] = latents[i]! / m.latent.scaling_factor;
    const vae = c.vae_decoder;
    const out = (await vae.run({ [vae.spec.inputs[0]!.name]: floatTensor(scaled, latentShape) }))[vae.spec.outputs[0]!.name]!;
    const expected = [n, 3, height, width];
    if (out.dims.join() !== expected.join()) {
      throw new GenerationError(`vae_decoder returned [${out.dims.join(", ")}], expected [${expected.join(", ")}]`);
    }
    return out.data as Float32Array;
  });
  const pngs = await clock.time("pngMs", () => {
    const plane = 3 * width * height;
    return Array.from({ length: n }, (_, i) =>
      encodePng(vaeOutputToRgb(decoded.subarray(i * plane, (i + 1) * plane), width, height), width, height),
    );
  });

  const timings = { ...clock.ms, totalMs: performance.now() - started };
  const componentRuns = Object.fromEntries(Object.entries(c).map(([k, v]) => [k, v.runs - (runsBefore[k] ?? 0)]));
  const componentMs = Object.fromEntries(Object.entries(c).map(([k, v]) => [k, v.totalMs - (msBefore[k] ?? 0)]));
  let offset = 0;
  return requests.map((r) => {
    const first = offset;
    offset += r.n;
    return {
      images: pngs.slice(first, offset),
      latents: latents.slice(first * perImage, offset * perImage),
      latentShape: [r.n, latentShape[1], latentShape[2], latentShape[3]],
      width,
      height,
      sampler: samplerName,
      steps,
      timesteps: [...sampler.timesteps],
      seeds: images.slice(first, offset).map((img) => img.seed),
      guidance,
      classifierFreeGuidance: cfg,
      fullSteps,
      timings,
      componentRuns,
      componentMs,
      batchSize: n,
    };
  });
}
