"""Numeric parity of the exported ONNX files against PyTorch, through onnxruntime-node (tools/ort_run.cjs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import numpy as np
import torch

from zoo import data, models, paths
from zoo.export.graphs import BundleMismatch, example
from zoo.export.wrappers import FlatUNet, VAEDecoderWrap, VAEEncoderWrap, lora_names

# The LoRA ranks each parity check runs: 0 (no add-on; the graph pads a zero rank) and a real one.
RANKS = (0, 4)


def find_node():
    for n in ("node",):
        if shutil.which(n):
            return n
    return None


def ort_run(runs):
    """runs: list of (model_path, {name: tensor}) -> list of {name: np.ndarray}, or None without onnxruntime-node."""
    node = find_node()
    if node is None:
        return None
    tmp = tempfile.mkdtemp(prefix="ortchk")
    job = {"runs": []}
    for i, (model, feeds) in enumerate(runs):
        ins = {}
        for name, t in feeds.items():
            arr = t.detach().cpu().numpy()
            arr = arr.astype(np.int64 if arr.dtype.kind == "i" else np.float32)
            f = os.path.join(tmp, f"{i}.{name}.in")
            arr.tofile(f)
            ins[name] = dict(dtype="int64" if arr.dtype == np.int64 else "float32", shape=list(arr.shape), file=f)
        job["runs"].append(dict(model=model, inputs=ins, out=os.path.join(tmp, f"out{i}")))
    jp = os.path.join(tmp, "job.json")
    json.dump(job, open(jp, "w"))
    r = subprocess.run([node, os.path.join(paths.ZOO, "tools", "ort_run.cjs"), jp], capture_output=True, text=True)
    if r.returncode == 3:
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    if r.returncode != 0:
        raise RuntimeError("onnxruntime-node failed: " + r.stderr[-2000:])
    outs = []
    for i in range(len(runs)):
        meta = json.load(open(os.path.join(tmp, f"out{i}.json")))
        o = {}
        for name, m in meta.items():
            if name.startswith("__"):
                continue
            dt = np.float32 if m["type"] == "float32" else np.int64
            o[name] = np.fromfile(os.path.join(tmp, f"out{i}.{name}.bin"), dtype=dt).reshape(m["dims"])
        outs.append(o)
    shutil.rmtree(tmp, ignore_errors=True)
    return outs


@torch.no_grad()
def check_numerics(bundle, io, te, vae, gen, check_ort, log, split=True, vae_encoder=True):
    B = 3
    whole_in, _ = io.whole()
    res = {}
    for rank in RANKS:
        args = example(whole_in, B, rank, gen)
        feeds = dict(zip([n for n, _, _ in whole_in], args))
        ref = FlatUNet(io, "whole")(*args)
        if split:  # PyTorch: head -> deep -> tail == whole
            h = FlatUNet(io, "head")(*[feeds[n] for n, _, _ in io.head()[0]])
            feeds2 = dict(feeds, skip_0=h)
            feeds2["deep_feature"] = FlatUNet(io, "deep")(*[feeds2[n] for n, _, _ in io.deep()[0]])
            out = FlatUNet(io, "tail")(*[feeds2[n] for n, _, _ in io.tail()[0]])
            err = (out - ref).abs().max().item()
            if err > 1e-5:
                raise BundleMismatch(f"head->deep->tail differs from the whole U-Net by {err} (rank {rank})")
            res[f"torch split vs whole (rank {rank})"] = err
        if rank > 0 and io.targets:  # a LoRA branch must change the output
            feeds0 = dict(feeds)
            for k in range(len(io.targets)):
                d, up = lora_names(k)
                feeds0[d] = feeds[d][:, :0]
                feeds0[up] = feeds[up][:, :, :0]
            ref0 = FlatUNet(io, "whole")(*[feeds0[n] for n, _, _ in whole_in])
            if (ref0 - ref).abs().max().item() < 1e-6:
                raise BundleMismatch("LoRA branch inputs have no effect")
        if check_ort:
            head_in = {n: feeds[n] for n, _, _ in io.head()[0]} if split else None
            o = ort_run(
                [(os.path.join(bundle, "unet/model.onnx"), feeds)]
                + ([(os.path.join(bundle, "unet_head/model.onnx"), head_in)] if split else [])
            )
            if o is None:
                log("onnxruntime-node not available: ONNX numeric parity NOT checked")
                check_ort = False
                continue
            e1 = float(np.abs(o[0]["out_sample"] - ref.numpy()).max())
            res[f"ort whole vs torch (rank {rank})"] = e1
            e2 = 0.0
            if split:
                f2 = dict(feeds, skip_0=torch.from_numpy(o[1]["skip_0"]))
                o2 = ort_run([(os.path.join(bundle, "unet_deep/model.onnx"), {n: f2[n] for n, _, _ in io.deep()[0]})])
                f2["deep_feature"] = torch.from_numpy(o2[0]["deep_feature"])
                o3 = ort_run([(os.path.join(bundle, "unet_tail/model.onnx"), {n: f2[n] for n, _, _ in io.tail()[0]})])
                e2 = float(np.abs(o3[0]["out_sample"] - o[0]["out_sample"]).max())
                res[f"ort head->deep->tail vs ort whole (rank {rank})"] = e2
            scale = float(ref.abs().max()) + 1e-6
            if e1 > 1e-3 * max(1.0, scale) or e2 > 1e-3 * max(1.0, scale):
                raise BundleMismatch(f"onnxruntime disagrees: {res}")
    if check_ort:
        ids = torch.randint(0, len(data.vocabulary()) + 4, (B, models.MAX_LENGTH), generator=gen)
        z = torch.randn(B, 4, io.hw, io.hw, generator=gen)
        img = torch.rand(B, 3, io.hw * 4, io.hw * 4, generator=gen) * 2 - 1
        o = ort_run(
            [
                (os.path.join(bundle, "text_encoder/model.onnx"), {"input_ids": ids}),
                (os.path.join(bundle, "vae_decoder/model.onnx"), {"latent_sample": z}),
            ]
            + ([(os.path.join(bundle, "vae_encoder/model.onnx"), {"sample": img})] if vae_encoder else [])
        )
        if o is not None:
            res["ort text encoder"] = float(np.abs(o[0]["last_hidden_state"] - te(ids).numpy()).max())
            res["ort vae decoder"] = float(np.abs(o[1]["sample"] - VAEDecoderWrap(vae)(z).numpy()).max())
            if vae_encoder:
                res["ort vae encoder"] = float(np.abs(o[2]["latent_sample"] - VAEEncoderWrap(vae)(img).numpy()).max())
            for k in ("ort text encoder", "ort vae decoder", "ort vae encoder"):
                if res.get(k, 0.0) > 1e-3:
                    raise BundleMismatch(f"onnxruntime disagrees: {res}")
    log("numeric checks: " + ", ".join(f"{k}={v:.2e}" for k, v in res.items()))
