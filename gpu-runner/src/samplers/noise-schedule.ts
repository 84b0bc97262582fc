/**
 * The discrete training noise schedule shared by DDIM and LCM (diffusers' `alphas_cumprod`), computed in float64
 * once per sampler.
 */
import type { SchedulerSpec } from "../pipeline/manifest.ts";

export function alphasCumprod(spec: SchedulerSpec): Float64Array {
  const n = spec.num_train_timesteps;
  const out = new Float64Array(n);
  let product = 1;
  for (let i = 0; i < n; i++) {
    const f = n === 1 ? 0 : i / (n - 1);
    // scaled_linear is linear in √β (the Stable Diffusion convention); linear is linear in β.
    const beta =
      spec.beta_schedule === "scaled_linear"
        ? (Math.sqrt(spec.beta_start) + f * (Math.sqrt(spec.beta_end) - Math.sqrt(spec.beta_start))) ** 2
        : spec.beta_start + f * (spec.beta_end - spec.beta_start);
    product *= 1 - beta;
    out[i] = product;
  }
  return out;
}

/** The model's clean-latent estimate x0 and noise estimate ε from its output, for epsilon or v prediction. */
export function predictOriginal(
  predictionType: "epsilon" | "v_prediction",
  modelOutput: Float32Array,
  sample: Float32Array,
  alphaProd: number,
): { x0: Float32Array; eps: Float32Array } {
  const a = Math.sqrt(alphaProd);
  const b = Math.sqrt(1 - alphaProd);
  const x0 = new Float32Array(sample.length);
  const eps = new Float32Array(sample.length);
  for (let i = 0; i < sample.length; i++) {
    const x = sample[i]!;
    const m = modelOutput[i]!;
    if (predictionType === "epsilon") {
      x0[i] = (x - b * m) / a;
      eps[i] = m;
    } else {
      x0[i] = a * x - b * m;
      eps[i] = a * m + b * x;
    }
  }
  return { x0, eps };
}
