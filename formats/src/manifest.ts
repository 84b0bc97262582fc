/**
 * The model-bundle contract (DESIGN.md, "Model bundles"): the one place where the manifest is declared.
 * The zoo's export validates against `formats/manifest.schema.json`, generated from this file by
 * `npm run schema -w formats`; the runner's bundle loader validates with the same zod schema and then
 * checks every declared tensor against the ONNX sessions' real inputs and outputs.
 */
import { z } from "zod";
import { LORA_TARGET_KINDS } from "./lora-keys.ts";

/**
 * A dimension: a fixed size, or a symbolic name for a dynamic axis. The runner sizes "batch" (the U-Net's batch,
 * 2n with classifier-free guidance) and the rank axes of LoRA branch inputs (0 when no LoRA is applied).
 */
export const Dim = z.union([z.number().int().nonnegative(), z.string().min(1)]);

export const TensorSpec = z
  .object({
    name: z.string().min(1),
    dtype: z.enum(["float32", "float16", "int64", "int32"]),
    shape: z.array(Dim),
  })
  .strict();
export type TensorSpec = z.infer<typeof TensorSpec>;

export const ComponentSpec = z
  .object({
    /** Path of the ONNX file relative to the bundle folder, e.g. `unet/model.onnx`. */
    path: z.string().min(1),
    inputs: z.array(TensorSpec),
    outputs: z.array(TensorSpec).min(1),
    sha256: z
      .string()
      .regex(/^[0-9a-f]{64}$/)
      .optional(),
  })
  .strict();
export type ComponentSpec = z.infer<typeof ComponentSpec>;

export const PredictionType = z.enum(["epsilon", "v_prediction", "flow"]);
export type PredictionType = z.infer<typeof PredictionType>;

export const SamplerName = z.enum(["ddim", "lcm", "rectified-flow", "euler", "euler-a", "dpm++2m", "dpm++2m-karras"]);
export type SamplerName = z.infer<typeof SamplerName>;

export const SchedulerSpec = z
  .object({
    num_train_timesteps: z.number().int().positive(),
    beta_schedule: z.enum(["scaled_linear", "linear"]),
    beta_start: z.number().positive(),
    beta_end: z.number().positive(),
    /** LCM skeleton: k = num_train_timesteps / original_inference_steps. */
    original_inference_steps: z.number().int().positive().optional(),
    /** LCM boundary-condition timestep scaling (10 in diffusers). */
    timestep_scaling: z.number().positive().optional(),
  })
  .strict();
export type SchedulerSpec = z.infer<typeof SchedulerSpec>;

export const TokenizerSpec = z
  .object({
    type: z.literal("word"),
    /** The vocabulary's file name inside the bundle's `tokenizer/` folder (SD layout), e.g. `vocab.json`. */
    vocab: z.string().min(1),
    max_length: z.number().int().positive(),
    lowercase: z.boolean(),
    pad_id: z.number().int().nonnegative(),
    unk_id: z.number().int().nonnegative(),
    bos_id: z.number().int().nonnegative(),
    eos_id: z.number().int().nonnegative(),
  })
  .strict();
export type TokenizerSpec = z.infer<typeof TokenizerSpec>;

/**
 * A CLIP BPE tokenizer folder as diffusers saves it (`vocab.json`, `merges.txt`, `tokenizer_config.json`,
 * `special_tokens_map.json`); the ids below are what the importer read from it, checked again when the bundle loads.
 */
export const ClipTokenizerSpec = z
  .object({
    type: z.literal("clip"),
    /** The folder, relative to the bundle folder, e.g. `export/tokenizer`. */
    path: z.string().min(1),
    max_length: z.number().int().positive(),
    pad_id: z.number().int().nonnegative(),
    bos_id: z.number().int().nonnegative(),
    eos_id: z.number().int().nonnegative(),
  })
  .strict();
export type ClipTokenizerSpec = z.infer<typeof ClipTokenizerSpec>;

/**
 * How the prompt becomes the U-Net's conditioning for models imported from diffusers exports (absent: the text
 * encoder's first output, as the zoo's bundles are built). Checked against diffusers' `encode_prompt`.
 */
export const TextConditioningSpec = z
  .object({
    /**
     * Per text encoder (`text_encoder`, then `text_encoder_2`), the output the U-Net reads, concatenated on the last
     * axis: `last_hidden_state` for SD 1.x/2.x, the penultimate `hidden_states.<L-1>` of each encoder for SDXL.
     */
    hidden_states: z.array(z.string().min(1)).min(1).max(2),
    /** SDXL: the second encoder's pooled projection feeds the U-Net input `text_embeds`. */
    pooled: z
      .object({
        component: z.enum(["text_encoder", "text_encoder_2"]),
        output: z.string().min(1),
        unet_input: z.string().min(1),
      })
      .strict()
      .optional(),
    /** SDXL micro-conditioning: [original height, width, crop top, left, target height, width] into this U-Net input. */
    time_ids: z
      .object({ unet_input: z.string().min(1) })
      .strict()
      .optional(),
    /** SDXL's `force_zeros_for_empty_prompt`: without a negative prompt the unconditional conditioning is zeros. */
    zero_empty_negative: z.boolean().optional(),
  })
  .strict();
