/**
 * The text-to-image pipeline. It only composes named steps, as diffusers' pipelines do: `planBatch` (the sampler,
 * sizes and images a batch resolves to), `encodePrompt` (text.ts), `prepareLatents` (latents.ts), `denoise`
 * (denoise.ts: the sampler, DeepCache, LoRA branches and ControlNet residuals), `decodeLatents` (vae.ts) and
 * `encodePngs` (png.ts).
 *
 * Determinism: image i of a request starts from its own generator seeded with `seed + i`, so an image does not
 * depend on the batch it was generated in, and the same request gives the same bytes on the same machine.
 */
import { performance } from "node:perf_hooks";
import type { SamplerName } from "@imagegen/formats/manifest";
import { createSampler, SamplerMismatchError } from "../samplers/index.ts";
import type { NoiseSource, Sampler } from "../samplers/types.ts";
import { describeIssues, RunnerError } from "../errors.ts";
import type { Bundle, ComponentName } from "./bundle.ts";
import { denoise, type OverlapParts, type UnetInputProvider } from "./denoise.ts";
import { prepareLatents, type LatentShape } from "./latents.ts";
import { encodePngs } from "./png.ts";
import { GenerationRequest, type ResolvedRequest } from "./request.ts";
import { GenerationError } from "./tensors.ts";
import { encodePrompt, type TextConditioning, type TextEncoderInputs } from "./text.ts";
import { decodeLatents } from "./vae.ts";

export { GenerationError } from "./tensors.ts";
export type { OverlapParts, StepContext, StepFeeds, UnetInputProvider } from "./denoise.ts";

