"""What `python -m zoo.export <target>` builds: the random test bundles, the trained family, the evaluator, the style
LoRA add-ons, the merge-mode twin for the bench."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import torch
import torch.nn as nn

from zoo import data, evaluate, models, paths, train
from zoo.export import graphs
from zoo.export.graphs import OPSET, _round_fp16, compact_onnx, fp16_storage
from zoo.export.manifest import (
    FAMILY,
    RANDOM_FAMILY,
    BundleMismatch,
    dir_size,
    write_bundle,
    write_checksums,
    write_controlnet,
)
from zoo.export.parity import ort_run
from zoo.export.safetensors import lora_to_kohya, lora_to_peft, save_safetensors
from zoo.export.wrappers import UNetIO, _EvaluatorOnnx
from zoo.latents import load_vae
from zoo.loop import to_img_tensor
from zoo.stages.base import load_base
from zoo.stages.controlnet import load_controlnet
from zoo.stages.lcm import load_lcm

MICRO = dict(ch=(8, 8, 16), tdim=16, ctx_dim=16, heads=(1, 1, 1), latent=4, hw=16)


def random_lora(unet, rank, gen, scale=0.3):
    """Small random branches (tests check that they act about linearly): a 3x3 kernel's nine taps each get a third."""
    out = {}
    for t in unet.lora_target_info():
        s = scale / 3 if t["kind"] == "conv3x3" else scale
        out[t["path"]] = (
            torch.randn(rank, t["down_features"], generator=gen) * s,
            torch.randn(t["out_features"], rank, generator=gen) * s,
        )
    return out


def export_random(root=paths.MODELS_DIR):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    tok = models.default_tokenizer()
    te = models.TextEncoder(len(tok.vocab), dim=16, layers=1, heads=2)
    vae = models.VAE(ch=(8, 8, 8))
    variants = [
        (
            "tiny-shapes-random",
            dict(prediction="epsilon", samplers=("ddim", "lcm"), default_sampler="ddim", default_steps=50, cfg=True),
            0,
        ),
        (
            "tiny-shapes-random-lcm",
            dict(
                prediction="epsilon",
                samplers=("lcm",),
                default_sampler="lcm",
                default_steps=4,
                cfg=False,
                guidance_scale=8.0,
            ),
            16,
        ),
        (
            "tiny-shapes-random-rf",
            dict(
                prediction="flow",
                samplers=("rectified-flow",),
                default_sampler="rectified-flow",
                default_steps=1,
                cfg=False,
                guidance_scale=1.0,
            ),
            0,
        ),
    ]
    manifests = {}
    for name, kw, cond_dim in variants:
        torch.manual_seed(1)
        unet = models.UNet(**MICRO, cond_dim=cond_dim)
        manifests[name] = write_bundle(
            os.path.join(root, name),
            name=name,
            version="0.0.1-random",
            description="RANDOMLY INITIALISED (untrained, seed 1) test bundle of the tiny-shapes family: "
            "correct interface, meaningless images.",
            unet=unet,
            te=te,
            tok=tok,
            vae=vae,
            scaling_factor=0.5,
            family=RANDOM_FAMILY,
            **kw,
        )
        if name == "tiny-shapes-random":
            base_unet = unet
    # add-ons for the random base
    addons = os.path.join(root, "tiny-shapes-random", "addons")
    lo = random_lora(base_unet, 4, gen)
    save_safetensors(
        os.path.join(addons, "random-lora-kohya.safetensors"),
        lora_to_kohya(lo, alpha=4.0, unet=base_unet),
        {"family": RANDOM_FAMILY, "format": "kohya", "rank": "4", "trigger": "", "note": "random test LoRA"},
    )
    lo2 = random_lora(base_unet, 2, gen)
    save_safetensors(
        os.path.join(addons, "random-lora-peft.safetensors"),
        lora_to_peft(lo2, base_unet),
        {"family": RANDOM_FAMILY, "format": "peft", "r": "2", "lora_alpha": "2", "note": "random test LoRA"},
    )
    torch.manual_seed(2)
    cn = models.ControlNet(base_unet)
    for m in list(cn.zero_convs) + [cn.mid_zero, cn.hint[-1]]:  # random, so tests can see the residuals act
        nn.init.normal_(m.weight, std=0.1)
        nn.init.normal_(m.bias, std=0.1)
    write_controlnet(
        os.path.join(addons, "random-controlnet-mask"),
        name="tiny-shapes-random-controlnet-mask",
        version="0.0.1-random",
        description="RANDOMLY INITIALISED mask ControlNet (test only)",
        cn=cn,
        unet_io=UNetIO(base_unet),
        family=RANDOM_FAMILY,
    )
    write_checksums(root)
    print(f"total {dir_size(root) / 1e6:.2f} MB under {root}")