export type TextConditioningSpec = z.infer<typeof TextConditioningSpec>;

export const LoraTarget = z
  .object({
    /**
     * The module's path in the training framework, e.g. `down_blocks.1.attn.to_q`; a text encoder's is qualified with
     * its component, `text_encoder.text_model.encoder.layers.0.self_attn.q_proj` (`text_encoder_2.` for SDXL's
     * second). kohya and PEFT keys are derived from it (lora-keys.ts `kohyaPrefixes`).
     */
    module: z.string().min(1),
    /** conv3x3 (LoCon): the down input is the 3×3 kernel with its taps flattened, [batch, rank, in, 9]. */
    kind: z.enum(LORA_TARGET_KINDS),
    in_features: z.number().int().positive(),
    out_features: z.number().int().positive(),
    /** Which U-Net component(s) contain the layer (the split parts too). */
    components: z.array(z.string()).min(1),
    /** Branch inputs (mode "branch"): [batch, rank, in] ([batch, rank, in, 9] for conv3x3) and [batch, out, rank]. */
    down_input: z.string().optional(),
    up_input: z.string().optional(),
    /** Initializer names of W for merging, per component (mode "merge", or merging into a branch bundle). */
    weight: z.record(z.string(), z.string()).optional(),
    /** How the graph stores W: "out_in" as PyTorch does (Gemm/Conv), "in_out" transposed (a MatMul weight). */
    weight_layout: z.enum(["out_in", "in_out"]).optional(),
  })
  .strict();
export type LoraTarget = z.infer<typeof LoraTarget>;

export const LoraSpec = z
  .object({
    mode: z.enum(["branch", "merge"]),
    /** Largest total rank the runner may stack into one branch (sum over stacked LoRAs). */
    max_rank: z.number().int().positive(),
    targets: z.array(LoraTarget).min(1),
  })
  .strict();
export type LoraSpec = z.infer<typeof LoraSpec>;

export const CacheSpec = z
  .object({
    kind: z.literal("deepcache"),
    head: z.string(),
    deep: z.string(),
    tail: z.string(),
    /** Output of `deep` that a cached step reuses; an input of `tail` with the same name. */
    cached_feature: z.string(),
    /** The skip branch index at which the deep part starts (DeepCache's branch k). */
    branch: z.number().int().nonnegative(),
    /**
     * Head outputs that later parts read besides the cached feature (skip connections). Parts are wired by tensor
     * name: an output of one part feeds the input of the same name of a later part, and inputs shared with the
     * whole U-Net (timestep, text, LoRA branches, residuals) keep their names in every part.
     */
    skip_features: z.array(z.string()).optional(),
  })
  .strict();
export type CacheSpec = z.infer<typeof CacheSpec>;

export const GuidanceSpec = z
  .object({
    /** Classifier-free guidance: the runner runs an unconditional pass on the empty prompt. */
    cfg: z.boolean(),
    default_scale: z.number().nonnegative(),
    /** LCM-distilled models take w = scale − 1 embedded (sin first, then cos) as an input. */
    embedding: z
      .object({
        input: z.string(),
        dim: z.number().int().positive(),
        w_scale: z.number().positive(),
        /**
         * Frequencies exp(−ln(10000)·i / (dim/2 − shift)): 1 in diffusers' `get_guidance_scale_embedding` (the
         * default), 0 in the plain sinusoidal timestep embedding. The runner must embed exactly as training did.
         */
        freq_shift: z.union([z.literal(0), z.literal(1)]).optional(),
      })
      .strict()
      .optional(),
  })
  .strict();
export type GuidanceSpec = z.infer<typeof GuidanceSpec>;

export const ImageSpec = z
  .object({
    width: z.number().int().positive(),
    height: z.number().int().positive(),
    channels: z.literal(3),
    /** Smallest and largest sizes a request may ask for, and the multiple sizes must be of. */
    min_size: z.number().int().positive(),
    max_size: z.number().int().positive(),
    multiple_of: z.number().int().positive(),
  })
  .strict();

export const LatentSpec = z
  .object({
    channels: z.number().int().positive(),
    downsample: z.number().int().positive(),
    scaling_factor: z.number().positive(),
  })
  .strict();