export interface GenerateOptions {
  onProgress?: (progress: { step: number; steps: number }) => void;
  unetInputs?: UnetInputProvider;
  signal?: AbortSignal;
  /**
   * Run the U-Net as its split parts on every step (when the bundle has them), so inputs the head does not
   * read, ControlNet residuals computed in another thread, can arrive while the head runs.
   */
  splitUnet?: boolean;
  /**
   * The U-Net split where ControlNet residuals enter (addons/controlnet-overlap.ts): its early part runs while the
   * residuals are computed in another thread. Takes precedence over `splitUnet` when no block cache runs.
   */
  overlap?: OverlapParts;
  /**
   * The unit-Gaussian starting latents and the sampler's noise, instead of the seeds' generators: parity tests
   * replay diffusers' own (the latents are still multiplied by the sampler's init noise sigma).
   */
  latents?: { initial: Float32Array; noise: NoiseSource };
  /** The text encoders' LoRA branches per prompt row (rows: the negative prompts first under CFG, then the prompts). */
  textEncoderInputs?: TextEncoderInputs | undefined;
  /** Sees the intermediate tensors: the text conditioning and the decoded images ([n, 3, H, W] in [-1, 1]). */
  inspect?: (stages: { text: TextConditioning; decoded: Float32Array }) => void;
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
  latentShape: LatentShape;
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

type Stage = keyof Omit<GenerationTimings, "totalMs">;

/** Milliseconds per stage of one batch; a stage may be timed in several slices (the U-Net, once per step). */
export class StageClock {
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

/** A request as the pipeline takes it, with defaults filled; an invalid one is a `request_invalid` failure. */
export function resolveRequest(request: GenerationRequest): ResolvedRequest {
  const parsed = GenerationRequest.safeParse(request);
  if (parsed.success) return parsed.data;
  throw new RunnerError("request_invalid", describeIssues(parsed.error.issues).join("; "), { cause: parsed.error });
}

function samplerFor(name: SamplerName, bundle: Bundle, force: boolean): Sampler {
  try {
    return createSampler(name, bundle.manifest, { force });
  } catch (err) {
    throw err instanceof SamplerMismatchError ? RunnerError.wrap(err, "sampler_mismatch") : err;
  }
}

/** The fields a request shares with the others in its batch; prompts, seeds and n may differ. */
export function batchKey(request: GenerationRequest): string {
  const r = resolveRequest(request);
  return JSON.stringify([r.sampler, r.steps, r.guidance, r.width, r.height, r.cache, r.forceSampler]);
}

/** What a batch resolves to before any session runs. */
interface BatchPlan {
  requests: ResolvedRequest[];
  samplerName: SamplerName;
  /** With its timesteps set. */
  sampler: Sampler;
  steps: number;
  guidance: number;
  classifierFreeGuidance: boolean;
  width: number;
  height: number;
  /** One entry per image of the batch, in request order. */
  images: Array<{ prompt: string; negativePrompt: string; seed: number }>;
  latentShape: LatentShape;
}

/** Checks that the requests share a batch and fit the model, and fills the model's defaults. */
function planBatch(bundle: Bundle, inputs: readonly GenerationRequest[]): BatchPlan {
  const requests = inputs.map(resolveRequest);
  const key = batchKey(inputs[0]!);
  if (inputs.some((r) => batchKey(r) !== key)) {
    throw new GenerationError(
      "requests in one batch must share sampler, steps, guidance, size, cache and forceSampler",
    );
  }
  const request = requests[0]!;
  const m = bundle.manifest;
  const samplerName = request.sampler ?? m.default_sampler;
  const sampler = samplerFor(samplerName, bundle, request.forceSampler);
  const steps = request.steps ?? m.default_steps;
  sampler.setTimesteps(steps);
  const guidance = request.guidance ?? m.guidance.default_scale;
  // An imported model follows diffusers, whose pipelines guide with any scheduler when the scale is above 1 (LCM-LoRA
  // at 1–2); the zoo's LCM sampling is one pass. An LCM-distilled U-Net's guidance is its embedding (cfg false).
  const samplerGuides = sampler.classifierFreeGuidance || m.scheduler_config !== undefined;
  const classifierFreeGuidance = samplerGuides && m.guidance.cfg && guidance > 1;
  const width = request.width ?? m.image.width;
  const height = request.height ?? m.image.height;
  for (const [label, size] of [
    ["width", width],
    ["height", height],
  ] as const) {
    if (size < m.image.min_size || size > m.image.max_size || size % m.image.multiple_of !== 0) {
      throw new GenerationError(
        `${label} ${size} is outside [${m.image.min_size}, ${m.image.max_size}] or not a multiple of ${m.image.multiple_of}`,
      );
    }
  }
  const images = requests.flatMap((r) =>
    Array.from({ length: r.n }, (_, i) => ({ prompt: r.prompt, negativePrompt: r.negative_prompt, seed: r.seed + i })),
  );
  const latentShape: LatentShape = [
    images.length,
    m.latent.channels,
    height / m.latent.downsample,
    width / m.latent.downsample,
  ];
  return {
    requests,
    samplerName,
    sampler,
    steps,
    guidance,
    classifierFreeGuidance,
    width,
    height,
    images,
    latentShape,
  };
}

/**
 * Generates `n` images for one request on a loaded bundle.
 *
 * @example
 * const bundle = await loadBundle("gpu-runner/models/tiny-shapes");
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
  const plan = planBatch(bundle, inputs);
  const { images, latentShape, width, height } = plan;
  const c = bundle.components;
  const runsBefore = Object.fromEntries(Object.entries(c).map(([k, v]) => [k, v.runs]));
  const msBefore = Object.fromEntries(Object.entries(c).map(([k, v]) => [k, v.totalMs]));
  const clock = new StageClock();

  // With classifier-free guidance the U-Net batch is the negative prompts, then the prompts.
  const rows = [
    ...(plan.classifierFreeGuidance ? images.map((img) => img.negativePrompt) : []),
    ...images.map((img) => img.prompt),
  ];
  const unconditional = plan.classifierFreeGuidance ? images.length : 0;
  const text = await clock.time("textEncoderMs", () =>
    encodePrompt(bundle, {
      rows,
      unconditional,
      width,
      height,
      ...(options.textEncoderInputs ? { encoderInputs: options.textEncoderInputs } : {}),
    }),
  );
  const initial = options.latents
    ? { latents: options.latents.initial.map((v) => v * plan.sampler.initNoiseSigma), noise: options.latents.noise }
    : prepareLatents(
        images.map((img) => img.seed),
        latentShape,
        plan.sampler.initNoiseSigma,
      );
  const { latents, fullSteps } = await denoise(
    bundle,
    {
      ...plan,
      encoderHiddenStates: text.encoderHiddenStates,
      textInputs: text.unetInputs,
      cache: plan.requests[0]!.cache,
    },
    initial.latents,
    initial.noise,
    options,
    clock,
  );
  const decoded = await clock.time("vaeMs", () => decodeLatents(bundle, latents, latentShape, width, height));
  options.inspect?.({ text, decoded });
  const pngs = await clock.time("pngMs", () => encodePngs(decoded, images.length, width, height));

  const timings = { ...clock.ms, totalMs: performance.now() - started };
  const componentRuns = Object.fromEntries(Object.entries(c).map(([k, v]) => [k, v.runs - (runsBefore[k] ?? 0)]));
  const componentMs = Object.fromEntries(Object.entries(c).map(([k, v]) => [k, v.totalMs - (msBefore[k] ?? 0)]));
  const perImage = latentShape[1] * latentShape[2] * latentShape[3];
  let offset = 0;
  return plan.requests.map((r) => {
    const first = offset;
    offset += r.n;
    return {
      images: pngs.slice(first, offset),
      latents: latents.slice(first * perImage, offset * perImage),
      latentShape: [r.n, latentShape[1], latentShape[2], latentShape[3]],
      width,
      height,
      sampler: plan.samplerName,
      steps: plan.steps,
      timesteps: [...plan.sampler.timesteps],
      seeds: images.slice(first, offset).map((img) => img.seed),
      guidance: plan.guidance,
      classifierFreeGuidance: plan.classifierFreeGuidance,
      fullSteps,
      timings,
      componentRuns,
      componentMs,
      batchSize: images.length,
    };
  });
}
