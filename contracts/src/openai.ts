import { z } from "@hono/zod-openapi";
import {
  CacheOption,
  ControlNetUse,
  Guidance,
  ImageCount,
  LoraUse,
  MAX_SIZE,
  NegativePrompt,
  Prompt,
  Seed,
  Steps,
} from "./generations.ts";
import { SamplerName } from "./models.ts";

/** `WIDTHxHEIGHT` with no zero side or leading zero, or OpenAI's `auto` (the model's default size). */
const OPENAI_SIZE_PATTERN = /^(auto|[1-9]\d{0,3}x[1-9]\d{0,3})$/;

/** A validated `size` as the width and height it asks for; none for `auto` or no size (the model's defaults). */
export function openAISize(size: string | undefined): { width: number; height: number } | undefined {
  if (!size || size === "auto") return undefined;
  const [width, height] = size.split("x").map(Number) as [number, number];
  return { width, height };
}

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
    size: z
      .string()
      .regex(OPENAI_SIZE_PATTERN, "expected WIDTHxHEIGHT (e.g. 512x512, each side 1 to 4096) or auto")
      .refine((v) => v === "auto" || v.split("x").every((side) => Number(side) <= MAX_SIZE), {
        message: `each side is at most ${MAX_SIZE}`,
      })
      .optional(),
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
    data: z.array(
      z.object({ url: z.string().optional(), b64_json: z.string().optional(), revised_prompt: z.string().optional() }),
    ),
    /** Our extension: the generation behind this answer (GET /v1/generations/{id}). */
    generation_id: z.string(),
  })
  .openapi("OpenAIImagesResponse");
