"""The PyTorch modules each ONNX component is exported from, with the bundle's tensor names (UNetIO says which
inputs a U-Net part takes)."""

from __future__ import annotations

import torch.nn as nn

from zoo import data, models


def lora_names(k):
    return f"lora_{k}_down", f"lora_{k}_up"


RES_NAMES = [
    "down_block_0_additional_residual",
    "down_block_1_additional_residual",
    "down_block_2_additional_residual",
    "mid_block_additional_residual",
]


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
        ins = [
            ("sample", "float32", ["batch", L, hw, hw]),
            ("timestep", "float32", ["batch"]),
            ("encoder_hidden_states", "float32", ["batch", models.MAX_LENGTH, self.D]),
        ]
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
        return (
            self.base_inputs() + self.lora_inputs() + self.residual_inputs([0, 1, 2, 3]),
            [("out_sample", "float32", ["batch", L, hw, hw])],
        )

    def head(self):
        return (
            self.base_inputs() + self.lora_inputs("head"),
            [("skip_0", "float32", ["batch", self.ch[0], self.hw, self.hw])],
        )

    def deep(self):
        ins = [("skip_0", "float32", ["batch", self.ch[0], self.hw, self.hw])] + self.base_inputs()[1:]
        return (
            ins + self.lora_inputs("deep") + self.residual_inputs([1, 2, 3]),
            [("deep_feature", "float32", ["batch", self.ch[1], self.hw, self.hw])],
        )

    def tail(self):
        L, hw = self.unet.config["latent"], self.hw
        ins = [
            ("deep_feature", "float32", ["batch", self.ch[1], hw, hw]),
            ("skip_0", "float32", ["batch", self.ch[0], hw, hw]),
        ] + self.base_inputs()[1:]
        return (
            ins + self.lora_inputs("tail") + self.residual_inputs([0]),
            [("out_sample", "float32", ["batch", L, hw, hw])],
        )


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


class _EvaluatorOnnx(nn.Module):
    def __init__(self, ev):
        super().__init__()
        self.ev = ev

    def forward(self, image):
        out, f = self.ev(image)
        return tuple(out[k] for k in data.ATTRS) + (out["styles"], f)
