"""Reference trajectories of diffusers' schedulers for the runner's samplers (gpu-runner/src/samplers/).

For each case below: build the scheduler from its config, set_timesteps(steps), then from a seeded random
sample run every step on a seeded random model_output, feeding the next step the scheduler's own prev_sample.
Writes gpu-runner/test/fixtures/sd-refs/schedulers/<case>.safetensors with the config in the metadata and
  timesteps [S], sigmas [S+1] (sigma schedulers), input_scale [S] (scale_model_input on ones),
  init_sample [N], model_output [S, N], prev_sample [S, N], denoised [S, N] (where the scheduler returns one),
  noise [S, N] (what ancestral / LCM steps drew from the generator).

Run: HF_HUB_OFFLINE=1 gpu-runner/sd-fixtures/.venv/bin/python gpu-runner/sd-fixtures/scheduler_refs.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers
import torch
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parents[1] / "test" / "fixtures" / "sd-refs" / "schedulers"
SHAPE = (1, 4, 4, 4)

SD15 = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
SD15_PNDM = {**SD15, "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False, "timestep_spacing": "leading"}
SD2V = {**SD15_PNDM, "prediction_type": "v_prediction"}
LINEAR = {"num_train_timesteps": 1000, "beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}

# name: (class, config, steps)
CASES = {
    "ddim-sd15-leading-20": ("DDIMScheduler", SD15_PNDM, 20),
    "ddim-sd15-leading-4": ("DDIMScheduler", SD15_PNDM, 4),
    "ddim-sd2v-leading-20": ("DDIMScheduler", SD2V, 20),
    "ddim-trailing-1": (
        "DDIMScheduler",
        {**SD15, "timestep_spacing": "trailing", "set_alpha_to_one": True, "clip_sample": False},
        1,
    ),
    "ddim-linspace-sample-4": (
        "DDIMScheduler",
        {**LINEAR, "timestep_spacing": "linspace", "prediction_type": "sample", "clip_sample": False},
        4,
    ),
    "ddim-zero-snr-v-trailing-4": (
        "DDIMScheduler",
        {**SD2V, "timestep_spacing": "trailing", "rescale_betas_zero_snr": True},
        4,
    ),
    "euler-sd15-linspace-20": ("EulerDiscreteScheduler", SD15_PNDM | {"timestep_spacing": "linspace"}, 20),
    "euler-sd15-leading-4": ("EulerDiscreteScheduler", SD15_PNDM, 4),
    "euler-karras-v-20": (
        "EulerDiscreteScheduler",
        {**SD2V, "use_karras_sigmas": True, "timestep_spacing": "linspace"},
        20,
    ),
    "euler-trailing-1": ("EulerDiscreteScheduler", {**SD15, "timestep_spacing": "trailing"}, 1),
    "euler-a-sd15-linspace-20": ("EulerAncestralDiscreteScheduler", SD15_PNDM | {"timestep_spacing": "linspace"}, 20),
    "euler-a-v-leading-4": ("EulerAncestralDiscreteScheduler", SD2V, 4),
    "dpmpp2m-sd15-20": ("DPMSolverMultistepScheduler", SD15_PNDM | {"timestep_spacing": "linspace"}, 20),
    "dpmpp2m-karras-20": (
        "DPMSolverMultistepScheduler",
        {**SD15_PNDM, "use_karras_sigmas": True, "timestep_spacing": "linspace"},
        20,
    ),
    "dpmpp2m-karras-v-leading-4": ("DPMSolverMultistepScheduler", {**SD2V, "use_karras_sigmas": True}, 4),
    "dpmpp2m-trailing-1": ("DPMSolverMultistepScheduler", {**SD15, "timestep_spacing": "trailing"}, 1),
    "dpmpp2m-no-lower-final-8": (
        "DPMSolverMultistepScheduler",
        {**LINEAR, "lower_order_final": False, "final_sigmas_type": "sigma_min"},
        8,
    ),
    "lcm-4": ("LCMScheduler", {**SD15, "steps_offset": 1, "timestep_spacing": "leading"}, 4),
    "lcm-v-1": ("LCMScheduler", {**SD15, "prediction_type": "v_prediction"}, 1),
}


def run_case(cls_name: str, config: dict, steps: int, seed: int) -> tuple[dict[str, torch.Tensor], dict]:
    scheduler = getattr(diffusers, cls_name).from_config(config)
    scheduler.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.tensor(SHAPE).prod())
    sample = torch.randn(SHAPE, generator=gen) * float(scheduler.init_noise_sigma)
    out: dict[str, list[torch.Tensor]] = {
        "model_output": [],
        "prev_sample": [],
        "denoised": [],
        "noise": [],
        "input_scale": [],
    }
    init = sample.clone()
    step_gen = torch.Generator().manual_seed(seed + 1)
    for t in scheduler.timesteps:
        scaled = scheduler.scale_model_input(torch.ones(SHAPE), t)
        out["input_scale"].append(scaled.flatten()[0:1])
        model_output = torch.randn(SHAPE, generator=gen)
        state = step_gen.get_state()
        out["noise"].append(torch.randn(SHAPE, generator=step_gen).flatten())  # what a stochastic step draws next
        step_gen.set_state(state)
        kwargs = {"generator": step_gen} if "generator" in scheduler.step.__code__.co_varnames else {}
        res = scheduler.step(model_output, t, sample, **kwargs)
        out["model_output"].append(model_output.flatten())
        out["prev_sample"].append(res.prev_sample.flatten())
        denoised = getattr(res, "pred_original_sample", None)
        if denoised is None:
            denoised = getattr(res, "denoised", None)
        if denoised is not None:
            out["denoised"].append(denoised.flatten())
        sample = res.prev_sample
    tensors = {
        "timesteps": scheduler.timesteps.to(torch.float32),  # exact: int64 ≤ 1000 or float32 already
        "init_sample": init.flatten(),
        "input_scale": torch.cat(out["input_scale"]),
        "init_noise_sigma": torch.tensor([float(scheduler.init_noise_sigma)]),
    }
    if getattr(scheduler, "sigmas", None) is not None and cls_name not in ("DDIMScheduler", "LCMScheduler"):
        tensors["sigmas"] = scheduler.sigmas.to(torch.float32)
    if cls_name not in ("EulerAncestralDiscreteScheduler", "LCMScheduler"):
        out["noise"] = []  # deterministic steps draw nothing
    for key in ("model_output", "prev_sample", "denoised", "noise"):
        if out[key]:
            tensors[key] = torch.stack(out[key]).to(torch.float32).contiguous()
    assert tensors["model_output"].shape[1] == n
    return tensors, dict(scheduler.config)


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    for i, (name, (cls_name, config, steps)) in enumerate(CASES.items()):
        tensors, full = run_case(cls_name, {"_class_name": cls_name, **config}, steps, seed=1000 + i)
        meta = {
            "class_name": cls_name,
            "config": json.dumps({"_class_name": cls_name, **config}),
            "steps": str(steps),
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
        }
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(OUT / f"{name}.safetensors"), metadata=meta)
        print(f"{name}: timesteps {tensors['timesteps'].tolist()[:6]}…")


if __name__ == "__main__":
    main()
