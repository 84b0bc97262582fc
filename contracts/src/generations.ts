/**
 * Generations: what a client asks for (`CreateGenerationBody`), the one request the edge hands to the pipeline
 * (`GenerationRequest`: defaults applied, seed chosen, add-ons pinned), and what a client gets back.
 * Every bound is declared once here; the OpenAI-compatible body and the runner reuse the same field schemas.
 */
import { z } from "@hono/zod-openapi";
import { CACHE_SCHEDULES, JOB_STATUSES } from "./enums.ts";
import { SamplerName } from "./models.ts";
import { ADDON_REF_PATTERN } from "./refs.ts";

export const MAX_PROMPT_CHARS = 1000;
export const MAX_SEED = 2 ** 32 - 1;
export const MAX_IMAGES = 16;
export const MAX_SIZE = 4096;
/** DeepCache's full-pass interval a client may ask for; 1 (a full pass every step) would cache nothing. */
/** A control image travels as this data: URL prefix followed by base64. */
export const CONTROL_IMAGE_PREFIX = "data:image/png;base64,";
export const CONTROL_IMAGE_PATTERN = /^data:image\/png;base64,[A-Za-z0-9+/]+={0,2}$/;
/** The largest control image the runner decodes (it resizes to the ControlNet's conditioning size). */
export const MAX_CONTROL_PIXELS = MAX_SIZE * MAX_SIZE;
export const DEEPCACHE_INTERVAL = { min: 2, max: 10, default: 3 } as const;

/**
 * Text that is well-formed UTF-16: a lone surrogate (which JSON's \uD800 escape can carry) cannot be echoed back in
 * JSON that strict clients parse. With the `u` flag a paired surrogate is one code point, so \p{Cs} finds only lone ones.
 */
const wellFormed = (s: string) => !/\p{Cs}/u.test(s);
const WELL_FORMED = { message: "contains a lone UTF-16 surrogate (not well-formed Unicode text)" };
export const Prompt = z.string().min(1).max(MAX_PROMPT_CHARS).refine(wellFormed, WELL_FORMED);
export const NegativePrompt = z.string().max(MAX_PROMPT_CHARS).refine(wellFormed, WELL_FORMED);
export const Seed = z.number().int().min(0).max(MAX_SEED);
export const ImageCount = z.number().int().min(1).max(MAX_IMAGES);
export const ImageSide = z.number().int().positive().max(MAX_SIZE);
export const Steps = z.number().int().min(1).max(1000);
export const Guidance = z.number().min(0).max(50);

/** `addon_…` or `addon_…@<version>` (see refs.ts). */
export const AddonRef = z
  .string()
  .regex(ADDON_REF_PATTERN, "expected an add-on id, optionally with @version")
  .openapi({ example: "addon_01hzy3k8m2q9w7e4r5t6y7u8i9@2" });

export const LoraUse = z
  .object({
    id: AddonRef,
    scale: z.number().min(-4).max(4).default(1),
    /**
     * Serve a file some of whose keys match no layer of the model (those keys are skipped; the job's provenance
     * records keys mapped / total). Without it such a file fails the job, naming the keys.
     */
    allow_partial: z.boolean().default(false),
  })
  .strict()
  .openapi("LoraUse");

export const ControlNetUse = z
  .object({
    id: AddonRef,
    /**
     * The control image: a PNG as a base64 data: URL (the only form the runner reads). The edge also checks that
     * the bytes begin as a PNG the runner decodes (8-bit, not interlaced), so a bad image fails at the door.
     */
    image: z
      .string()
      .max(1_000_000)
      .regex(CONTROL_IMAGE_PATTERN, "expected a data:image/png;base64,… URL (https URLs are not fetched)")
      .refine((s) => (s.length - CONTROL_IMAGE_PREFIX.length) % 4 === 0, {
        message: "the base64 data is truncated (its length is not a multiple of 4)",
      }),
    scale: z.number().min(0).max(2).default(1),
  })
  .strict()
  .openapi("ControlNetUse");

