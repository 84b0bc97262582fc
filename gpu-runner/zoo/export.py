"""ONNX export of `tiny-shapes` bundles (SD ONNX layout + manifest.json) and add-ons.

    /usr/bin/python3 gpu-runner/zoo/export.py random            # the tiny randomly initialised test bundles
    /usr/bin/python3 gpu-runner/zoo/export.py base              # trained base (needs checkpoints/vae.pt, base.pt)

Every bundle is written to <dir>.tmp first and moved into place only when
  * manifest.json validates against gpu-runner/manifest.schema.json (jsonschema),
  * every ONNX file's real graph inputs/outputs (names, dtypes, ranks, fixed dims) match the manifest,
  * head -> deep -> tail equals the whole U-Net (PyTorch, and onnxruntime-node when it is available),
  * the ONNX files agree with PyTorch (onnxruntime-node through tools/ort_run.cjs, when available).
Otherwise it raises and leaves the previous bundle untouched.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn

ZOO = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ZOO)
import data  # noqa: E402
import models  # noqa: E402

OPSET = 17
FP16_STORAGE = False  # set by export_trained: large initializers stored as fp16 + Cast
SCHEMA = os.path.join(os.path.dirname(ZOO), "manifest.schema.json")
MODELS_DIR = os.path.join(ZOO, "models")
FAMILY = "tiny-shapes"
# The random test bundles have another architecture than the trained family, so add-ons of one never fit the other.
RANDOM_FAMILY = "tiny-shapes-random"
ONNX_DT = {1: "float32", 10: "float16", 7: "int64", 6: "int32"}


class BundleMismatch(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# wrappers with flat graph inputs
# ----------------------------------------------------------------------------------------------
def lora_names(k):
    return f"lora_{k}_down", f"lora_{k}_up"


RES_NAMES = ["down_block_0_additional_residual", "down_block_1_additional_residual",
             "down_block_2_additional_residual", "mid_block_additional_residual"]


class UNetIO:
    """Describes the graph inputs of the whole and split U-Net for a given model."""

    def __init__(self, unet: models.UNet, lora=True, residuals=True):
        self.unet = unet
        self.cond = unet.config["cond_dim"] > 0
        self.lora = lora
        self.residuals = residuals
        self.targets = unet.lora_target_info() if lora else []
        c0, c1, c2 = unet.config["ch"]
        self.ch = (c0, c1, c2)
        self.D = unet.config["ctx_dim"]
        self.hw = unet.config["hw"]

    def base_inputs(self):
        L, hw = self.unet.config["latent"], self.hw
        ins = [("sample", "float32", ["batch", L, hw, hw]), ("timestep", "float32", ["batch"]),
               ("encoder_hidden_states", "float32", ["batch", models.MAX_LENGTH, self.D])]
        if self.cond:
            ins.append(("timestep_cond", "float32", ["batch", self.unet.config["cond_dim"]]))
        return ins

    def lora_inputs(self, part=None):
        out = []
        for k, t in enumerate(self.targets):
            if part is None or t["part"] == part:
                d, u = lora_names(k)
                # a conv3x3 target's down is the kernel with its 3x3 taps flattened: [batch, rank, in, 9]
                kernel = [9] if t["kind"] == "conv3x3" else []
                out.append((d, "float32", ["batch", f"rank_{k}", t["in_features"], *kernel]))
                out.append((u, "float32", ["batch", t["out_features"], f"rank_{k}"]))
        return out

    def residual_inputs(self, which):
        (s0, s1, s2), m = self.unet.residual_shapes()
        shapes = [s0, s1, s2, m]
        return [(RES_NAMES[i], "float32", ["batch", *shapes[i]]) for i in which] if self.residuals else []

    def whole(self):
        L, hw = self.unet.config["latent"], self.hw
        return (self.base_inputs() + self.lora_inputs() + self.residual_inputs([0, 1, 2, 3]),
                [("out_sample", "float32", ["batch", L, hw, hw])])

    def head(self):
        return (self.base_inputs() + self.lora_inputs("head"),
                [("skip_0", "float32", ["batch", self.ch[0], self.hw, self.hw])])

    def deep(self):
        ins = [("skip_0", "float32", ["batch", self.ch[0], self.hw, self.hw])] + self.base_inputs()[1:]
        return (ins + self.lora_inputs("deep") + self.residual_inputs([1, 2, 3]),
                [("deep_feature", "float32", ["batch", self.ch[1], self.hw, self.hw])])

    def tail(self):
        L, hw = self.unet.config["latent"], self.hw
        ins = [("deep_feature", "float32", ["batch", self.ch[1], hw, hw]),
               ("skip_0", "float32", ["batch", self.ch[0], hw, hw])] + self.base_inputs()[1:]
        return (ins + self.lora_inputs("tail") + self.residual_inputs([0]),
                [("out_sample", "float32", ["batch", L, hw, hw])])


class FlatUNet(nn.Module):
    """Exports one of: whole, head, deep, tail, with named flat inputs."""

    def __init__(self, io: UNetIO, part: str):
        super().__init__()
        self.unet, self.io, self.part = io.unet, io, part
        self.in_names = [n for n, _, _ in getattr(io, part)()[0]]

    def forward(self, *args):
        a = dict(zip(self.in_names, args))
        u = self.unet
        lora = {}
        for k, t in enumerate(self.io.targets):
            d, up = lora_names(k)
            if d in a:
                lora[t["path"]] = (a[d], a[up])
        u.lora = lora
        try:
            temb = u.temb(a["timestep"], a.get("timestep_cond"))
            ctx = a["encoder_hidden_states"]
            res = [a.get(n) for n in RES_NAMES]
            if self.part == "whole":
                s0 = u.head(a["sample"], temb, ctx)
                deep = u.deep(s0, temb, ctx, res[:3] if res[1] is not None else None, res[3])
                return u.tail(deep, s0, temb, ctx, res[0])
            if self.part == "head":
                return u.head(a["sample"], temb, ctx)
            if self.part == "deep":
                return u.deep(a["skip_0"], temb, ctx, res[:3] if res[1] is not None else None, res[3])
            return u.tail(a["deep_feature"], a["skip_0"], temb, ctx, res[0])
        finally:
            u.lora = None


class VAEDecoderWrap(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.dec = vae.decoder

    def forward(self, latent_sample):  # unscaled latents (divide by scaling_factor first, as in SD)
        return self.dec(latent_sample).clamp(-1.0, 1.0)


class VAEEncoderWrap(nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.enc = vae.encoder

    def forward(self, sample):  # image in [-1,1] -> unscaled latent mean
        return self.enc(sample)[0]


class ControlNetWrap(nn.Module):
    def __init__(self, cn):
        super().__init__()
        self.cn = cn
        self.cond = cn.config.get("cond_dim", 0) > 0

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, timestep_cond=None):
        outs, mid = self.cn(sample, timestep, encoder_hidden_states, controlnet_cond, timestep_cond)
        return (*outs, mid)


# ----------------------------------------------------------------------------------------------
# example inputs
# ----------------------------------------------------------------------------------------------
def example(spec, batch, rank, gen):
    out = []
    for name, dt, shape in spec:
        dims = []
        for d in shape:
            if d == "batch":
                dims.append(batch)
            elif isinstance(d, str) and d.startswith("rank"):
                dims.append(rank)
            else:
                dims.append(d)
        if dt == "int64":
            out.append(torch.randint(0, 20, dims, generator=gen))
        elif name == "timestep":
            out.append(torch.randint(0, 1000, dims, generator=gen).float())
        elif name.startswith("lora_"):
            out.append(torch.randn(dims, generator=gen) * 0.2)
        elif name.endswith("residual"):
            out.append(torch.randn(dims, generator=gen) * 0.1)
        else:
            out.append(torch.randn(dims, generator=gen))
    return out


_dynamic_conv_registered = False


def _register_dynamic_conv():
    """torch 1.13 refuses to export a convolution whose weight shape it cannot see (a scripted LoRA branch's
    kernel, shaped at run time from a graph input: models.conv_lora_branch). ONNX Conv infers kernel_shape from W when
    the attribute is absent, so such a convolution is written without it; every other one as torch writes it
    (F.conv2d is aten::conv2d here)."""
    global _dynamic_conv_registered
    if _dynamic_conv_registered:
        return
    from torch.onnx import symbolic_helper as sh
    from torch.onnx import symbolic_opset9 as s9

    def conv2d(g, input, weight, bias, stride, padding, dilation, groups):
        sizes = sh._get_tensor_sizes(weight)
        if sizes is not None and len(sizes) == 4 and all(s is not None for s in sizes[2:]):
            return s9.conv2d(g, input, weight, bias, stride, padding, dilation, groups)
        args = [input, weight] + ([] if sh._is_none(bias) else [bias])
        pad = sh._parse_arg(padding, "is")
        return g.op("Conv", *args, strides_i=sh._parse_arg(stride, "is"), pads_i=pad + pad,
                    dilations_i=sh._parse_arg(dilation, "is"), group_i=sh._parse_arg(groups, "i"))
    torch.onnx.register_custom_op_symbolic("aten::conv2d", conv2d, OPSET)
    _dynamic_conv_registered = True


def export_onnx(module, spec_in, spec_out, path, gen):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    args = example(spec_in, 2, 3, gen)
    dyn = {}
    for name, _, shape in spec_in + spec_out:
        axes = {i: d for i, d in enumerate(shape) if isinstance(d, str)}
        if axes:
            dyn[name] = axes
    module.eval()
    _register_dynamic_conv()
    with torch.no_grad():
        try:
            torch.onnx.export(module, tuple(args), path, opset_version=OPSET,
                              input_names=[n for n, _, _ in spec_in], output_names=[n for n, _, _ in spec_out],
                              dynamic_axes=dyn, do_constant_folding=True)
        except torch.onnx.errors.CheckerError:
            # torch 1.13 places an If (a scripted LoRA branch, models.conv_lora_branch) before the nodes whose values
            # its branches capture; the file is written all the same, and compact_onnx sorts the graph.
            if not os.path.exists(path):
                raise
    compact_onnx(path)
    if FP16_STORAGE:
        fp16_storage(path)


def _subgraphs(node):
    for a in node.attribute:
        if a.HasField("g"):
            yield a.g
        yield from a.graphs


def _walk(graph):
    """Every node of `graph`, with those of its subgraphs (an If's branches)."""
    for n in graph.node:
        yield n
        for sg in _subgraphs(n):
            yield from _walk(sg)


def _toposort(graph):
    """Orders the top-level nodes so that each comes after what it reads, counting the outer values that its
    subgraphs capture (stable: the exported order wherever it is already valid)."""
    produced_by = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    deps = []
    for n in graph.node:
        names = set(n.input)
        for sg in _subgraphs(n):
            for m in _walk(sg):
                names.update(m.input)
            names.update(o.name for o in sg.output)
        deps.append({produced_by[x] for x in names if x in produced_by})
    order, done = [], set()
    pending = list(range(len(graph.node)))
    while pending:
        rest = []
        for i in pending:
            if deps[i] <= done:
                order.append(i)
                done.add(i)
            else:
                rest.append(i)
        if len(rest) == len(pending):
            raise BundleMismatch("ONNX graph has a cycle")
        pending = rest
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def compact_onnx(path):
    """Shorten internal node and value names (not graph inputs/outputs/initializers): the files are committed.
    Subgraphs (If branches) are renamed with the graph, and the top level is sorted topologically."""
    import onnx
    m = onnx.load(path)
    g = m.graph
    _toposort(g)
    keep = {v.name for v in g.input} | {v.name for v in g.output} | {i.name for i in g.initializer}
    ren = {}
    for i, n in enumerate(_walk(g)):
        n.name = f"n{i}"
        n.doc_string = ""
        for o in n.output:
            if o and o not in keep and o not in ren:
                ren[o] = f"v{len(ren)}"

    def rename(graph):
        for n in graph.node:
            for j, x in enumerate(n.input):
                if x in ren:
                    n.input[j] = ren[x]
            for j, x in enumerate(n.output):
                if x in ren:
                    n.output[j] = ren[x]
            for sg in _subgraphs(n):
                rename(sg)
        for vi in list(graph.value_info) + (list(graph.output) if graph is not g else []):
            if vi.name in ren:
                vi.name = ren[vi.name]
    rename(g)
    onnx.checker.check_model(m)
    onnx.save(m, path)


def tensor_specs(spec):
    return [dict(name=n, dtype=dt, shape=list(shape)) for n, dt, shape in spec]


# ----------------------------------------------------------------------------------------------
# checks
# ----------------------------------------------------------------------------------------------
def onnx_io(path):
    import onnx
    m = onnx.load(path)
    init = {i.name for i in m.graph.initializer}

    def conv(vi):
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        return dict(name=vi.name, dtype=ONNX_DT.get(tt.elem_type, f"onnx:{tt.elem_type}"), shape=dims)
    return ([conv(v) for v in m.graph.input if v.name not in init], [conv(v) for v in m.graph.output])


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
    if os.path.exists(SCHEMA):
        schema = json.load(open(SCHEMA))
        v = jsonschema.Draft202012Validator(schema)
        for e in sorted(v.iter_errors(manifest), key=lambda e: list(e.path)):
            problems.append(f"schema: {'/'.join(map(str, e.path))}: {e.message[:300]}")
    else:
        problems.append(f"schema file {SCHEMA} not found")
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
                        problems.append(f"lora target {t['module']}: weight {t.get('weight', {}).get(c)} is not an "
                                        f"initializer of {c}")
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
    r = subprocess.run([node, os.path.join(ZOO, "tools", "ort_run.cjs"), jp], capture_output=True, text=True)
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


# ----------------------------------------------------------------------------------------------
# safetensors (written by hand: no dependency)
# ----------------------------------------------------------------------------------------------
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


# ----------------------------------------------------------------------------------------------
# bundle writer
# ----------------------------------------------------------------------------------------------
def scheduler_config(prediction):
    cfg = {"_class_name": "DDIMScheduler" if prediction == "epsilon" else "RectifiedFlowScheduler",
           "num_train_timesteps": models.NUM_TRAIN_TIMESTEPS, "beta_start": models.BETA_START,
           "beta_end": models.BETA_END, "beta_schedule": "scaled_linear", "prediction_type": prediction,
           "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
           "original_inference_steps": 50, "timestep_scaling": 10.0}
    return cfg


def write_bundle(out_dir, *, name, version, description, unet, te, tok, vae, scaling_factor, prediction="epsilon",
                 samplers=("ddim", "lcm"), default_sampler="ddim", default_steps=50, guidance_scale=4.0,
                 cfg=True, seed=0, check_ort=True, log=print, family=FAMILY, split=True, vae_encoder=True,
                 lora_mode="branch"):
    """split: also the DeepCache parts (head, deep, tail); vae_encoder: also the VAE encoder (img2img). A bundle
    sampled in one or few steps gains nothing from block caching, so leaving them out keeps the zoo small.
    lora_mode "merge": no LoRA branch inputs; the manifest names each target's weight initializer instead, and the
    runner merges LoRAs into a copy of the weights (float32 storage, so the runner can add to them in place)."""
    if lora_mode == "merge" and (split or FP16_STORAGE):
        raise BundleMismatch("a merge-mode bundle is written whole (no split) with float32 weights")
    gen = torch.Generator().manual_seed(seed)
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    unet.eval(); te.eval(); vae.eval()
    io = UNetIO(unet, lora=lora_mode == "branch")
    comps = {}
    D = te.config["dim"]
    # text encoder
    te_in = [("input_ids", "int64", ["batch", models.MAX_LENGTH])]
    te_out = [("last_hidden_state", "float32", ["batch", models.MAX_LENGTH, D])]
    export_onnx(te, te_in, te_out, os.path.join(tmp, "text_encoder/model.onnx"), gen)
    comps["text_encoder"] = dict(path="text_encoder/model.onnx", inputs=tensor_specs(te_in), outputs=tensor_specs(te_out))
    # unet whole + split
    for part, comp, path in (("whole", "unet", "unet/model.onnx"), ("head", "unet_head", "unet_head/model.onnx"),
                             ("deep", "unet_deep", "unet_deep/model.onnx"), ("tail", "unet_tail", "unet_tail/model.onnx")):
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
    comps["vae_decoder"] = dict(path="vae_decoder/model.onnx", inputs=tensor_specs(dec_in), outputs=tensor_specs(dec_out))
    if vae_encoder:
        enc_in = [("sample", "float32", ["batch", 3, hw * 4, hw * 4])]
        enc_out = [("latent_sample", "float32", ["batch", L, hw, hw])]
        export_onnx(VAEEncoderWrap(vae), enc_in, enc_out, os.path.join(tmp, "vae_encoder/model.onnx"), gen)
        comps["vae_encoder"] = dict(path="vae_encoder/model.onnx", inputs=tensor_specs(enc_in),
                                    outputs=tensor_specs(enc_out))
    for c in comps.values():
        c["sha256"] = sha256(os.path.join(tmp, c["path"]))
    # tokenizer, scheduler, model_index
    os.makedirs(os.path.join(tmp, "tokenizer"))
    tok.save(os.path.join(tmp, "tokenizer/vocab.json"))
    json.dump(dict(type="word", max_length=tok.max_length, lowercase=True, split="[^a-z0-9]+", pad_token="<pad>",
                   unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"),
              open(os.path.join(tmp, "tokenizer/tokenizer_config.json"), "w"), indent=1)
    os.makedirs(os.path.join(tmp, "scheduler"))
    json.dump(scheduler_config(prediction), open(os.path.join(tmp, "scheduler/scheduler_config.json"), "w"), indent=1)
    json.dump({"_class_name": "OnnxStableDiffusionPipeline", "_diffusers_version": "0.0-tiny-shapes",
               "text_encoder": ["onnx", "model"], "tokenizer": ["tiny_shapes", "WordTokenizer"],
               "unet": ["onnx", "model"], "vae_decoder": ["onnx", "model"],
               **({"vae_encoder": ["onnx", "model"]} if vae_encoder else {}),
               "scheduler": ["diffusers", scheduler_config(prediction)["_class_name"]]},
              open(os.path.join(tmp, "model_index.json"), "w"), indent=1)
    targets = []
    if lora_mode == "merge":
        for t, (name, layout) in zip(unet.lora_target_info(), merge_weight_names(os.path.join(tmp, "unet/model.onnx"), unet)):
            targets.append(dict(module=t["path"], kind=t["kind"], in_features=t["in_features"],
                                out_features=t["out_features"], components=["unet"], weight={"unet": name},
                                weight_layout=layout))
    for k, t in enumerate(io.targets):
        d, u = lora_names(k)
        part_comp = {"head": "unet_head", "deep": "unet_deep", "tail": "unet_tail"}[t["part"]]
        targets.append(dict(module=t["path"], kind=t["kind"], in_features=t["in_features"],
                            out_features=t["out_features"], components=["unet", part_comp] if split else ["unet"],
                            down_input=d, up_input=u))
    if lora_mode == "branch":
        # The weights too, per component: the runner merges a hot add-on set into them (addons/runtime.ts).
        for c in sorted({c for t in targets for c in t["components"]}):  # sorted: the same manifest every export
            mine = [t for t in targets if c in t["components"]]
            names = merge_weight_names(os.path.join(tmp, comps[c]["path"]), unet, {t["module"] for t in mine})
            for t, (wname, layout) in zip(mine, names):
                t.setdefault("weight", {})[c] = wname
                if t.setdefault("weight_layout", layout) != layout:
                    raise BundleMismatch(f"{t['module']}: its weight is stored {layout} in {c}, {t['weight_layout']} elsewhere")
    guidance = dict(cfg=bool(cfg), default_scale=float(guidance_scale))
    if io.cond:
        guidance["embedding"] = dict(input="timestep_cond", dim=unet.config["cond_dim"], w_scale=1000.0)
    manifest = dict(
        schema_version=1, kind="diffusion", name=name, family=family, version=version, description=description,
        prediction_type=prediction, samplers=list(samplers), default_sampler=default_sampler,
        default_steps=int(default_steps),
        image=dict(width=hw * 4, height=hw * 4, channels=3, min_size=hw * 4, max_size=hw * 4, multiple_of=hw * 4),
        latent=dict(channels=L, downsample=4, scaling_factor=float(scaling_factor)),
        scheduler=dict(num_train_timesteps=models.NUM_TRAIN_TIMESTEPS, beta_schedule="scaled_linear",
                       beta_start=models.BETA_START, beta_end=models.BETA_END, original_inference_steps=50,
                       timestep_scaling=10.0),
        guidance=guidance,
        tokenizer=dict(type="word", vocab="vocab.json", max_length=tok.max_length, lowercase=True,
                       pad_id=models.PAD, unk_id=models.UNK, bos_id=models.BOS, eos_id=models.EOS),
        components=comps,
        lora=dict(mode=lora_mode, max_rank=64, targets=targets),
        **({"cache": dict(kind="deepcache", head="unet_head", deep="unet_deep", tail="unet_tail",
                          cached_feature="deep_feature", branch=0)} if split else {}),
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


def onnx_initializers(bundle_dir, comp):
    import onnx
    path = os.path.join(bundle_dir, comp["path"])
    return {i.name for i in onnx.load(path).graph.initializer} if os.path.exists(path) else set()


def merge_weight_names(onnx_path, unet, paths=None):
    """Each LoRA target's weight initializer in the exported graph (of the targets in `paths`, default all), found
    by value (node names are compacted): a Linear on tokens exports as MatMul with Wᵀ ("in_out"); as Gemm it keeps
    W ("out_in"), as does a Conv. With fp16 storage the float16 initializer is the one named."""
    import onnx
    from onnx import numpy_helper
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(onnx_path).graph.initializer}
    mods = dict(unet.named_modules())
    out = []
    for t in unet.lora_target_info():
        if paths is not None and t["path"] not in paths:
            continue
        w = mods[t["path"]].weight.detach().float().numpy()
        hit = [(n, "in_out") for n, a in inits.items() if w.ndim == 2 and a.shape == w.T.shape and np.array_equal(a, w.T)]
        hit += [(n, "out_in") for n, a in inits.items() if a.shape == w.shape and np.array_equal(a, w)]
        if len(hit) != 1:
            raise BundleMismatch(f"merge mode: {len(hit)} initializers hold the weight of {t['path']} (need exactly 1)")
        out.append(hit[0])
    return out


def dir_size(d):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)


@torch.no_grad()
def check_numerics(bundle, io, te, vae, gen, check_ort, log, split=True, vae_encoder=True):
    u = io.unet
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
            o = ort_run([(os.path.join(bundle, "unet/model.onnx"), feeds)]
                        + ([(os.path.join(bundle, "unet_head/model.onnx"), head_in)] if split else []))
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
        o = ort_run([(os.path.join(bundle, "text_encoder/model.onnx"), {"input_ids": ids}),
                     (os.path.join(bundle, "vae_decoder/model.onnx"), {"latent_sample": z})]
                    + ([(os.path.join(bundle, "vae_encoder/model.onnx"), {"sample": img})] if vae_encoder else []))
        if o is not None:
            res["ort text encoder"] = float(np.abs(o[0]["last_hidden_state"] - te(ids).numpy()).max())
            res["ort vae decoder"] = float(np.abs(o[1]["sample"] - VAEDecoderWrap(vae)(z).numpy()).max())
            if vae_encoder:
                res["ort vae encoder"] = float(np.abs(o[2]["latent_sample"] - VAEEncoderWrap(vae)(img).numpy()).max())
            for k in ("ort text encoder", "ort vae decoder", "ort vae encoder"):
                if res.get(k, 0.0) > 1e-3:
                    raise BundleMismatch(f"onnxruntime disagrees: {res}")
    log("numeric checks: " + ", ".join(f"{k}={v:.2e}" for k, v in res.items()))


def write_controlnet(out_dir, *, name, version, description, cn: models.ControlNet, unet_io: UNetIO, seed=0,
                     check_ort=True, log=print, family=FAMILY):
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
    manifest = dict(schema_version=1, kind="controlnet", name=name, family=family, version=version,
                    description=description,
                    conditioning=dict(type="mask", width=unet_io.hw * 4, height=unet_io.hw * 4, channels=1,
                                      range=[0.0, 1.0]),
                    components=dict(controlnet=comp), residuals={n: n for n in RES_NAMES})
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


# ----------------------------------------------------------------------------------------------
# random test bundles
# ----------------------------------------------------------------------------------------------
RANKS = (0, 4)
MICRO = dict(ch=(8, 8, 16), tdim=16, ctx_dim=16, heads=(1, 1, 1), latent=4, hw=16)


def random_lora(unet, rank, gen, scale=0.3):
    """Small random branches (tests check that they act about linearly): a 3x3 kernel's nine taps each get a third."""
    out = {}
    for t in unet.lora_target_info():
        s = scale / 3 if t["kind"] == "conv3x3" else scale
        out[t["path"]] = (torch.randn(rank, t["down_features"], generator=gen) * s,
                          torch.randn(t["out_features"], rank, generator=gen) * s)
    return out


def export_random(root=MODELS_DIR):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    tok = models.default_tokenizer()
    te = models.TextEncoder(len(tok.vocab), dim=16, layers=1, heads=2)
    vae = models.VAE(ch=(8, 8, 8))
    variants = [
        ("tiny-shapes-random", dict(prediction="epsilon", samplers=("ddim", "lcm"), default_sampler="ddim",
                                    default_steps=50, cfg=True), 0),
        ("tiny-shapes-random-lcm", dict(prediction="epsilon", samplers=("lcm",), default_sampler="lcm",
                                        default_steps=4, cfg=False, guidance_scale=8.0), 16),
        ("tiny-shapes-random-rf", dict(prediction="flow", samplers=("rectified-flow",),
                                       default_sampler="rectified-flow", default_steps=1, cfg=False,
                                       guidance_scale=1.0), 0),
    ]
    manifests = {}
    for name, kw, cond_dim in variants:
        torch.manual_seed(1)
        unet = models.UNet(**MICRO, cond_dim=cond_dim)
        manifests[name] = write_bundle(
            os.path.join(root, name), name=name, version="0.0.1-random",
            description="RANDOMLY INITIALISED (untrained, seed 1) test bundle of the tiny-shapes family: "
                        "correct interface, meaningless images.",
            unet=unet, te=te, tok=tok, vae=vae, scaling_factor=0.5, family=RANDOM_FAMILY, **kw)
        if name == "tiny-shapes-random":
            base_unet = unet
    # add-ons for the random base
    addons = os.path.join(root, "tiny-shapes-random", "addons")
    lo = random_lora(base_unet, 4, gen)
    save_safetensors(os.path.join(addons, "random-lora-kohya.safetensors"), lora_to_kohya(lo, alpha=4.0, unet=base_unet),
                     {"family": RANDOM_FAMILY, "format": "kohya", "rank": "4", "trigger": "", "note": "random test LoRA"})
    lo2 = random_lora(base_unet, 2, gen)
    save_safetensors(os.path.join(addons, "random-lora-peft.safetensors"), lora_to_peft(lo2, base_unet),
                     {"family": RANDOM_FAMILY, "format": "peft", "r": "2", "lora_alpha": "2", "note": "random test LoRA"})
    torch.manual_seed(2)
    cn = models.ControlNet(base_unet)
    for m in list(cn.zero_convs) + [cn.mid_zero, cn.hint[-1]]:  # random, so tests can see the residuals act
        nn.init.normal_(m.weight, std=0.1)
        nn.init.normal_(m.bias, std=0.1)
    write_controlnet(os.path.join(addons, "random-controlnet-mask"), name="tiny-shapes-random-controlnet-mask",
                     version="0.0.1-random", description="RANDOMLY INITIALISED mask ControlNet (test only)",
                     cn=cn, unet_io=UNetIO(base_unet), family=RANDOM_FAMILY)
    write_checksums(root)
    print(f"total {dir_size(root) / 1e6:.2f} MB under {root}")


# ----------------------------------------------------------------------------------------------
# trained bundles
# ----------------------------------------------------------------------------------------------
def fp16_storage(path, min_elems=256):
    """Store large float32 initializers as float16 + a Cast to float32 (onnxruntime folds the casts when it
    loads the session, so the graph still computes in float32). Lossless for weights that are already
    fp16-representable (the committed checkpoints keep fp16 weights); roughly halves the committed size."""
    import onnx
    from onnx import helper, numpy_helper
    m = onnx.load(path)
    g = m.graph
    new_init, casts = [], []
    for init in g.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and int(np.prod(init.dims)) >= min_elems:
            a = numpy_helper.to_array(init)
            h = a.astype(np.float16)
            if not np.array_equal(h.astype(np.float32), a):
                new_init.append(init)  # not exactly representable: keep float32
                continue
            new_init.append(numpy_helper.from_array(h, init.name + "_fp16"))
            casts.append(helper.make_node("Cast", [init.name + "_fp16"], [init.name], to=onnx.TensorProto.FLOAT,
                                          name=f"cast_{len(casts)}"))
        else:
            new_init.append(init)
    del g.initializer[:]
    g.initializer.extend(new_init)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    onnx.checker.check_model(m)
    onnx.save(m, path)


def _round_fp16(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())
    return module


EVALUATOR_DIR = os.path.join(MODELS_DIR, "evaluator")
EVAL_N = 256


class _EvaluatorOnnx(nn.Module):
    def __init__(self, ev):
        super().__init__()
        self.ev = ev

    def forward(self, image):
        out, f = self.ev(image)
        return tuple(out[k] for k in data.ATTRS) + (out["styles"], f)


def export_evaluator(out_dir=EVALUATOR_DIR, log=print):
    """The evaluator for the TypeScript side (quality columns of the benches, end-to-end pixel checks):
    evaluator.onnx (image [-1,1] [B,3,64,64] -> attribute logits, style logits, 128-d features), the held-out
    prompts with their attributes, their shape masks (ControlNet IoU) and the Frechet reference statistics.
    Weights are rounded to fp16 for storage; the reference statistics are recomputed with the rounded network on
    the same 2000 held-out real images, and the agreement with the float32 evaluator is recorded."""
    import evaluate
    import train
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
        torch.onnx.export(wrapped, (torch.zeros(2, 3, 64, 64),), onnx_path, opset_version=OPSET,
                          input_names=["image"], output_names=heads,
                          dynamic_axes={n: {0: "batch"} for n in ["image"] + heads}, do_constant_folding=True)
    compact_onnx(onnx_path)
    fp16_storage(onnx_path)
    # held-out real images: reference statistics and agreement of the rounded network with the float32 one
    imgs, _, _, labs, _ = data.batch_arrays(np.arange(0, 2000))
    x = train.to_img_tensor(imgs)
    with torch.no_grad():
        o16 = [ev(x[i:i + 250]) for i in range(0, 2000, 250)]
        o32 = [ev32(x[i:i + 250]) for i in range(0, 2000, 250)]
    feats = torch.cat([f for _, f in o16]).double()
    mu, cov = feats.mean(0), torch.cov(feats.T)
    agree = {a: float(torch.cat([(p[0][a].argmax(1) == q[0][a].argmax(1)) for p, q in zip(o16, o32)]).float().mean())
             for a in data.ATTRS}
    acc = {a: float((torch.cat([p[0][a].argmax(1) for p in o16]) == torch.from_numpy(labs[a])).float().mean())
           for a in data.ATTRS}
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
        schema_version=1, kind="evaluator", family=FAMILY,
        description="tiny-shapes evaluator: predicts shape, colour, size, position, background and style bits of a "
                    "64x64 image; 128-d features for the Frechet distance. Trained on real rendered images only.",
        onnx="evaluator.onnx", input=dict(name="image", shape=["batch", 3, 64, 64], range=[-1, 1]),
        attributes={a: list(data.ATTR_CLASSES[a]) for a in data.ATTRS}, styles=list(data.STYLES),
        style_threshold_logit=0.0, features=dict(name="features", dim=int(mu.shape[0])),
        colors={k: list(v) for k, v in data.COLORS.items()},
        fid_reference=dict(file="fid_ref.f64", n_real=2000, layout="mean[dim] then cov[dim*dim], float64 LE"),
        heldout=dict(n=EVAL_N, masks="heldout_masks.bits", masks_layout="n x 64x64 bits, row-major, MSB first",
                     prompts=[dict(seed=int(sd), prompt=cap, attributes=at) for sd, at, cap in prompts]),
        checks=dict(fp16_vs_fp32_argmax_agreement=agree, heldout_real_accuracy=acc, ort_max_abs_err=ort_err),
    )
    with open(os.path.join(tmp, "evaluator.json"), "w") as f:
        json.dump(meta, f, indent=1)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    log(f"evaluator exported: real held-out accuracy {acc}, fp16/fp32 agreement {agree}, ort err {ort_err}")


