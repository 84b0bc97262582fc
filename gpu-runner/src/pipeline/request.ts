/**
 * What the pipeline is asked to do: the runner-side shape of a generation request (DESIGN.md, "Public API"),
 * validated with zod where it enters a worker. Defaults that depend on the model (sampler, steps, guidance,
 * size) are filled in by the pipeline from the manifest.
 */
import { z } from "zod";
import { SamplerName } from "./manifest.ts";

export const CachePolicy = z
  .object({
    mode: z.literal("deepcache"),
    interval: z.number().int().min(1).max(50),
    schedule: z.enum(["uniform", "non-uniform"]).default("uniform"),
  })
  .strict();
export type CachePolicy = z.infer<typeof CachePolicy>;

export const GenerationRequest = z
  .object({
    prompt: z.string().max(2000),
    negativePrompt: z.string().max(2000).default(""),
    sampler: SamplerName.optional(),
    steps: z.number().int().min(1).max(1000).optional(),
    seed: z.number().int().min(0).max(Number.MAX_SAFE_INTEGER),
    guidance: z.number().min(0).max(50).optional(),
    n: z.number().int().min(1).max(16).default(1),
    width: z.number().int().positive().optional(),
    height: z.number().int().positive().optional(),
    cache: CachePolicy.nullable().default(null),
    /** Bench only: run a sampler the model was not trained for (the images are meaningless; the timing is not). */
    forceSampler: z.boolean().default(false),
  })
  .strict();
export type GenerationRequest = z.input<typeof GenerationRequest>;
export type ResolvedRequest = z.output<typeof GenerationRequest>;
