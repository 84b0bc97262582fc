/**
 * What the pipeline is asked to do: the fields of the edge's `GenerationRequest` (`@imagegen/contracts`) that
 * decide the images, with the same bounds, validated with zod where it enters a worker. Defaults that depend on the
 * model (sampler, steps, guidance, size) are filled in by the pipeline from the manifest, so they may be absent here.
 */
import { DEEPCACHE_INTERVAL, DeepCacheOption, GenerationRequest as EdgeRequest } from "@imagegen/contracts/generations";
import { z } from "zod";

/**
 * DeepCache as the pipeline runs it. Interval 1 (a full pass every step, so nothing is reused) is refused by the
 * API but taken here: it checks that the split U-Net reproduces the whole one.
 */
export const CachePolicy = DeepCacheOption.extend({ interval: z.number().int().min(1).max(DEEPCACHE_INTERVAL.max) });
export type CachePolicy = z.infer<typeof CachePolicy>;

export const GenerationRequest = EdgeRequest.pick({
  prompt: true,
  seed: true,
  sampler: true,
  steps: true,
  guidance: true,
  width: true,
  height: true,
})
  .partial({ sampler: true, steps: true, guidance: true, width: true, height: true })
  .extend({
    negative_prompt: EdgeRequest.shape.negative_prompt.default(""),
    n: EdgeRequest.shape.n.default(1),
    /** The edge's `{ mode: "off" }` and an absent policy both mean no caching (null). */
    cache: z
      .union([CachePolicy, z.object({ mode: z.literal("off") }).strict()])
      .nullable()
      .default(null)
      .transform((c) => (c?.mode === "deepcache" ? c : null)),
    /** Bench only: run a sampler the model was not trained for (the images are meaningless; the timing is not). */
    forceSampler: z.boolean().default(false),
  })
  .strict();
export type GenerationRequest = z.input<typeof GenerationRequest>;
export type ResolvedRequest = z.output<typeof GenerationRequest>;