EVALUATOR_DIR = os.path.join(paths.MODELS_DIR, "evaluator")


EVAL_N = 256


def export_evaluator(out_dir=EVALUATOR_DIR, log=print):
    """The evaluator for the TypeScript side (quality columns of the benches, end-to-end pixel checks):
    evaluator.onnx (image [-1,1] [B,3,64,64] -> attribute logits, style logits, 128-d features), the held-out
    prompts with their attributes, their shape masks (ControlNet IoU) and the Frechet reference statistics.
    Weights are rounded to fp16 for storage; the reference statistics are recomputed with the rounded network on
    the same 2000 held-out real images, and the agreement with the float32 evaluator is recorded."""
    ev32, ck = evaluate.load_evaluator()
    ev = models.Evaluator()
    ev.load_state_dict(ev32.state_dict())
    _round_fp16(ev).eval()
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    heads = list(data.ATTRS) + ["styles", "features"]
    onnx_path = os.path.join(tmp, "evaluator.onnx")
    wrapped = _EvaluatorOnnx(ev).eval()  # (export restores the wrapper's mode, and with it the BatchNorms')
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            (torch.zeros(2, 3, 64, 64),),
            onnx_path,
            opset_version=OPSET,
            input_names=["image"],
            output_names=heads,
            dynamic_axes={n: {0: "batch"} for n in ["image"] + heads},
            do_constant_folding=True,
        )
    compact_onnx(onnx_path)
    fp16_storage(onnx_path)
    # held-out real images: reference statistics and agreement of the rounded network with the float32 one
    imgs, _, _, labs, _ = data.batch_arrays(np.arange(0, 2000))
    x = to_img_tensor(imgs)
    with torch.no_grad():
        o16 = [ev(x[i : i + 250]) for i in range(0, 2000, 250)]
        o32 = [ev32(x[i : i + 250]) for i in range(0, 2000, 250)]
    feats = torch.cat([f for _, f in o16]).double()
    mu, cov = feats.mean(0), torch.cov(feats.T)
    agree = {
        a: float(torch.cat([(p[0][a].argmax(1) == q[0][a].argmax(1)) for p, q in zip(o16, o32)]).float().mean())
        for a in data.ATTRS
    }
    acc = {
        a: float((torch.cat([p[0][a].argmax(1) for p in o16]) == torch.from_numpy(labs[a])).float().mean())
        for a in data.ATTRS
    }
    with open(os.path.join(tmp, "fid_ref.f64"), "wb") as f:
        f.write(mu.numpy().astype("<f8").tobytes() + cov.numpy().astype("<f8").tobytes())
    # held-out prompts (the same as evaluate.py's) and their shape masks, packed one bit per pixel
    prompts = data.eval_prompts(EVAL_N)
    _, masks, _, _, _ = data.batch_arrays(np.array([p[0] for p in prompts]), styles=[])
    with open(os.path.join(tmp, "heldout_masks.bits"), "wb") as f:
        f.write(np.packbits((masks > 127).reshape(EVAL_N, -1), axis=1).tobytes())
    # parity: onnxruntime-node against PyTorch on real images
    sample = x[:8]
    with torch.no_grad():
        ref = wrapped.eval()(sample)
    outs = ort_run([(onnx_path, {"image": sample})])
    ort_err = None
    if outs is not None:
        ort_err = max(float(np.abs(outs[0][n] - r.numpy()).max()) for n, r in zip(heads, ref))
        if ort_err > 1e-3:
            raise BundleMismatch(f"evaluator.onnx differs from PyTorch by {ort_err}")
    meta = dict(
        schema_version=1,
        kind="evaluator",
        family=FAMILY,
        description="tiny-shapes evaluator: predicts shape, colour, size, position, background and style bits of a "
        "64x64 image; 128-d features for the Frechet distance. Trained on real rendered images only.",
        onnx="evaluator.onnx",
        input=dict(name="image", shape=["batch", 3, 64, 64], range=[-1, 1]),
        attributes={a: list(data.ATTR_CLASSES[a]) for a in data.ATTRS},
        styles=list(data.STYLES),
        style_threshold_logit=0.0,
        features=dict(name="features", dim=int(mu.shape[0])),
        colors={k: list(v) for k, v in data.COLORS.items()},
        fid_reference=dict(file="fid_ref.f64", n_real=2000, layout="mean[dim] then cov[dim*dim], float64 LE"),
        heldout=dict(
            n=EVAL_N,
            masks="heldout_masks.bits",
            masks_layout="n x 64x64 bits, row-major, MSB first",
            prompts=[dict(seed=int(sd), prompt=cap, attributes=at) for sd, at, cap in prompts],
        ),
        checks=dict(fp16_vs_fp32_argmax_agreement=agree, heldout_real_accuracy=acc, ort_max_abs_err=ort_err),
    )
    with open(os.path.join(tmp, "evaluator.json"), "w") as f:
        json.dump(meta, f, indent=1)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    log(f"evaluator exported: real held-out accuracy {acc}, fp16/fp32 agreement {agree}, ort err {ort_err}")