export const ControlNetInputSpec = z
  .object({
    /** Residual names the U-Net accepts (zeros when no ControlNet is used), in skip order then mid. */
    residuals: z.array(z.string()).min(1),
  })
  .strict();

export const ModelManifest = z
  .object({
    schema_version: z.literal(1),
    kind: z.literal("diffusion"),
    name: z.string().min(1),
    /** Base-model family: add-ons declare the family they were trained for. */
    family: z.string().min(1),
    version: z.string().min(1),
    description: z.string().optional(),
    prediction_type: PredictionType,
    samplers: z.array(SamplerName).min(1),
    default_sampler: SamplerName,
    default_steps: z.number().int().positive(),
    image: ImageSpec,
    latent: LatentSpec,
    scheduler: SchedulerSpec,
    /**
     * The export's `scheduler/scheduler_config.json`, kept as data: with it every sampler reads its spacing, offsets
     * and options from the file, as diffusers' `from_config` does (imported models).
     */
    scheduler_config: z.record(z.string(), z.unknown()).optional(),
    guidance: GuidanceSpec,
    tokenizer: z.union([TokenizerSpec, ClipTokenizerSpec]),
    /** SDXL's second tokenizer, feeding `text_encoder_2`. */
    tokenizer_2: ClipTokenizerSpec.optional(),
    text_conditioning: TextConditioningSpec.optional(),
    components: z
      .object({
        text_encoder: ComponentSpec,
        text_encoder_2: ComponentSpec.optional(),
        unet: ComponentSpec,
        vae_decoder: ComponentSpec,
        vae_encoder: ComponentSpec.optional(),
        unet_head: ComponentSpec.optional(),
        unet_deep: ComponentSpec.optional(),
        unet_tail: ComponentSpec.optional(),
      })
      .strict(),
    lora: LoraSpec.optional(),
    cache: CacheSpec.optional(),
    controlnet: ControlNetInputSpec.optional(),
  })
  .strict();
export type ModelManifest = z.infer<typeof ModelManifest>;

/** A ControlNet add-on is its own bundle: one ONNX producing the residuals a family's U-Net accepts. */
export const ControlNetManifest = z
  .object({
    schema_version: z.literal(1),
    kind: z.literal("controlnet"),
    name: z.string().min(1),
    family: z.string().min(1),
    version: z.string().min(1),
    description: z.string().optional(),
    /** What the control image is: a binary mask, an edge map, ... */
    conditioning: z
      .object({
        type: z.enum(["mask", "edges", "depth"]),
        width: z.number().int().positive(),
        height: z.number().int().positive(),
        channels: z.union([z.literal(1), z.literal(3)]),
        /** How pixel values map into the network's input range. */
        range: z.tuple([z.number(), z.number()]),
      })
      .strict(),
    components: z.object({ controlnet: ComponentSpec }).strict(),
    /** The conditioning scale a request gets when it names none. */
    default_scale: z.number().nonnegative().optional(),
    /** Maps each ControlNet output to the U-Net residual input it feeds. */
    residuals: z.record(z.string(), z.string()),
  })
  .strict();
export type ControlNetManifest = z.infer<typeof ControlNetManifest>;

/**
 * Why a ControlNet cannot feed a model (empty when it can): the same family, every output it maps declared, and every
 * residual it feeds one the model's U-Net takes. `residuals` undefined: the model's list is unknown, not checked.
 */
export function controlNetMismatches(
  cn: ControlNetManifest,
  model: { name: string; family: string; residuals?: readonly string[] },
): string[] {
  const problems: string[] = [];
  if (cn.family !== model.family) problems.push(`family "${cn.family}" does not match the model's "${model.family}"`);
  const outputs = new Set(cn.components.controlnet.outputs.map((t) => t.name));
  const accepted = model.residuals && new Set(model.residuals);
  for (const [output, residual] of Object.entries(cn.residuals)) {
    if (!outputs.has(output))
      problems.push(`residuals maps output "${output}", which components.controlnet.outputs does not declare`);
    if (accepted && !accepted.has(residual))
      problems.push(`residual "${residual}" (from output "${output}") is not a residual input of ${model.name}`);
  }
  return problems;
}

export const BundleManifest = z.discriminatedUnion("kind", [ModelManifest, ControlNetManifest]);
export type BundleManifest = z.infer<typeof BundleManifest>;

/**
 * The JSON Schema of a bundle manifest, committed as `formats/manifest.schema.json` for validators outside
 * TypeScript (the zoo's Python export); derived from the zod schema so the two cannot disagree.
 */
export function bundleManifestJsonSchema(): Record<string, unknown> {
  return { title: "imagegen model bundle manifest", ...z.toJSONSchema(BundleManifest, { target: "draft-2020-12" }) };
}
