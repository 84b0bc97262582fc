import { z } from "@hono/zod-openapi";
import { SamplerName } from "./models.ts";

export const MAX_PROMPT_CHARS = 1000;
export const MAX_SEED = 2 ** 32 - 1;

/** `addon_…` or `addon_…@<version>`. */
export const AddonRef = z
  .string()
  .regex(/^[a-z]+_[0-9a-z]{1,40}(@[1-9][0-9]{0,5})?$/, "expected an add-on id, optionally with @version")
  .openapi({ example: "addon_01hzy3k8m2q9w7e4r5t6y7u8i9@2" });

export const LoraUse = z
  .object({ id: AddonRef, scale: z.number().min(-4).max(4).default(1) })
  .strict()
  .openapi("LoraUse");

export const ControlNetUse = z
  .object({
    id: AddonRef,
    /** The control image: a data: URL (PNG) or an https URL. */
    image: z
      .string()
      .max(1_000_000)
      .refine((s) => s.startsWith("data:image/png;base64,") || s.startsWith("https://"), {
        message: "expected a data:image/png;base64 URL or an https URL",
      }),
    scale: z.number().min(0).max(2).default(1),
  })
  .strict()
  .openapi("ControlNetUse");

export const CacheOption = z
  .discriminatedUnion("mode", [
    z.object({ mode: z.literal("off") }).strict(),
    z
      .object({
        mode: z.literal("deepcache"),
        interval: z.number().int().min(2).max(10).default(3),
        schedule: z.enum(["uniform", "non-uniform"]).default("uniform"),
      })
      .strict(),
  ])
  .openapi("CacheOption");

export const CreateGenerationBody = z
  .object({
    model: z.string().min(1).max(64).optional().openapi({ example: "tiny-shapes" }),
    prompt: z.string().min(1).max(MAX_PROMPT_CHARS).openapi({ example: "a large red circle on the left, blue background" }),
    negative_prompt: z.string().max(MAX_PROMPT_CHARS).optional(),
    width: z.number().int().positive().max(4096).optional(),
    height: z.number().int().positive().max(4096).optional(),
    n: z.number().int().min(1).max(16).default(1),
    seed: z.number().int().min(0).max(MAX_SEED).optional(),
    sampler: SamplerName.optional(),
    steps: z.number().int().min(1).max(1000).optional(),
    guidance: z.number().min(0).max(50).optional(),
    loras: z.array(LoraUse).max(8).default([]),
    controlnets: z.array(ControlNetUse).max(4).default([]),
    cache: CacheOption.optional(),
    webhook_url: z.url({ protocol: /^https?$/ }).max(2048).optional(),
    output_ttl_seconds: z.number().int().min(60).max(7 * 24 * 3600).default(3600),
    metadata: z.record(z.string().max(64), z.string().max(512)).optional(),
  })
  .strict()
  .openapi("CreateGeneration");
export type CreateGenerationBody = z.infer<typeof CreateGenerationBody>;

export const JobStatus = z.enum(["queued", "running", "succeeded", "failed", "canceled"]).openapi("JobStatus");

export const ResolvedAddon = z.object({
  id: z.string(),
  version: z.number().int(),
  name: z.string(),
  sha256: z.string().nullable(),
  scale: z.number(),
});

/** The request as the job runs it: defaults applied, seed chosen, add-ons pinned to versions and hashes. */
export const GenerationRequest = z
  .object({
    model: z.string(),
    prompt: z.string(),
    negative_prompt: z.string(),
    width: z.number().int(),
    height: z.number().int(),
    n: z.number().int(),
    seed: z.number().int(),
    sampler: SamplerName,
    steps: z.number().int(),
    guidance: z.number(),
    loras: z.array(ResolvedAddon),
    controlnets: z.array(ResolvedAddon.extend({ image: z.string() })),
    cache: CacheOption,
    output_ttl_seconds: z.number().int(),
    metadata: z.record(z.string(), z.string()),
  })
  .openapi("GenerationRequest");
export type GenerationRequest = z.infer<typeof GenerationRequest>;

export const GenerationImage = z
  .object({
    index: z.number().int(),
    width: z.number().int(),
    height: z.number().int(),
    seed: z.number().int(),
    sha256: z.string(),
    size_bytes: z.number().int(),
    /** A signed GET URL, valid until url_expires_at; GET the generation again (or sign it anew) for a fresh one. */
    url: z.string().nullable(),
    url_expires_at: z.string().nullable(),
  })
  .openapi("GenerationImage");

export const SignImageBody = z
  .object({ expires_in_seconds: z.number().int().min(60).max(7 * 24 * 3600).default(3600) })
  .strict()
  .openapi("SignImage");

export const SignedImageUrl = z
  .object({ url: z.string(), url_expires_at: z.string() })
  .openapi("SignedImageUrl");

export const Generation = z
  .object({
    id: z.string().openapi({ example: "gen_01hzy3k8m2q9w7e4r5t6y7u8i9" }),
    object: z.literal("generation"),
    status: JobStatus,
    request: GenerationRequest,
    progress: z.object({ step: z.number().int(), total: z.number().int() }).nullable(),
    images: z.array(GenerationImage),
    error: z.object({ code: z.string(), message: z.string() }).nullable(),
    attempts: z.number().int(),
    timings: z.record(z.string(), z.number()).nullable(),
    provenance: z.record(z.string(), z.unknown()).nullable(),
    created_at: z.string(),
    started_at: z.string().nullable(),
    finished_at: z.string().nullable(),
  })
  .openapi("Generation");
export type Generation = z.infer<typeof Generation>;

export const GenerationList = z
  .object({
    object: z.literal("list"),
    data: z.array(Generation),
    has_more: z.boolean(),
    next_cursor: z.string().nullable(),
  })
  .openapi("GenerationList");

export const ListGenerationsQuery = z
  .object({
    limit: z.coerce.number().int().min(1).max(100).default(20),
    after: z.string().max(64).optional().openapi({ description: "Cursor: the id of the last generation of the previous page" }),
    status: JobStatus.optional(),
    model: z.string().max(64).optional(),
  })
  .strict();
