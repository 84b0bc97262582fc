import { z } from "@hono/zod-openapi";
import { CacheOption, ControlNetUse, Guidance, ImageCount, LoraUse, NegativePrompt, Prompt, Seed, Steps } from "./generations.ts";
import { SamplerName } from "./models.ts";

/**
 * OpenAI's `POST /v1/images/generations` body, so the official `openai` client works with `baseURL` pointed here.
 * OpenAI's own fields are accepted (quality, style, user, … have no meaning here and are ignored); our extensions
 * ride along as extra fields. Anything else is refused, as everywhere.
 */
export const OpenAIImageBody = z
  .object({
    prompt: Prompt,
    model: z.string().min(1).max(64).optional(),
    n: ImageCount.default(1),
    size: z.string().regex(/^\d{1,4}x\d{1,4}$/, "expected WIDTHxHEIGHT, e.g. 64x64").optional(),
    response_format: z.enum(["url", "b64_json"]).default("url"),
    quality: z.string().max(32).optional(),
    style: z.string().max(32).optional(),
    user: z.string().max(256).optional(),
    background: z.string().max(32).optional(),
    output_format: z.enum(["png"]).optional(),
    moderation: z.string().max(32).optional(),
    // Extensions.
    negative_prompt: NegativePrompt.optional(),
    seed: Seed.optional(),
    sampler: SamplerName.optional(),
    steps: Steps.optional(),
    guidance: Guidance.optional(),
    loras: z.array(LoraUse).max(8).optional(),
    controlnets: z.array(ControlNetUse).max(4).optional(),
    cache: CacheOption.optional(),
  })
  .strict()
  .openapi("OpenAIImageRequest");

export const OpenAIImagesResponse = z
  .object({
    created: z.number().int(),
    data: z.array(z.object({ url: z.string().optional(), b64_json: z.string().optional(), revised_prompt: z.string().optional() })),
    /** Our extension: the generation behind this answer (GET /v1/generations/{id}). */
    generation_id: z.string(),
  })
  .openapi("OpenAIImagesResponse");
