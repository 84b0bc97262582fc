/**
 * What the edge accepts for a model follows from its bundle's manifest (the runner's contract), so a model is
 * registered from the very file the runner loads, never described twice by hand.
 */
import type { ModelManifest } from "@imagegen/formats/manifest";
import type { ModelSpec, SamplerName } from "@imagegen/contracts/models";

/** Step ranges each sampler is meant for: few-step samplers are distilled for their range. */
const STEP_RANGE: Record<SamplerName, { min: number; max: number; fallback: number; guidance: number }> = {
  ddim: { min: 1, max: 200, fallback: 50, guidance: 4 },
  // LCM-LoRA style sampling on a guided base: one pass per step at a low scale (REFERENCE.md).
  lcm: { min: 1, max: 8, fallback: 4, guidance: 1.5 },
  "rectified-flow": { min: 1, max: 50, fallback: 1, guidance: 1 },
  // The Stable Diffusion samplers users pick, at SD's usual guidance.
  euler: { min: 1, max: 150, fallback: 30, guidance: 7.5 },
  "euler-a": { min: 1, max: 150, fallback: 30, guidance: 7.5 },
  "dpm++2m": { min: 1, max: 100, fallback: 25, guidance: 7.5 },
  "dpm++2m-karras": { min: 1, max: 100, fallback: 25, guidance: 7.5 },
};

export function modelSpecFromManifest(m: ModelManifest): ModelSpec {
  const samplers: ModelSpec["samplers"] = {};
  for (const name of m.samplers) {
    const range = STEP_RANGE[name];
    const guided = m.guidance.cfg || m.guidance.embedding !== undefined;
    const defaultGuidance = !guided ? 1 : name === m.default_sampler ? m.guidance.default_scale : range.guidance;
    samplers[name] = {
      min_steps: range.min,
      max_steps: range.max,
      default_steps: name === m.default_sampler ? m.default_steps : range.fallback,
      default_guidance: defaultGuidance,
      max_guidance: guided ? 20 : 1,
    };
  }
  return {
    default_width: m.image.width,
    default_height: m.image.height,
    min_size: m.image.min_size,
    max_size: m.image.max_size,
    multiple_of: m.image.multiple_of,
    max_images: 8,
    default_sampler: m.default_sampler,
    samplers,
    supports_lora: m.lora !== undefined,
    supports_controlnet: m.controlnet !== undefined,
    supports_deepcache: m.cache !== undefined,
    ...(m.lora
      ? {
          lora_targets: m.lora.targets.map((t) => ({
            module: t.module,
            kind: t.kind,
            in_features: t.in_features,
            out_features: t.out_features,
          })),
          lora_max_rank: m.lora.max_rank,
        }
      : {}),
    ...(m.controlnet ? { controlnet_residuals: m.controlnet.residuals } : {}),
  };
}
