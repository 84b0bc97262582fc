/**
 * Rectified-flow Euler sampling (InstaFlow's `pipeline_rf.py`): noise at ODE time 0, image at time 1, the network
 * predicts the velocity from noise to image. N steps feed t_i = (1 − i/N)·1000 and move x ← x + v/N; one step
 * is InstaFlow's x0 = z + v(z, 1000).
 */
import type { PredictionType } from "@imagegen/formats/manifest";
import { SamplerMismatchError, type Sampler, type StepResult } from "./types.ts";

export function rectifiedFlowTimesteps(steps: number, timeScale = 1000): number[] {
  if (!Number.isInteger(steps) || steps < 1)
    throw new RangeError(`rectified-flow: steps must be an integer ≥ 1, got ${steps}`);
  return Array.from({ length: steps }, (_, i) => (1 - i / steps) * timeScale);
}

export class RectifiedFlowSampler implements Sampler {
  readonly name = "rectified-flow" as const;
  readonly predictionTypes: readonly PredictionType[] = ["flow"];
  readonly classifierFreeGuidance = true;
  readonly initNoiseSigma = 1;
  timesteps: readonly number[] = [];

  constructor(predictionType: PredictionType) {
    if (predictionType !== "flow") {
      throw new SamplerMismatchError(`rectified-flow needs a flow (velocity) model, not ${predictionType}`);
    }
  }

  setTimesteps(steps: number): void {
    this.timesteps = rectifiedFlowTimesteps(steps);
  }

  scaleModelInput(sample: Float32Array): Float32Array {
    return sample;
  }

  step(velocity: Float32Array, stepIndex: number, sample: Float32Array): StepResult {
    const n = this.timesteps.length;
    if (stepIndex < 0 || stepIndex >= n)
      throw new RangeError(`rectified-flow: step ${stepIndex} outside ${n} timesteps`);
    const prev = new Float32Array(sample.length);
    const dt = 1 / n;
    for (let i = 0; i < prev.length; i++) prev[i] = sample[i]! + velocity[i]! * dt;
    // Straight paths: the clean estimate is where the current velocity reaches at time 1.
    const remaining = 1 - stepIndex / n;
    const denoised = new Float32Array(sample.length);
    for (let i = 0; i < denoised.length; i++) denoised[i] = sample[i]! + velocity[i]! * remaining;
    return { prevSample: prev, denoised };
  }
}