def export_trained(root=MODELS_DIR, log=print):
    import train
    global FP16_STORAGE
    FP16_STORAGE = True
    ck_dir = train.CKPT
    vae, sf = train.load_vae()
    _round_fp16(vae)
    if not os.path.exists(os.path.join(ck_dir, "base.pt")):
        raise SystemExit("no checkpoints/base.pt yet")
    tok, unet, te, ck = train.load_base(ema=True)
    status = "finished" if ck.get("finished") else f"PARTIAL (training still in progress at step {ck['step']})"
    base_dir = os.path.join(root, FAMILY)
    common = dict(te=te, tok=tok, vae=vae, scaling_factor=sf)
    addons_keep = None
    if os.path.isdir(os.path.join(base_dir, "addons")):  # keep add-ons across a re-export of the base
        addons_keep = tempfile.mkdtemp()
        shutil.copytree(os.path.join(base_dir, "addons"), os.path.join(addons_keep, "addons"))
    write_bundle(base_dir, name=FAMILY, version=f"0.1.0-step{ck['step']}",
                 description=f"tiny-shapes base: epsilon U-Net ({models.count_params(unet)} params) on 16x16x4 "
                             f"latents, EMA weights after {ck['step']} steps; {status}. DDIM-50 with CFG 4.",
                 unet=unet, prediction="epsilon", samplers=("ddim", "lcm"), default_sampler="ddim",
                 default_steps=50, guidance_scale=4.0, cfg=True, log=log, **common)
    if addons_keep:
        shutil.copytree(os.path.join(addons_keep, "addons"), os.path.join(base_dir, "addons"))
    addons = os.path.join(base_dir, "addons")
    export_loras(root, unet)
    if train.stage_finished("controlnet"):
        cn = _round_fp16(train.load_controlnet(unet))
        write_controlnet(os.path.join(addons, "controlnet-mask"), name="tiny-shapes-controlnet-mask",
                         version="0.1.0", description="mask ControlNet for tiny-shapes (64x64 mask in [0,1])",
                         cn=cn, unet_io=UNetIO(unet), log=log)
    if train.stage_finished("lcm"):
        lcm = train.load_lcm()
        write_bundle(os.path.join(root, FAMILY + "-lcm"), name=FAMILY + "-lcm", version="0.1.0",
                     description="tiny-shapes LCM: consistency-distilled from the base, guidance embedding input "
                                 "(timestep_cond), 2-8 steps, no CFG pass.",
                     unet=lcm, prediction="epsilon", samplers=("lcm",), default_sampler="lcm", default_steps=4,
                     guidance_scale=4.0, cfg=False, log=log, vae_encoder=False, **common)
    if train.stage_finished("rf"):
        rck = torch.load(os.path.join(ck_dir, "rf.pt"), map_location="cpu")
        rf = models.UNet(**rck["config"])
        rf.load_state_dict({k: v.float() for k, v in rck["model"].items()})
        write_bundle(os.path.join(root, FAMILY + "-rf"), name=FAMILY + "-rf", version="0.1.0",
                     description="tiny-shapes rectified flow (InstaFlow-style: reflow on base ODE pairs, then "
                                 "one-step distillation); velocity prediction, 1 Euler step.",
                     unet=rf.eval(), prediction="flow", samplers=("rectified-flow",),
                     default_sampler="rectified-flow", default_steps=1, guidance_scale=1.0, cfg=False, log=log,
                     split=False, vae_encoder=False, **common)
    write_checksums(root)
    log(f"total {dir_size(root) / 1e6:.2f} MB under {root}")


