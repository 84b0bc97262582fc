/**
 * Builds a sampler from an export's `scheduler/scheduler_config.json`, as diffusers' `XScheduler.from_config`
 * does when a user swaps the scheduler: the training schedule and every option the chosen scheduler knows come
 * from the file, the rest take that scheduler's diffusers defaults. Options whose arithmetic is not implemented
 * are refused by name rather than ignored.
 */
import type { PredictionType, SamplerName } from "@imagegen/formats/manifest";
import { DdimSampler } from "./ddim.ts";
import { DpmSolverPlusPlusSampler } from "./dpm-solver-pp.ts";
import { EulerAncestralSampler } from "./euler-ancestral.ts";
import { EulerSampler } from "./euler.ts";
import { LcmSampler } from "./lcm.ts";
import type { TimestepSpacing, TrainingSchedule } from "./noise-schedule.ts";
import { RectifiedFlowSampler } from "./rectified-flow.ts";
import { SamplerMismatchError, type Sampler } from "./types.ts";

/** The fields of a diffusers scheduler config the samplers read; others are ignored. */
export interface DiffusersSchedulerConfig {
  _class_name?: string;
  num_train_timesteps?: number;
  beta_start?: number;
  beta_end?: number;
  beta_schedule?: string;
  trained_betas?: number[] | null;
  prediction_type?: string;
  timestep_spacing?: string;
  steps_offset?: number;
  set_alpha_to_one?: boolean;
  clip_sample?: boolean;
  thresholding?: boolean;
  rescale_betas_zero_snr?: boolean;
  use_karras_sigmas?: boolean;
  use_exponential_sigmas?: boolean;
  use_beta_sigmas?: boolean;
  use_lu_lambdas?: boolean;
  interpolation_type?: string;
  timestep_type?: string;
  final_sigmas_type?: string;
  algorithm_type?: string;
  solver_order?: number;
  solver_type?: string;
  lower_order_final?: boolean;
  euler_at_final?: boolean;
  original_inference_steps?: number;
  timestep_scaling?: number;
  [key: string]: unknown;
}

/** diffusers scheduler classes and the sampler each one is. */
export const SCHEDULER_CLASSES: Readonly<Record<string, SamplerName>> = {
  DDIMScheduler: "ddim",
  EulerDiscreteScheduler: "euler",
  EulerAncestralDiscreteScheduler: "euler-a",
  DPMSolverMultistepScheduler: "dpm++2m",
  LCMScheduler: "lcm",
};

export interface SchedulerOverrides {
  /** The sampler a request named; without it the config's `_class_name` decides. */
  sampler?: SamplerName;
  /** The model's prediction type when the manifest states it (it wins over the config's). */
  predictionType?: PredictionType;
}