export const DeepCacheOption = z
  .object({
    mode: z.literal("deepcache"),
    interval: z
      .number()
      .int()
      .min(DEEPCACHE_INTERVAL.min)
      .max(DEEPCACHE_INTERVAL.max)
      .default(DEEPCACHE_INTERVAL.default),
    schedule: z.enum(CACHE_SCHEDULES).default("uniform"),
  })
  .strict();
export type DeepCacheOption = z.infer<typeof DeepCacheOption>;

export const CacheOption = z
  .discriminatedUnion("mode", [z.object({ mode: z.literal("off") }).strict(), DeepCacheOption])
  .openapi("CacheOption");
export type CacheOption = z.infer<typeof CacheOption>;

export const CreateGenerationBody = z
  .object({
    model: z.string().min(1).max(64).optional().openapi({ example: "tiny-shapes" }),
    prompt: Prompt.openapi({ example: "a large red circle on the left, blue background" }),
    negative_prompt: NegativePrompt.optional(),
    width: ImageSide.optional(),
    height: ImageSide.optional(),
    n: ImageCount.default(1),
    seed: Seed.optional(),
    sampler: SamplerName.optional(),
    steps: Steps.optional(),
    guidance: Guidance.optional(),
    loras: z.array(LoraUse).max(8).default([]),
    controlnets: z.array(ControlNetUse).max(4).default([]),
    cache: CacheOption.optional(),
    webhook_url: z
      .url({ protocol: /^https?$/ })
      .max(2048)
      .optional(),
    output_ttl_seconds: z
      .number()
      .int()
      .min(60)
      .max(7 * 24 * 3600)
      .default(3600),
    metadata: z.record(z.string().max(64), z.string().max(512)).optional(),
  })
  .strict()
  .openapi("CreateGeneration");
export type CreateGenerationBody = z.infer<typeof CreateGenerationBody>;

export const JobStatus = z.enum(JOB_STATUSES).openapi("JobStatus");
export type JobStatus = z.infer<typeof JobStatus>;

/** queue_ms, addon_load_ms, inference_ms, upload_ms, total_ms … */
export const Timings = z.record(z.string(), z.number());
export type Timings = z.infer<typeof Timings>;
/** What produced the images: model and add-on hashes, sampler, steps, seed, runner. */
export const Provenance = z.record(z.string(), z.unknown());
export type Provenance = z.infer<typeof Provenance>;

export const ResolvedAddon = z.object({
  id: z.string(),
  version: z.number().int(),
  name: z.string(),
  sha256: z.string().nullable(),
  scale: z.number(),
});

/**
 * The request as the job runs it: defaults applied, seed chosen, add-ons pinned to versions and hashes. The one
 * shape from the edge to the pipeline (the runner's pipeline takes a subset of these fields, with the same bounds).
 */
export const GenerationRequest = z
  .object({
    model: z.string(),
    prompt: Prompt,
    negative_prompt: NegativePrompt,
    width: ImageSide,
    height: ImageSide,
    n: ImageCount,
    seed: Seed,
    sampler: SamplerName,
    steps: Steps,
    guidance: Guidance,
    loras: z.array(ResolvedAddon.extend({ allow_partial: z.boolean().default(false) })),
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
  .object({
    expires_in_seconds: z
      .number()
      .int()
      .min(60)
      .max(7 * 24 * 3600)
      .default(3600),
  })
  .strict()
  .openapi("SignImage");

export const SignedImageUrl = z.object({ url: z.string(), url_expires_at: z.string() }).openapi("SignedImageUrl");

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
    timings: Timings.nullable(),
    provenance: Provenance.nullable(),
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
    after: z
      .string()
      .max(64)
      .optional()
      .openapi({ description: "Cursor: the id of the last generation of the previous page" }),
    status: JobStatus.optional(),
    model: z.string().max(64).optional(),
  })
  .strict();
