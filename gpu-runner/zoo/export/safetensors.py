"""LoRA add-ons as .safetensors (written by hand: no Python safetensors package), in the kohya and PEFT key
conventions."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import torch


def save_safetensors(path, tensors: dict, metadata: dict | None = None):
    header = {}
    blobs = []
    off = 0
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        if t.dtype == torch.float16:
            dt, b = "F16", t.numpy().tobytes()
        else:
            t = t.float()
            dt, b = "F32", t.numpy().astype("<f4").tobytes()
        header[k] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        buf = f.read()
    meta = header.pop("__metadata__", {})
    out = {}
    for k, v in header.items():
        a, b = v["data_offsets"]
        dt = {"F32": np.float32, "F16": np.float16}[v["dtype"]]
        out[k] = torch.from_numpy(np.frombuffer(buf[a:b], dtype=dt).reshape(v["shape"]).copy()).float()
    return out, meta


def kohya_key(path):
    return "lora_unet_" + path.replace(".", "_")


def file_shapes(lora: dict, unet):
    """lora: path -> (down [r, down_features], up [out, r]) as trained and fed to the graph -> the shapes a LoRA
    file stores: a conv3x3 target's down as the 3x3 kernel [r, in, 3, 3] and its up as [out, r, 1, 1] (kohya LoCon,
    PEFT Conv2d); linear targets unchanged."""
    kinds = {t["path"]: t for t in unet.lora_target_info()}
    out = {}
    for p, (d, u) in lora.items():
        if kinds[p]["kind"] == "conv3x3":
            d, u = d.reshape(d.shape[0], kinds[p]["in_features"], 3, 3), u.reshape(u.shape[0], u.shape[1], 1, 1)
        out[p] = (d, u)
    return out


def lora_to_kohya(lora: dict, alpha: float, unet):
    """lora: path -> (down [r, down_features], up [out, r]) -> kohya tensors."""
    out = {}
    for p, (d, u) in file_shapes(lora, unet).items():
        k = kohya_key(p)
        out[f"{k}.lora_down.weight"] = d
        out[f"{k}.lora_up.weight"] = u
        out[f"{k}.alpha"] = torch.tensor(float(alpha))
    return out


def lora_to_peft(lora: dict, unet):
    out = {}
    for p, (d, u) in file_shapes(lora, unet).items():
        out[f"unet.{p}.lora_A.weight"] = d
        out[f"unet.{p}.lora_B.weight"] = u
    return out