MERGE_DIR = os.path.join(ZOO, ".work", "bundles")


def export_loras(root=MODELS_DIR, unet=None, log=print):
    """The style LoRA add-ons of the base bundle, from checkpoints/loras.pt (also on their own, `export.py loras`,
    after the `loras` stage retrained a style: the bundles do not change)."""
    import train
    if not train.stage_finished("loras"):
        log("loras: the stage has not finished with its current recipes; add-ons left as they are")
        return
    if unet is None:
        unet = train.load_base(ema=True)[1]
    addons = os.path.join(root, FAMILY, "addons")
    lck = torch.load(os.path.join(train.CKPT, "loras.pt"), map_location="cpu")
    for style, lo in lck["loras"].items():
        # F16, as trained and checkpointed (the runner reads F16 and BF16 as well as F32): half the bytes.
        lo16 = {p: (d.half(), u.half()) for p, (d, u) in lo.items()}
        rank = next(iter(lo16.values()))[0].shape[0]  # each style's own (train.LORA_RECIPES)
        save_safetensors(os.path.join(addons, f"lora-{style}.safetensors"), lora_to_kohya(lo16, rank, unet),
                         {"family": FAMILY, "format": "kohya", "rank": str(rank), "trigger": style})
        if style == "pastel":
            save_safetensors(os.path.join(addons, f"lora-{style}-peft.safetensors"), lora_to_peft(lo16, unet),
                             {"family": FAMILY, "format": "peft", "r": str(rank),
                              "lora_alpha": str(rank), "trigger": style})
        log(f"loras: wrote lora-{style}.safetensors")