def export_trained(root=paths.MODELS_DIR, log=print):
    graphs.FP16_STORAGE = True
    ck_dir = paths.CKPT
    vae, sf = load_vae()
    _round_fp16(vae)
    if not os.path.exists(os.path.join(ck_dir, "base.pt")):
        raise SystemExit("no checkpoints/base.pt yet")
    tok, unet, te, ck = load_base(ema=True)
    status = "finished" if ck.get("finished") else f"PARTIAL (training still in progress at step {ck['step']})"
    base_dir = os.path.join(root, FAMILY)
    common = dict(te=te, tok=tok, vae=vae, scaling_factor=sf)
    addons_keep = None
    if os.path.isdir(os.path.join(base_dir, "addons")):  # keep add-ons across a re-export of the base
        addons_keep = tempfile.mkdtemp()
        shutil.copytree(os.path.join(base_dir, "addons"), os.path.join(addons_keep, "addons"))
    write_bundle(
        base_dir,
        name=FAMILY,
        version=f"0.1.0-step{ck['step']}",
        description=f"tiny-shapes base: epsilon U-Net ({models.count_params(unet)} params) on 16x16x4 "
        f"latents, EMA weights after {ck['step']} steps; {status}. DDIM-50 with CFG 4.",
        unet=unet,
        prediction="epsilon",
        samplers=("ddim", "lcm"),
        default_sampler="ddim",
        default_steps=50,
        guidance_scale=4.0,
        cfg=True,
        log=log,
        **common,
    )
    if addons_keep:
        shutil.copytree(os.path.join(addons_keep, "addons"), os.path.join(base_dir, "addons"))
    addons = os.path.join(base_dir, "addons")
    export_loras(root, unet)
    if train.stage_finished("controlnet"):
        cn = _round_fp16(load_controlnet(unet))
        write_controlnet(
            os.path.join(addons, "controlnet-mask"),
            name="tiny-shapes-controlnet-mask",
            version="0.1.0",
            description="mask ControlNet for tiny-shapes (64x64 mask in [0,1])",
            cn=cn,
            unet_io=UNetIO(unet),
            log=log,
        )
    if train.stage_finished("lcm"):
        lcm = load_lcm()
        write_bundle(
            os.path.join(root, FAMILY + "-lcm"),
            name=FAMILY + "-lcm",
            version="0.1.0",
            description="tiny-shapes LCM: consistency-distilled from the base, guidance embedding input "
            "(timestep_cond), 2-8 steps, no CFG pass.",
            unet=lcm,
            prediction="epsilon",
            samplers=("lcm",),
            default_sampler="lcm",
            default_steps=4,
            guidance_scale=4.0,
            cfg=False,
            log=log,
            vae_encoder=False,
            **common,
        )
    if train.stage_finished("rf"):
        rck = torch.load(os.path.join(ck_dir, "rf.pt"), map_location="cpu")
        rf = models.UNet(**rck["config"])
        rf.load_state_dict({k: v.float() for k, v in rck["model"].items()})
        write_bundle(
            os.path.join(root, FAMILY + "-rf"),
            name=FAMILY + "-rf",
            version="0.1.0",
            description="tiny-shapes rectified flow (InstaFlow-style: reflow on base ODE pairs, then "
            "one-step distillation); velocity prediction, 1 Euler step.",
            unet=rf.eval(),
            prediction="flow",
            samplers=("rectified-flow",),
            default_sampler="rectified-flow",
            default_steps=1,
            guidance_scale=1.0,
            cfg=False,
            log=log,
            split=False,
            vae_encoder=False,
            **common,
        )
    write_checksums(root)
    log(f"total {dir_size(root) / 1e6:.2f} MB under {root}")


