/**
 * Picks a sampler for a model. A sampler whose update rule does not fit the model's prediction type, or that
 * the manifest does not list, is refused: its images would be noise. `force` exists for the bench, which runs
 * every sampler on an untrained random bundle to time it.
 */
import type { ModelManifest, SamplerName } from "@imagegen/formats/manifest";
import { DdimSampler } from "./ddim.ts";
import { LcmSampler } from "./lcm.ts";
import { RectifiedFlowSampler } from "./rectified-flow.ts";
import { samplerFromSchedulerConfig } from "./scheduler-config.ts";
import { SamplerMismatchError, type Sampler } from "./types.ts";

export function createSampler(
  name: SamplerName,
  manifest: Pick<ModelManifest, "name" | "prediction_type" | "samplers" | "scheduler" | "scheduler_config">,
  options: { force?: boolean } = {},
): Sampler {
  // Forcing swaps the prediction type for one the sampler accepts, so the arithmetic runs on whatever comes out.
  const predictionType = options.force ? (name === "rectified-flow" ? "flow" : "epsilon") : manifest.prediction_type;
  if (!options.force && !manifest.samplers.includes(name)) {
    throw new SamplerMismatchError(
      `model ${manifest.name} does not support sampler ${name} (prediction type ${manifest.prediction_type}; supported: ${manifest.samplers.join(", ")})`,
    );
  }
  try {
    // An imported model keeps its export's scheduler_config.json: every sampler reads it as diffusers' from_config would.
    if (manifest.scheduler_config)
      return samplerFromSchedulerConfig(manifest.scheduler_config, { sampler: name, predictionType });
    switch (name) {
      case "ddim":
        return new DdimSampler(manifest.scheduler, predictionType);
      case "lcm":
        return new LcmSampler(manifest.scheduler, predictionType);
      case "rectified-flow":
        return new RectifiedFlowSampler(predictionType);
      default:
        // The diffusers samplers read the manifest's training schedule as diffusers would read scheduler_config.json.
        return samplerFromSchedulerConfig(
          { ...manifest.scheduler, clip_sample: false },
          { sampler: name, predictionType },
        );
    }
  } catch (err) {
    if (err instanceof SamplerMismatchError) {
      throw new SamplerMismatchError(`model ${manifest.name}: ${err.message}`);
    }
    throw err;
  }
}

export {
  SCHEDULER_CLASSES,
  samplerFromSchedulerConfig,
  type DiffusersSchedulerConfig,
  type SchedulerOverrides,
} from "./scheduler-config.ts";
export { SamplerMismatchError, type NoiseSource, type Sampler, type StepResult } from "./types.ts";
