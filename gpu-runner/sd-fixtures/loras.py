"""Random LoRA files in the formats users bring: kohya (`lora_unet_…`, `lora_te_…`) and PEFT/diffusers (`unet.….lora_A`).

The weights are random but sized so that each LoRA visibly changes the output (a low-rank delta of roughly a quarter
of the base weight's magnitude), and `alpha` differs from the rank so that a reader which ignores `alpha` fails.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import torch

# diffusers module-path suffixes that kohya's LoRA trainer targets in the U-Net's transformer blocks.
UNET_ATTN_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
# LCM-LoRA also adapts the ResNets (3×3 convs) and their time-embedding projections.
UNET_RESNET_TARGETS = ("conv1", "conv2", "conv_shortcut", "time_emb_proj")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _targets(model: torch.nn.Module, suffixes: tuple[str, ...]) -> list[tuple[str, torch.nn.Module]]:
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        if any(name == s or name.endswith("." + s) for s in suffixes):
            found.append((name, module))
    return found


def _pair(module: torch.nn.Module, rank: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(down, up) with kohya's shapes: Linear [r,in] / [out,r]; Conv [r,in,kh,kw] / [out,r,1,1]."""
    if isinstance(module, torch.nn.Conv2d):
        kh, kw = module.kernel_size
        fan_in = module.in_channels * kh * kw
        down = torch.randn(rank, module.in_channels, kh, kw, generator=gen) / math.sqrt(fan_in)
        up = torch.randn(module.out_channels, rank, 1, 1, generator=gen) * (0.6 / math.sqrt(rank))
    else:
        down = torch.randn(rank, module.in_features, generator=gen) / math.sqrt(module.in_features)
        up = torch.randn(module.out_features, rank, generator=gen) * (0.6 / math.sqrt(rank))
    return down, up


def kohya_lora(
    parts: dict[str, torch.nn.Module],
    suffixes: dict[str, tuple[str, ...]],
    rank: int,
    alpha: float,
    seed: int,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """`parts` maps a kohya prefix (`lora_unet`, `lora_te`, `lora_te1`, `lora_te2`) to the module it adapts."""
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, model in parts.items():
        for name, module in _targets(model, suffixes[prefix]):
            key = f"{prefix}_{name.replace('.', '_')}"
            down, up = _pair(module, rank, gen)
            tensors[f"{key}.lora_down.weight"] = down.to(dtype).contiguous()
            tensors[f"{key}.lora_up.weight"] = up.to(dtype).contiguous()
            tensors[f"{key}.alpha"] = torch.tensor(alpha, dtype=dtype)
    return tensors


def peft_lora(parts: dict[str, torch.nn.Module], suffixes: dict[str, tuple[str, ...]], rank: int, seed: int):
    """diffusers' own serialisation (`unet.<path>.lora_A.weight`): no alpha, so diffusers takes alpha = rank."""
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, model in parts.items():
        for name, module in _targets(model, suffixes[prefix]):
            down, up = _pair(module, rank, gen)
            tensors[f"{prefix}.{name}.lora_A.weight"] = down.contiguous()
            tensors[f"{prefix}.{name}.lora_B.weight"] = up.contiguous()
    return tensors


def kohya_metadata(rank: int, alpha: float) -> dict[str, str]:
    return {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha)}


def write(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """safetensors' writer orders `__metadata__` keys by a hash map (different each run); this writes the same
    format with sorted keys so that reruns are byte-identical."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    blobs, offset = [], 0
    for name, t in sorted(tensors.items()):
        blob = t.contiguous().numpy().tobytes()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


_DTYPES = {torch.float32: "F32", torch.float16: "F16"}


def loras_for(family_name: str, pipe) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, str] | None]]:
    """File name → (tensors, metadata) for one family."""
    out = {}
    if family_name == "sdxl":
        parts = {"lora_unet": pipe.unet, "lora_te1": pipe.text_encoder, "lora_te2": pipe.text_encoder_2}
    else:
        parts = {"lora_unet": pipe.unet, "lora_te": pipe.text_encoder}
    style_suffixes = {p: (UNET_ATTN_TARGETS if p == "lora_unet" else TEXT_TARGETS) for p in parts}
    # Saved in fp16, as kohya's trainer does by default (save_precision fp16).
    out["style_kohya.safetensors"] = (
        kohya_lora(parts, style_suffixes, rank=4, alpha=2.0, seed=100, dtype=torch.float16),
        kohya_metadata(4, 2.0),
    )
    if family_name == "sd15":
        lcm_suffixes = {"lora_unet": UNET_ATTN_TARGETS + UNET_RESNET_TARGETS}
        out["lcm_lora_kohya.safetensors"] = (
            kohya_lora({"lora_unet": pipe.unet}, lcm_suffixes, rank=8, alpha=8.0, seed=200, dtype=torch.float16),
            kohya_metadata(8, 8.0),
        )
        peft_parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
        peft_suffixes = {"unet": ("to_q", "to_k", "to_v", "to_out.0"), "text_encoder": ("q_proj", "v_proj")}
        out["subject_peft.safetensors"] = (peft_lora(peft_parts, peft_suffixes, rank=4, seed=300), None)
    return out