MERGE_DIR = os.path.join(paths.WORK, "bundles")


def export_loras(root=paths.MODELS_DIR, unet=None, log=print):
    """The style LoRA add-ons of the base bundle, from checkpoints/loras.pt (also on their own, `export.py loras`,
    after the `loras` stage retrained a style: the bundles do not change)."""
    if not train.stage_finished("loras"):
        log("loras: the stage has not finished with its current recipes; add-ons left as they are")
        return
    if unet is None:
        unet = load_base(ema=True)[1]
    addons = os.path.join(root, FAMILY, "addons")
    lck = torch.load(os.path.join(paths.CKPT, "loras.pt"), map_location="cpu")
    for style, lo in lck["loras"].items():
        # F16, as trained and checkpointed (the runner reads F16 and BF16 as well as F32): half the bytes.
        lo16 = {p: (d.half(), u.half()) for p, (d, u) in lo.items()}
        rank = next(iter(lo16.values()))[0].shape[0]  # each style's own (zoo.stages.loras.LORA_RECIPES)
        save_safetensors(
            os.path.join(addons, f"lora-{style}.safetensors"),
            lora_to_kohya(lo16, rank, unet),
            {"family": FAMILY, "format": "kohya", "rank": str(rank), "trigger": style},
        )
        if style == "pastel":
            save_safetensors(
                os.path.join(addons, f"lora-{style}-peft.safetensors"),
                lora_to_peft(lo16, unet),
                {"family": FAMILY, "format": "peft", "r": str(rank), "lora_alpha": str(rank), "trigger": style},
            )
        log(f"loras: wrote lora-{style}.safetensors")


def export_merge(out_root=MERGE_DIR, log=print):
    """A merge-mode twin of the LCM bundle (the base's if LCM has not finished): same weights, no LoRA branch
    inputs, float32. Not committed (8 MB; rebuilt from the checkpoints in seconds): the add-on bench's
    merge-and-rebuild rows and the stacked-vs-merged check on trained weights use it."""
    vae, sf = load_vae()
    _round_fp16(vae)
    tok, unet, te, _ = load_base(ema=True)
    lcm = train.stage_finished("lcm")
    if lcm:
        unet = load_lcm()
    _round_fp16(unet)
    name = FAMILY + ("-lcm" if lcm else "") + "-merge"
    write_bundle(
        os.path.join(out_root, name),
        name=name,
        version="0.1.0",
        description="merge-mode twin of " + FAMILY + ("-lcm" if lcm else "") + ": LoRAs are merged into the "
        "weights (a session per add-on set) instead of fed as branch inputs",
        unet=unet,
        prediction="epsilon",
        samplers=("lcm",) if lcm else ("ddim", "lcm"),
        default_sampler="lcm" if lcm else "ddim",
        default_steps=4 if lcm else 50,
        guidance_scale=4.0,
        cfg=not lcm,
        log=log,
        split=False,
        vae_encoder=False,
        lora_mode="merge",
        te=te,
        tok=tok,
        vae=vae,
        scaling_factor=sf,
    )
