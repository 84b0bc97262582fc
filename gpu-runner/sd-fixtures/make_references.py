"""diffusers (PyTorch) reference outputs for the exported fixtures, and optimum's ONNX Runtime pipeline checked
against them (REFERENCES.md).

Each reference is `<family>/reference/<case>.safetensors`; tensors are named after the ONNX inputs and outputs they
correspond to (see README.md), and `__metadata__["settings"]` holds the run's settings as JSON.
Run through make_fixtures.py, or alone once out/ and the exports exist: `.venv/bin/python make_references.py sd15`.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import families  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "test" / "fixtures" / "sd"
OUT = HERE / "out"
LATENT_SEED = 1234  # initial latents: torch.randn(1, 4, 8, 8, generator=manual_seed(LATENT_SEED))
NOISE_SEED = 99  # generator for the noise LCMScheduler injects between steps (recorded as noise.<i>)


@dataclass(frozen=True)
class Case:
    name: str
    scheduler: str  # diffusers class, built with from_config(the export's scheduler_config.json)
    steps: int
    guidance: float
    loras: tuple[tuple[str, str, float], ...] = ()  # (file in loras/, adapter name, scale)


@dataclass(frozen=True)
class Settings:
    prompt: str
    negative_prompt: str | None
    cases: list[Case] = field(default_factory=list)


def _lora_cases(scheduler: str, steps: int, guidance: float, half_scale: bool = False) -> list[Case]:
    cases = [
        Case("base", scheduler, steps, guidance),
        Case("style_1.0", scheduler, steps, guidance, (("style_kohya.safetensors", "style", 1.0),)),
    ]
    if half_scale:  # scale handling is family-independent: checked where there are one and two text encoders
        cases.append(Case("style_0.5", scheduler, steps, guidance, (("style_kohya.safetensors", "style", 0.5),)))
    return cases


SETTINGS: dict[str, Settings] = {
    "sd15": Settings(
        "a watercolor painting of a red fox at sunset, highly detailed",
        "blurry, low quality, watermark",
        _lora_cases("DDIMScheduler", 4, 5.0, half_scale=True)
        + [
            Case("subject_peft_1.0", "DDIMScheduler", 4, 5.0, (("subject_peft.safetensors", "subject", 1.0),)),
            # LCM-LoRA stacked with a style LoRA, as users run it: LCMScheduler, 4 steps, no CFG.
            Case(
                "lcm_lora_style",
                "LCMScheduler",
                4,
                1.0,
                (("lcm_lora_kohya.safetensors", "lcm", 1.0), ("style_kohya.safetensors", "style", 0.8)),
            ),
        ],
    ),
    "sd2v": Settings(
        "a photograph of a lighthouse by the sea, golden hour",
        "ugly, jpeg artifacts",
        _lora_cases("EulerDiscreteScheduler", 4, 5.0),
    ),
    # LCM distils guidance into timestep_cond: one U-Net pass per step, no negative prompt.
    "lcm": Settings("an astronaut in a garden, digital art, sharp focus", None, _lora_cases("LCMScheduler", 4, 8.0)),
    "sdxl": Settings(
        "a castle under a starry sky, cinematic, 35mm film",
        "blurry, text",
        _lora_cases("EulerDiscreteScheduler", 3, 5.0, half_scale=True),
    ),
    "turbo": Settings(
        "a cup of coffee on a foggy morning, photograph", None, _lora_cases("EulerDiscreteScheduler", 2, 0.0)
    ),
}

# ORT-vs-PyTorch checks: (export folder, family whose base reference it must reproduce).
ORT_CHECKS = [("sd15", "sd15"), ("sd2v", "sd2v"), ("lcm", "lcm"), ("sdxl", "sdxl"), ("turbo", "turbo")]


def initial_latents() -> torch.Tensor:
    size = families.IMAGE_SIZE // 8
    return torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(LATENT_SEED))


def _first(out):
    if isinstance(out, (tuple, list)):
        return out[0]
    return getattr(out, "sample", out)


def _f32(t) -> torch.Tensor:
    t = torch.as_tensor(t) if not isinstance(t, torch.Tensor) else t
    # always a copy: without CFG the U-Net's input *is* the previous step's latents, and safetensors refuses shared storage
    return t.detach().to(torch.float32).cpu().clone().contiguous()


def run(pipe, settings: Settings, case: Case) -> dict[str, torch.Tensor]:
    """Runs `pipe` once and records what the ONNX side needs to match, stage by stage."""
    import diffusers
    import diffusers.schedulers.scheduling_lcm as scheduling_lcm

    pipe.scheduler = getattr(diffusers, case.scheduler).from_config(pipe.scheduler.config)
    rec: dict[str, torch.Tensor] = {}
    unet_calls: list[dict] = []
    unet_forward, vae_decode, lcm_randn = pipe.unet.forward, pipe.vae.decode, scheduling_lcm.randn_tensor
    noises: list[torch.Tensor] = []

    def unet(sample, timestep, encoder_hidden_states=None, *args, **kwargs):
        out = unet_forward(sample, timestep, encoder_hidden_states, *args, **kwargs)
        unet_calls.append(
            dict(
                sample=sample,
                timestep=timestep,
                encoder_hidden_states=encoder_hidden_states,
                timestep_cond=kwargs.get("timestep_cond"),
                added=kwargs.get("added_cond_kwargs"),
                out=_first(out),
            )
        )
        return out

    def decode(z, *args, **kwargs):
        rec["vae_decoder.latent_sample"] = _f32(z)
        return vae_decode(z, *args, **kwargs)

    def randn(*args, **kwargs):
        noises.append(lcm_randn(*args, **kwargs))
        return noises[-1]

    steps: list[dict[str, torch.Tensor]] = []

    def on_step_end(_pipe, i, t, kw):
        steps.append({k: _f32(v) for k, v in kw.items()})
        return {}

    call = inspect.signature(pipe.__call__).parameters
    kwargs = dict(
        prompt=settings.prompt,
        num_inference_steps=case.steps,
        guidance_scale=case.guidance,
        height=families.IMAGE_SIZE,
        width=families.IMAGE_SIZE,
        latents=initial_latents(),
        generator=torch.Generator().manual_seed(NOISE_SEED),
        output_type="np",
        callback_on_step_end=on_step_end,
        callback_on_step_end_tensor_inputs=["latents", "denoised"]
        if "denoised" in pipe._callback_tensor_inputs
        else ["latents"],
    )
    if "negative_prompt" in call and settings.negative_prompt is not None and case.guidance > 1:
        kwargs["negative_prompt"] = settings.negative_prompt
    pipe.unet.forward, pipe.vae.decode, scheduling_lcm.randn_tensor = unet, decode, randn
    try:
        with torch.no_grad():
            image = pipe(**kwargs).images
    finally:
        pipe.unet.forward, pipe.vae.decode, scheduling_lcm.randn_tensor = unet_forward, vae_decode, lcm_randn

    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if getattr(pipe, "tokenizer_2", None) else [])
    for n, tok in enumerate(tokenizers):
        suffix = "" if n == 0 else f"_{n + 1}"
        texts = [("input_ids", settings.prompt)]
        if "negative_prompt" in kwargs:
            texts.append(("negative_input_ids", settings.negative_prompt))
        for name, text in texts:
            ids = tok(
                text, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids
            rec[name + suffix] = ids.to(torch.int64)
    first = unet_calls[0]
    rec["unet.encoder_hidden_states"] = _f32(first["encoder_hidden_states"])
    if first["timestep_cond"] is not None:
        rec["unet.timestep_cond"] = _f32(first["timestep_cond"])
    if first["added"]:
        rec["unet.text_embeds"] = _f32(first["added"]["text_embeds"])
        rec["unet.time_ids"] = _f32(first["added"]["time_ids"])
    rec["initial_latents"] = initial_latents()
    rec["init_noise_sigma"] = torch.tensor([float(pipe.scheduler.init_noise_sigma)])
    rec["timesteps"] = _f32(pipe.scheduler.timesteps)
    for i, c in enumerate(unet_calls):
        rec[f"unet.sample.{i}"] = _f32(c["sample"])
        rec[f"unet.timestep.{i}"] = _f32(c["timestep"]).reshape(-1)
        rec[f"unet.out_sample.{i}"] = _f32(c["out"])
    for i, s in enumerate(steps):
        rec[f"latents.{i}"] = s["latents"]
        if "denoised" in s:
            rec[f"denoised.{i}"] = s["denoised"]
    for i, n in enumerate(noises):
        rec[f"noise.{i}"] = _f32(n)
    rec["image"] = _f32(torch.from_numpy(np.ascontiguousarray(image)))
    return rec


def _pipeline(family: families.Family):
    import diffusers

    pipe = getattr(diffusers, family.pipeline).from_pretrained(OUT / "pt" / family.name)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_loras(pipe, family_name: str, case: Case) -> None:
    """The user's way: load_lora_weights per file, then set_adapters for the scales (U-Net and text encoders)."""
    if not case.loras:
        return
    for file, adapter, _ in case.loras:
        pipe.load_lora_weights(FIXTURES / family_name / "loras", weight_name=file, adapter_name=adapter)
        _check_all_keys_loaded(pipe, family_name, file, adapter)
    pipe.set_adapters([a for _, a, _ in case.loras], adapter_weights=[s for _, _, s in case.loras])