def export_merge(out_root=MERGE_DIR, log=print):
    """A merge-mode twin of the LCM bundle (the base's if LCM has not finished): same weights, no LoRA branch
    inputs, float32. Not committed (8 MB; rebuilt from the checkpoints in seconds): the add-on bench's
    merge-and-rebuild rows and the stacked-vs-merged check on trained weights use it."""
    import train
    vae, sf = train.load_vae()
    _round_fp16(vae)
    tok, unet, te, _ = train.load_base(ema=True)
    lcm = train.stage_finished("lcm")
    if lcm:
        unet = train.load_lcm()
    _round_fp16(unet)
    name = FAMILY + ("-lcm" if lcm else "") + "-merge"
    write_bundle(os.path.join(out_root, name), name=name, version="0.1.0",
                 description="merge-mode twin of " + FAMILY + ("-lcm" if lcm else "") + ": LoRAs are merged into the "
                             "weights (a session per add-on set) instead of fed as branch inputs",
                 unet=unet, prediction="epsilon", samplers=("lcm",) if lcm else ("ddim", "lcm"),
                 default_sampler="lcm" if lcm else "ddim", default_steps=4 if lcm else 50,
                 guidance_scale=4.0, cfg=not lcm, log=log, split=False, vae_encoder=False, lora_mode="merge",
                 te=te, tok=tok, vae=vae, scaling_factor=sf)


if __name__ == "__main__":
    torch.set_num_threads(1)
    what = sys.argv[1] if len(sys.argv) > 1 else "random"
    if what == "random":
        export_random()
    elif what == "trained":
        export_trained()
        export_evaluator()
        write_checksums(MODELS_DIR)
    elif what == "evaluator":
        export_evaluator()
        write_checksums(MODELS_DIR)
    elif what == "merge":
        export_merge()
    elif what == "loras":
        export_loras()
        write_checksums(MODELS_DIR)
    else:
        raise SystemExit(f"unknown target {what} (use: random | trained | evaluator | loras | merge)")