export function samplerFromSchedulerConfig(
  config: DiffusersSchedulerConfig,
  overrides: SchedulerOverrides = {},
): Sampler {
  const name = overrides.sampler ?? classSampler(config._class_name);
  const karras =
    name === "dpm++2m-karras" ? true : name === "dpm++2m" && !overrides.sampler ? !!config.use_karras_sigmas : false;
  const prediction = (overrides.predictionType ?? config.prediction_type ?? "epsilon") as PredictionType | "sample";
  if (!["epsilon", "v_prediction", "sample", "flow"].includes(prediction))
    throw unsupported("prediction_type", prediction);
  refuse(config, "thresholding", true);
  refuse(config, "use_exponential_sigmas", true);
  refuse(config, "use_beta_sigmas", true);
  refuse(config, "use_lu_lambdas", true);
  if (config.trained_betas) throw unsupported("trained_betas", "a list");
  if (config.interpolation_type && config.interpolation_type !== "linear")
    throw unsupported("interpolation_type", config.interpolation_type);
  if (config.timestep_type && config.timestep_type !== "discrete")
    throw unsupported("timestep_type", config.timestep_type);

  const spacing = (dflt: TimestepSpacing): TimestepSpacing => {
    const s = config.timestep_spacing ?? dflt;
    if (s !== "leading" && s !== "trailing" && s !== "linspace") throw unsupported("timestep_spacing", s);
    return s;
  };
  const finalSigmas = (): "zero" | "sigma_min" => {
    const f = config.final_sigmas_type ?? "zero";
    if (f !== "zero" && f !== "sigma_min") throw unsupported("final_sigmas_type", f);
    return f;
  };
  const schedule = (dflt: Pick<TrainingSchedule, "beta_start" | "beta_end" | "beta_schedule">): TrainingSchedule => {
    const betaSchedule = config.beta_schedule ?? dflt.beta_schedule;
    if (betaSchedule !== "linear" && betaSchedule !== "scaled_linear") throw unsupported("beta_schedule", betaSchedule);
    return {
      num_train_timesteps: config.num_train_timesteps ?? 1000,
      beta_start: config.beta_start ?? dflt.beta_start,
      beta_end: config.beta_end ?? dflt.beta_end,
      beta_schedule: betaSchedule,
      rescale_betas_zero_snr: !!config.rescale_betas_zero_snr,
      float32: true,
    };
  };
  // Each scheduler's own diffusers defaults (`__init__`), for keys the file does not set.
  const ddpm = { beta_start: 0.0001, beta_end: 0.02, beta_schedule: "linear" } as const;
  const offset = config.steps_offset ?? 0;

  switch (name) {
    case "ddim":
      if (config.clip_sample ?? true) throw unsupported("clip_sample", true); // DDIM's default is to clip
      return new DdimSampler(schedule(ddpm), prediction, {
        timestepSpacing: spacing("leading"),
        stepsOffset: offset,
        setAlphaToOne: config.set_alpha_to_one ?? true,
      });
    case "euler":
      return new EulerSampler(schedule(ddpm), prediction, {
        timestepSpacing: spacing("linspace"),
        stepsOffset: offset,
        useKarrasSigmas: !!config.use_karras_sigmas,
        finalSigmasType: finalSigmas(),
      });
    case "euler-a":
      return new EulerAncestralSampler(schedule(ddpm), prediction, {
        timestepSpacing: spacing("linspace"),
        stepsOffset: offset,
      });
    case "dpm++2m":
    case "dpm++2m-karras": {
      const algorithm = config.algorithm_type ?? "dpmsolver++";
      if (algorithm !== "dpmsolver++") throw unsupported("algorithm_type", algorithm);
      const order = config.solver_order ?? 2;
      if (order !== 1 && order !== 2) throw unsupported("solver_order", order);
      const solverType = config.solver_type ?? "midpoint";
      if (solverType !== "midpoint" && solverType !== "heun") throw unsupported("solver_type", solverType);
      return new DpmSolverPlusPlusSampler(schedule(ddpm), prediction, {
        timestepSpacing: spacing("linspace"),
        stepsOffset: offset,
        useKarrasSigmas: karras,
        solverOrder: order,
        solverType,
        lowerOrderFinal: config.lower_order_final ?? true,
        eulerAtFinal: !!config.euler_at_final,
        finalSigmasType: finalSigmas(),
      });
    }
    case "lcm":
      refuse(config, "clip_sample", true);
      return new LcmSampler(
        {
          ...schedule({ beta_start: 0.00085, beta_end: 0.012, beta_schedule: "scaled_linear" }),
          original_inference_steps: config.original_inference_steps ?? 50,
          timestep_scaling: config.timestep_scaling ?? 10,
        },
        prediction,
      );
    case "rectified-flow":
      return new RectifiedFlowSampler(prediction === "sample" ? "epsilon" : prediction);
  }
}

function classSampler(className: string | undefined): SamplerName {
  const name = className === undefined ? undefined : SCHEDULER_CLASSES[className];
  if (name === undefined) {
    throw new SamplerMismatchError(
      `scheduler class ${className ?? "(none)"} is not supported; supported: ${Object.keys(SCHEDULER_CLASSES).join(", ")} (or name a sampler in the request)`,
    );
  }
  return name;
}

function unsupported(key: string, value: unknown): SamplerMismatchError {
  return new SamplerMismatchError(`scheduler_config ${key} = ${JSON.stringify(value)} is not supported`);
}

function refuse(config: DiffusersSchedulerConfig, key: keyof DiffusersSchedulerConfig, value: unknown): void {
  if (config[key] === value) throw unsupported(key as string, value);
}
