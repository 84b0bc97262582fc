/** Models: what each accepts (its spec, derived from its bundle's manifest by the edge when it is registered). */
import { z } from "@hono/zod-openapi";
import { ENABLED_STATUSES, LORA_TARGET_KINDS, SAMPLER_NAMES } from "./enums.ts";

export const SamplerName = z.enum(SAMPLER_NAMES).openapi("SamplerName");
export type SamplerName = z.infer<typeof SamplerName>;

export const SamplerLimits = z
  .object({
    min_steps: z.number().int().positive(),
    max_steps: z.number().int().positive(),
    default_steps: z.number().int().positive(),
    default_guidance: z.number().nonnegative(),
    max_guidance: z.number().nonnegative(),
  })
  .strict();

/** What a model accepts, derived from its bundle's manifest when it is registered (edge/src/models/from-manifest.ts). */
export const ModelSpec = z
  .object({
    default_width: z.number().int().positive(),
    default_height: z.number().int().positive(),
    min_size: z.number().int().positive(),
    max_size: z.number().int().positive(),
    multiple_of: z.number().int().positive(),
    max_images: z.number().int().positive().max(16),
    default_sampler: SamplerName,
    samplers: z.partialRecord(SamplerName, SamplerLimits),
    supports_lora: z.boolean(),
    supports_controlnet: z.boolean(),
    supports_deepcache: z.boolean(),
    /** Layers a LoRA may adapt (module paths as in training; kohya keys are `lora_unet_` + path with '.' → '_'). */
    lora_targets: z
      .array(
        z.object({
          module: z.string(),
          /** conv3x3: a LoCon layer; its down weight is the kernel [rank, in_features, 3, 3], its up [out_features, rank, 1, 1]. Absent: linear. */
          kind: z.enum(LORA_TARGET_KINDS).optional(),
          in_features: z.number().int(),
          out_features: z.number().int(),
        }),
      )
      .optional(),
    lora_max_rank: z.number().int().positive().optional(),
    /** Residual inputs the U-Net takes from ControlNets (names as in the bundle); absent on models registered before it was recorded. */
    controlnet_residuals: z.array(z.string()).optional(),
  })
  .strict()
  .openapi("ModelSpec");
export type ModelSpec = z.infer<typeof ModelSpec>;

export const Model = z
  .object({
    id: z.string().openapi({ example: "tiny-shapes" }),
    object: z.literal("model"),
    family: z.string(),
    display_name: z.string(),
    spec: ModelSpec,
    created_at: z.string(),
  })
  .openapi("Model");

export const ModelList = z.object({ object: z.literal("list"), data: z.array(Model) }).openapi("ModelList");

export const UpsertModelBody = z
  .object({
    family: z.string().min(1).max(64),
    display_name: z.string().min(1).max(128),
    spec: ModelSpec,
    status: z.enum(ENABLED_STATUSES).default("active"),
  })
  .strict()
  .openapi("UpsertModel");
