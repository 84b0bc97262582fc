"""Bundles on disk: manifest.json, the SD ONNX layout, validation of a manifest against the schema and against the
real graphs, checksums."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import torch

from zoo import models, paths
from zoo.export import graphs
from zoo.export.graphs import (
    BundleMismatch,
    example,
    export_onnx,
    merge_weight_names,
    onnx_initializers,
    onnx_io,
    tensor_specs,
)
from zoo.export.parity import check_numerics, ort_run
from zoo.export.wrappers import (
    RES_NAMES,
    ControlNetWrap,
    FlatUNet,
    UNetIO,
    VAEDecoderWrap,
    VAEEncoderWrap,
    lora_names,
)

FAMILY = "tiny-shapes"


# The random test bundles have another architecture than the trained family, so add-ons of one never fit the other.
RANDOM_FAMILY = "tiny-shapes-random"


def check_component(where, comp, bundle_dir):
    """Compare a manifest component against the real ONNX graph. Returns a list of problems."""
    path = os.path.join(bundle_dir, comp["path"])
    if not os.path.exists(path):
        return [f"{where}: {comp['path']} missing"]
    problems = []
    real_in, real_out = onnx_io(path)
    for kind, declared, real in (("input", comp["inputs"], real_in), ("output", comp["outputs"], real_out)):
        rmap = {r["name"]: r for r in real}
        for d in declared:
            r = rmap.get(d["name"])
            if r is None:
                problems.append(f"{where} {kind} {d['name']} declared but not in graph ({list(rmap)})")
                continue
            if r["dtype"] != d["dtype"]:
                problems.append(f"{where} {kind} {d['name']}: dtype {d['dtype']} vs graph {r['dtype']}")
            if len(r["shape"]) != len(d["shape"]):
                problems.append(f"{where} {kind} {d['name']}: rank {len(d['shape'])} vs graph {len(r['shape'])}")
                continue
            for ax, (dd, rd) in enumerate(zip(d["shape"], r["shape"])):
                if isinstance(dd, int) and isinstance(rd, int) and dd != rd:
                    problems.append(f"{where} {kind} {d['name']} axis {ax}: {dd} vs graph {rd}")
                if isinstance(dd, str) and isinstance(rd, int):
                    problems.append(f"{where} {kind} {d['name']} axis {ax}: declared dynamic {dd!r}, graph fixes {rd}")
        extra = set(rmap) - {d["name"] for d in declared}
        if extra:
            problems.append(f"{where}: graph {kind}s not declared in the manifest: {sorted(extra)}")
    if comp.get("sha256") and comp["sha256"] != sha256(path):
        problems.append(f"{where}: sha256 mismatch")
    return problems


def validate_manifest(manifest, bundle_dir):
    import jsonschema

    problems = []
    if os.path.exists(paths.SCHEMA):
        schema = json.load(open(paths.SCHEMA))
        v = jsonschema.Draft202012Validator(schema)
        for e in sorted(v.iter_errors(manifest), key=lambda e: list(e.path)):
            problems.append(f"schema: {'/'.join(map(str, e.path))}: {e.message[:300]}")
    else:
        problems.append(f"schema file {paths.SCHEMA} not found")
    for name, comp in manifest["components"].items():
        problems += check_component(f"components.{name}", comp, bundle_dir)
    if manifest.get("kind") == "diffusion":
        unet_in = {t["name"] for t in manifest["components"]["unet"]["inputs"]}
        merge = manifest.get("lora", {}).get("mode") == "merge"
        inits = {}  # component -> its initializer names, read once
        for t in manifest.get("lora", {}).get("targets", []):
            for c in t["components"]:
                if merge or "weight" in t:  # the weight the runner merges into must be an initializer of that component
                    if c not in inits:
                        inits[c] = onnx_initializers(bundle_dir, manifest["components"][c])
                    if t.get("weight", {}).get(c) not in inits[c]:
                        problems.append(
                            f"lora target {t['module']}: weight {t.get('weight', {}).get(c)} is not an "
                            f"initializer of {c}"
                        )
                if merge:
                    continue
                cin = {x["name"] for x in manifest["components"][c]["inputs"]}
                for n in (t.get("down_input"), t.get("up_input")):
                    if n not in cin:
                        problems.append(f"lora target {t['module']}: {n} not an input of {c}")
        for r in manifest.get("controlnet", {}).get("residuals", []):
            if r not in unet_in:
                problems.append(f"controlnet residual {r} not an input of unet")
        if "cache" in manifest:
            c = manifest["cache"]
            if c["cached_feature"] not in {t["name"] for t in manifest["components"][c["deep"]]["outputs"]}:
                problems.append("cache.cached_feature is not an output of the deep part")
    if problems:
        raise BundleMismatch("bundle does not match its manifest:\n  " + "\n  ".join(problems))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def scheduler_config(prediction):
    cfg = {
        "_class_name": "DDIMScheduler" if prediction == "epsilon" else "RectifiedFlowScheduler",
        "num_train_timesteps": models.NUM_TRAIN_TIMESTEPS,
        "beta_start": models.BETA_START,
        "beta_end": models.BETA_END,
        "beta_schedule": "scaled_linear",
        "prediction_type": prediction,
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "original_inference_steps": 50,
        "timestep_scaling": 10.0,
    }
    return cfg


def write_bundle(
    out_dir,
    *,
    name,
    version,
    description,
    unet,
    te,
    tok,
    vae,
    scaling_factor,
    prediction="epsilon",
    samplers=("ddim", "lcm"),
    default_sampler="ddim",
    default_steps=50,
    guidance_scale=4.0,
    cfg=True,
    seed=0,
    check_ort=True,
    log=print,
    family=FAMILY,
    split=True,
    vae_encoder=True,
    lora_mode="branch",
):
    """split: also the DeepCache parts (head, deep, tail); vae_encoder: also the VAE encoder (img2img). A bundle
    sampled in one or few steps gains nothing from block caching, so leaving them out keeps the zoo small.
    lora_mode "merge": no LoRA branch inputs; the manifest names each target's weight initializer instead, and the
    runner merges LoRAs into a copy of the weights (float32 storage, so the runner can add to them in place)."""
    if lora_mode == "merge" and (split or graphs.FP16_STORAGE):
        raise BundleMismatch("a merge-mode bundle is written whole (no split) with float32 weights")
    gen = torch.Generator().manual_seed(seed)
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    unet.eval()
    te.eval()
    vae.eval()
    io = UNetIO(unet, lora=lora_mode == "branch")
    comps = {}
    D = te.config["dim"]
    # text encoder
    te_in = [("input_ids", "int64", ["batch", models.MAX_LENGTH])]
    te_out = [("last_hidden_state", "float32", ["batch", models.MAX_LENGTH, D])]
    export_onnx(te, te_in, te_out, os.path.join(tmp, "text_encoder/model.onnx"), gen)
    comps["text_encoder"] = dict(
        path="text_encoder/model.onnx", inputs=tensor_specs(te_in), outputs=tensor_specs(te_out)
    )
    # unet whole + split
    for part, comp, path in (
        ("whole", "unet", "unet/model.onnx"),
        ("head", "unet_head", "unet_head/model.onnx"),
        ("deep", "unet_deep", "unet_deep/model.onnx"),
        ("tail", "unet_tail", "unet_tail/model.onnx"),
    ):
        if part != "whole" and not split:
            continue
        spec_in, spec_out = getattr(io, part)()
        export_onnx(FlatUNet(io, part), spec_in, spec_out, os.path.join(tmp, path), gen)
        comps[comp] = dict(path=path, inputs=tensor_specs(spec_in), outputs=tensor_specs(spec_out))
    # vae
    L, hw = unet.config["latent"], unet.config["hw"]
    dec_in = [("latent_sample", "float32", ["batch", L, hw, hw])]
    dec_out = [("sample", "float32", ["batch", 3, hw * 4, hw * 4])]
    export_onnx(VAEDecoderWrap(vae), dec_in, dec_out, os.path.join(tmp, "vae_decoder/model.onnx"), gen)
    comps["vae_decoder"] = dict(
        path="vae_decoder/model.onnx", inputs=tensor_specs(dec_in), outputs=tensor_specs(dec_out)
    )
    if vae_encoder:
        enc_in = [("sample", "float32", ["batch", 3, hw * 4, hw * 4])]
        enc_out = [("latent_sample", "float32", ["batch", L, hw, hw])]
        export_onnx(VAEEncoderWrap(vae), enc_in, enc_out, os.path.join(tmp, "vae_encoder/model.onnx"), gen)
        comps["vae_encoder"] = dict(
            path="vae_encoder/model.onnx", inputs=tensor_specs(enc_in), outputs=tensor_specs(enc_out)
        )
    for c in comps.values():
        c["sha256"] = sha256(os.path.join(tmp, c["path"]))
    # tokenizer, scheduler, model_index
    os.makedirs(os.path.join(tmp, "tokenizer"))
    tok.save(os.path.join(tmp, "tokenizer/vocab.json"))
    json.dump(
        dict(
            type="word",
            max_length=tok.max_length,
            lowercase=True,
            split="[^a-z0-9]+",
            pad_token="<pad>",
            unk_token="<unk>",
            bos_token="<bos>",
            eos_token="<eos>",
        ),
        open(os.path.join(tmp, "tokenizer/tokenizer_config.json"), "w"),
        indent=1,
    )
    os.makedirs(os.path.join(tmp, "scheduler"))
    json.dump(scheduler_config(prediction), open(os.path.join(tmp, "scheduler/scheduler_config.json"), "w"), indent=1)
    json.dump(
        {
            "_class_name": "OnnxStableDiffusionPipeline",
            "_diffusers_version": "0.0-tiny-shapes",
            "text_encoder": ["onnx", "model"],
            "tokenizer": ["tiny_shapes", "WordTokenizer"],
            "unet": ["onnx", "model"],
            "vae_decoder": ["onnx", "model"],
            **({"vae_encoder": ["onnx", "model"]} if vae_encoder else {}),
            "scheduler": ["diffusers", scheduler_config(prediction)["_class_name"]],
        },
        open(os.path.join(tmp, "model_index.json"), "w"),
        indent=1,
    )
    targets = []
    if lora_mode == "merge":
        for t, (name, layout) in zip(
            unet.lora_target_info(), merge_weight_names(os.path.join(tmp, "unet/model.onnx"), unet)
        ):
            targets.append(
                dict(
                    module=t["path"],
                    kind=t["kind"],
                    in_features=t["in_features"],
                    out_features=t["out_features"],
                    components=["unet"],
                    weight={"unet": name},
                    weight_layout=layout,
                )
            )
    for k, t in enumerate(io.targets):
        d, u = lora_names(k)
        part_comp = {"head": "unet_head", "deep": "unet_deep", "tail": "unet_tail"}[t["part"]]
        targets.append(
            dict(
                module=t["path"],
                kind=t["kind"],
                in_features=t["in_features"],
                out_features=t["out_features"],
                components=["unet", part_comp] if split else ["unet"],
                down_input=d,
                up_input=u,
            )
        )
    if lora_mode == "branch":
        # The weights too, per component: the runner merges a hot add-on set into them (addons/runtime.ts).
        for c in sorted({c for t in targets for c in t["components"]}):  # sorted: the same manifest every export
            mine = [t for t in targets if c in t["components"]]
            names = merge_weight_names(os.path.join(tmp, comps[c]["path"]), unet, {t["module"] for t in mine})
            for t, (wname, layout) in zip(mine, names):
                t.setdefault("weight", {})[c] = wname
                if t.setdefault("weight_layout", layout) != layout:
                    raise BundleMismatch(
                        f"{t['module']}: its weight is stored {layout} in {c}, {t['weight_layout']} elsewhere"
                    )
    guidance = dict(cfg=bool(cfg), default_scale=float(guidance_scale))
    if io.cond:
        guidance["embedding"] = dict(input="timestep_cond", dim=unet.config["cond_dim"], w_scale=1000.0)
    manifest = dict(
        schema_version=1,
        kind="diffusion",
        name=name,
        family=family,
        version=version,
        description=description,
        prediction_type=prediction,
        samplers=list(samplers),
        default_sampler=default_sampler,
        default_steps=int(default_steps),
        image=dict(width=hw * 4, height=hw * 4, channels=3, min_size=hw * 4, max_size=hw * 4, multiple_of=hw * 4),
        latent=dict(channels=L, downsample=4, scaling_factor=float(scaling_factor)),
        scheduler=dict(
            num_train_timesteps=models.NUM_TRAIN_TIMESTEPS,
            beta_schedule="scaled_linear",
            beta_start=models.BETA_START,
            beta_end=models.BETA_END,
            original_inference_steps=50,
            timestep_scaling=10.0,
        ),
        guidance=guidance,
        tokenizer=dict(
            type="word",
            vocab="vocab.json",
            max_length=tok.max_length,
            lowercase=True,
            pad_id=models.PAD,
            unk_id=models.UNK,
            bos_id=models.BOS,
            eos_id=models.EOS,
        ),
        components=comps,
        lora=dict(mode=lora_mode, max_rank=64, targets=targets),
        **(
            {
                "cache": dict(
                    kind="deepcache",
                    head="unet_head",
                    deep="unet_deep",
                    tail="unet_tail",
                    cached_feature="deep_feature",
                    branch=0,
                )
            }
            if split
            else {}
        ),
        controlnet=dict(residuals=list(RES_NAMES)),
    )
    validate_manifest(manifest, tmp)
    check_numerics(tmp, io, te, vae, gen, check_ort, log, split, vae_encoder)
    json.dump(manifest, open(os.path.join(tmp, "manifest.json"), "w"), indent=1)
    validate_manifest(json.load(open(os.path.join(tmp, "manifest.json"))), tmp)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log(f"wrote {out_dir} ({dir_size(out_dir) / 1e6:.2f} MB)")
    return manifest


def dir_size(d):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


def write_controlnet(
    out_dir,
    *,
    name,
    version,
    description,
    cn: models.ControlNet,
    unet_io: UNetIO,
    seed=0,
    check_ort=True,
    log=print,
    family=FAMILY,
):
    gen = torch.Generator().manual_seed(seed)
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    cn.eval()
    base = unet_io.base_inputs()
    ins = base[:3] + [("controlnet_cond", "float32", ["batch", 1, unet_io.hw * 4, unet_io.hw * 4])] + base[3:]
    outs = unet_io.residual_inputs([0, 1, 2, 3])
    export_onnx(ControlNetWrap(cn), ins, outs, os.path.join(tmp, "controlnet/model.onnx"), gen)
    comp = dict(path="controlnet/model.onnx", inputs=tensor_specs(ins), outputs=tensor_specs(outs))
    comp["sha256"] = sha256(os.path.join(tmp, comp["path"]))
    manifest = dict(
        schema_version=1,
        kind="controlnet",
        name=name,
        family=family,
        version=version,
        description=description,
        conditioning=dict(type="mask", width=unet_io.hw * 4, height=unet_io.hw * 4, channels=1, range=[0.0, 1.0]),
        components=dict(controlnet=comp),
        residuals={n: n for n in RES_NAMES},
    )
    validate_manifest(manifest, tmp)
    if check_ort:
        args = example(ins, 2, 0, gen)
        with torch.no_grad():
            ref = ControlNetWrap(cn)(*args)
        o = ort_run([(os.path.join(tmp, comp["path"]), dict(zip([n for n, _, _ in ins], args)))])
        if o is not None:
            err = max(float(np.abs(o[0][n] - r.numpy()).max()) for n, r in zip(RES_NAMES, ref))
            if err > 1e-3:
                raise BundleMismatch(f"controlnet: onnxruntime disagrees by {err}")
            log(f"controlnet ort parity {err:.2e}")
    json.dump(manifest, open(os.path.join(tmp, "manifest.json"), "w"), indent=1)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    log(f"wrote {out_dir} ({dir_size(out_dir) / 1e6:.2f} MB)")


def write_checksums(root):
    """SHA256SUMS over every file under models/ (a test verifies the committed artifacts)."""
    lines = []
    for r, _, fs in sorted(os.walk(root)):
        for f in sorted(fs):
            p = os.path.join(r, f)
            if f == "SHA256SUMS" or ".tmp" in p:
                continue
            lines.append(f"{sha256(p)}  {os.path.relpath(p, root)}")
    open(os.path.join(root, "SHA256SUMS"), "w").write("\n".join(lines) + "\n")