def _check_all_keys_loaded(pipe, family_name: str, file: str, adapter: str) -> None:
    """diffusers skips keys it cannot map with only a warning; every LoRA pair in the file must land on a layer."""
    from safetensors import safe_open

    with safe_open(str(FIXTURES / family_name / "loras" / file), "pt") as f:
        pairs = sum(1 for k in f.keys() if k.endswith((".lora_down.weight", ".lora_A.weight")))
    adapted = 0
    for part in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, part, None)
        if model is not None:
            adapted += sum(1 for _, m in model.named_modules() if adapter in getattr(m, "lora_A", {}))
    if adapted != pairs:
        raise RuntimeError(f"{family_name}/{file}: {pairs} LoRA pairs in the file, {adapted} layers adapted")


def _settings_json(family: families.Family, settings: Settings, case: Case, pipe) -> str:
    scheduler_config = {k: v for k, v in dict(pipe.scheduler.config).items() if not k.startswith("_")}
    return json.dumps(
        {
            "family": family.name,
            "case": case.name,
            "pipeline": family.pipeline,
            "prompt": settings.prompt,
            "negative_prompt": settings.negative_prompt if case.guidance > 1 else None,
            "scheduler": case.scheduler,
            "scheduler_config": scheduler_config,
            "steps": case.steps,
            "guidance_scale": case.guidance,
            "height": families.IMAGE_SIZE,
            "width": families.IMAGE_SIZE,
            "initial_latents": f"torch.randn(1, 4, {families.IMAGE_SIZE // 8}, {families.IMAGE_SIZE // 8}, "
            f"generator=torch.Generator().manual_seed({LATENT_SEED})), before × init_noise_sigma",
            "loras": [{"file": f, "adapter": a, "scale": s} for f, a, s in case.loras],
            "lora_loading": "pipe.load_lora_weights(loras/, weight_name=file, adapter_name=adapter); "
            "pipe.set_adapters(adapters, adapter_weights=scales)",
            "image": "output_type='np': (decoder sample / 2 + 0.5).clamp(0, 1), NHWC",
            "versions": {p: metadata.version(p) for p in ("diffusers", "transformers", "torch", "peft")},
        },
        sort_keys=True,
    )


