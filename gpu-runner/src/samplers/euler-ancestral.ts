/**
 * Euler ancestral (diffusers' `EulerAncestralDiscreteScheduler`): each Euler step goes down to σ_down and adds
 * fresh noise of σ_up, with σ_down² + σ_up² = σ_next², so the marginals match while the path is stochastic.
 */
import type { PredictionType } from "@imagegen/formats/manifest";
import { EulerSampler, sigmaPredictOriginal, type SigmaScheduleOptions } from "./euler.ts";
import type { TrainingSchedule } from "./noise-schedule.ts";
import { SamplerMismatchError, type NoiseSource, type StepResult } from "./types.ts";

export class EulerAncestralSampler extends EulerSampler {
  override readonly name = "euler-a" as const;

  constructor(
    spec: TrainingSchedule,
    predictionType: PredictionType | "sample",
    options: Omit<SigmaScheduleOptions, "useKarrasSigmas" | "finalSigmasType"> = {},
  ) {
    // diffusers implements neither a sample prediction nor Karras sigmas for this scheduler.
    if (predictionType === "sample") throw new SamplerMismatchError("euler-a has no update for sample prediction");
    super(spec, predictionType, { ...options, useKarrasSigmas: false, finalSigmasType: "zero" });
  }

  override step(modelOutput: Float32Array, stepIndex: number, sample: Float32Array, noise: NoiseSource): StepResult {
    const sigma = this.sigmaAt(stepIndex);
    const next = this.sigmas[stepIndex + 1]!;
    const denoised = sigmaPredictOriginal(this.predictionType, modelOutput, sample, sigma);
    const sigmaUp = Math.sqrt((next * next * (sigma * sigma - next * next)) / (sigma * sigma));
    const sigmaDown = Math.sqrt(next * next - sigmaUp * sigmaUp);
    // Drawn on every step, the last included (σ_up = 0 there), as diffusers does, so the stream stays aligned.
    const z = noise(sample.length);
    const prev = new Float32Array(sample.length);
    for (let i = 0; i < prev.length; i++) {
      prev[i] = sample[i]! + ((sample[i]! - denoised[i]!) / sigma) * (sigmaDown - sigma) + z[i]! * sigmaUp;
    }
    return { prevSample: prev, denoised };
  }
}