def write_references(name: str) -> None:
    family, settings = families.FAMILIES[name], SETTINGS[name]
    dst = FIXTURES / name / "reference"
    dst.mkdir(parents=True, exist_ok=True)
    base_image = None
    for case in settings.cases:
        pipe = _pipeline(family)
        _load_loras(pipe, name, case)
        rec = run(pipe, settings, case)
        if base_image is None:
            base_image = rec["image"]
        elif (rec["image"] - base_image).abs().max() < 1e-3:
            raise RuntimeError(f"{name}/{case.name}: the LoRA does not change the image")
        save_file(
            dict(sorted(rec.items())),
            str(dst / f"{case.name}.safetensors"),
            metadata={"settings": _settings_json(family, settings, case, pipe)},
        )
        print(f"{name}/{case.name}: {len(rec)} tensors, image mean {rec['image'].mean():.4f}", flush=True)


def ort_check(folder: str, name: str) -> dict[str, float]:
    """optimum's ORT pipeline over the export, same latents and scheduler: max |diff| against the base reference."""
    from optimum.onnxruntime import ORTDiffusionPipeline
    from safetensors.torch import load_file

    ref = load_file(str(FIXTURES / name / "reference" / "base.safetensors"))
    pipe = ORTDiffusionPipeline.from_pretrained(FIXTURES / folder)
    pipe.set_progress_bar_config(disable=True)
    settings = SETTINGS[name]
    got = run(pipe, settings, settings.cases[0])
    keys = {"text states": "unet.encoder_hidden_states", "final latents": "vae_decoder.latent_sample", "image": "image"}
    diffs = {label: float((got[k] - ref[k]).abs().max()) for label, k in keys.items()}
    diffs["latents scale"] = float(ref["vae_decoder.latent_sample"].abs().max())
    return diffs


def write_table(rows: list[tuple[str, str, dict[str, float]]]) -> None:
    lines = [
        "# Reference outputs and what ONNX Runtime reaches",
        "",
        "Written by `gpu-runner/sd-fixtures/make_references.py`. Each `<family>/reference/<case>.safetensors` is a",
        "diffusers (PyTorch, fp32, CPU) run; `turbo/` is an fp16 export (external data) checked against fp32 PyTorch. The table is",
        "optimum's own ONNX Runtime pipeline (Python, CPU EP) over the committed export, with the same latents,",
        "scheduler and steps, against the `base` reference: a realistic tolerance for the runner.",
        "",
        "Final latents are compared as the VAE decoder's input (`vae_decoder.latent_sample`); the random U-Nets drive",
        "them far from N(0, 1), so their largest magnitude is given for scale.",
        "",
        "| export | reference | max abs diff: text states | final latents | image [0,1] | max abs final latents |",
        "|---|---|---|---|---|---|",
    ]
    for folder, name, d in rows:
        lines.append(
            f"| {folder} | {name}/base | {d['text states']:.2e} | {d['final latents']:.2e} "
            f"| {d['image']:.2e} | {d['latents scale']:.1f} |"
        )
    lines.append("")
    (FIXTURES / "REFERENCES.md").write_text("\n".join(lines))


def main(names: list[str]) -> None:
    for name in names:
        write_references(name)
    rows = []
    for folder, name in ORT_CHECKS:
        if name in names and (FIXTURES / folder).exists():
            diffs = ort_check(folder, name)
            print(f"ORT {folder} vs {name}/base: {diffs}", flush=True)
            rows.append((folder, name, diffs))
    if set(names) == set(SETTINGS):
        write_table(rows)


if __name__ == "__main__":
    main(sys.argv[1:] or list(SETTINGS))
