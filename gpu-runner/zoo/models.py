"""Networks of the `tiny-shapes` family: tokenizer, text encoder, VAE, U-Net (with LoRA branch inputs,
ControlNet residual inputs, optional LCM guidance embedding, DeepCache split), ControlNet, evaluator.

Everything here exports to ONNX opset 17 with torch 1.13 (plain matmul/softmax attention, GroupNorm,
nearest upsampling, no fused kernels).
"""

from __future__ import annotations

import json
import math
import re

import torch
import torch.nn as nn
import torch.nn.functional as F

MAX_LENGTH = 16
PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]


# ----------------------------------------------------------------------------------------------
# Noise schedule (SD scaled-linear; REFERENCE.md)
# ----------------------------------------------------------------------------------------------
NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012


def alphas_cumprod(dtype=torch.float64) -> torch.Tensor:
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, 0).to(dtype)


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------
class WordTokenizer:
    """Lowercase, split on non-alphanumerics, <bos> words <eos>, pad with <pad>=0 to MAX_LENGTH.
    Unknown words map to <unk>=1. Too-long captions are truncated, keeping the final <eos>."""

    def __init__(self, vocab: dict, max_length: int = MAX_LENGTH):
        self.vocab = vocab
        self.max_length = max_length

    @classmethod
    def from_words(cls, words):
        vocab = {w: i for i, w in enumerate(SPECIALS)}
        for w in words:
            if w not in vocab:
                vocab[w] = len(vocab)
        return cls(vocab)

    @classmethod
    def load(cls, path):
        return cls(json.load(open(path)))

    def save(self, path):
        with open(path, "w") as f:
            json.dump(self.vocab, f, indent=0, sort_keys=False)

    def ids(self, text: str):
        words = re.findall(r"[a-z0-9]+", text.lower())
        ids = [BOS] + [self.vocab.get(w, UNK) for w in words][: self.max_length - 2] + [EOS]
        return ids + [PAD] * (self.max_length - len(ids))

    def __call__(self, texts):
        return torch.tensor([self.ids(t) for t in texts], dtype=torch.int64)


def default_tokenizer():
    from zoo import data

    return WordTokenizer.from_words(data.vocabulary())


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------
# The convolution LoRA branch is a scripted function so that the ONNX export keeps its `if`: an If node that skips
# the branch when its rank is 0 (no LoRA at that layer, as in most requests). Measured on the trained U-Net with no
# LoRA (bench/GRAPH.md), its 16 branches cost +13-17% without the If, +4-7% with it. (Linear branches keep their
# zero-rank padding: inside Ifs they measured no cheaper.)
@torch.jit.script
def conv_lora_branch(
    y: torch.Tensor,
    x: torch.Tensor,
    down: torch.Tensor,
    up: torch.Tensor,
    taps: torch.Tensor,
    C: int,
    O: int,
    H: int,
    W: int,
) -> torch.Tensor:
    """LoRAConv2d's branch (see there); y itself when the rank is 0. Inside, the rank is at least 1, so no padding
    rank is needed against onnxruntime's MatMul with an inner dimension of 0 (see LoRALinear)."""
    if down.size(1) > 0:
        if down.size(0) == 1 and up.size(0) == 1:
            # One LoRA set for every sample (the runner feeds batch 1 then, e.g. CFG's two passes or one image): the
            # LoRA as it is defined, two convolutions whose weights are the inputs.
            h = F.conv2d(x, down.reshape(-1, C, 3, 3), padding=1)  # [B, r, H, W]
            y = y + F.conv2d(h, up.reshape(O, -1, 1, 1))
        else:
            z = torch.matmul(down.transpose(2, 3), x.reshape(-1, 1, C, H * W))  # [B, r, 9, HW]
            h = F.conv2d(z.reshape(-1, 9, H, W), taps, padding=1)  # [B*r, 1, H, W]
            h = h.reshape(z.size(0), z.size(1), H * W)  # [B, r, HW]
            y = y + torch.matmul(up, h).reshape(-1, O, H, W)
    return y


class LoRALinear(nn.Linear):
    """nn.Linear with an optional per-sample low-rank branch:
        y = W x + b + (x @ down^T) @ up^T,   down [B, r, in], up [B, out, r]  (r may be 0).
    The branch is supplied through `UNet.lora` (a dict path -> (down, up)) at call time."""

    path: str = ""
    owner = None

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        ctx = self.owner[0].lora if self.owner is not None else None
        if ctx is not None and self.path in ctx:
            down, up = ctx[self.path]
            # One zero rank is appended inside the graph: onnxruntime's MatMul with an inner dimension of 0
            # (rank 0 = "no LoRA") returns uninitialised memory instead of zeros (seen with onnxruntime-node
            # 1.30); with the padding rank 0 is exact and any rank gives the same result as without it.
            down = F.pad(down, (0, 0, 0, 1))
            up = F.pad(up, (0, 1))
            if x.dim() == 2:
                y = y + torch.bmm(torch.bmm(x.unsqueeze(1), down.transpose(1, 2)), up.transpose(1, 2)).squeeze(1)
            else:
                y = y + torch.bmm(torch.bmm(x, down.transpose(1, 2)), up.transpose(1, 2))
        return y


class LoRAConv2d(nn.Conv2d):
    """3x3 nn.Conv2d (stride 1, padding 1) with an optional per-sample low-rank branch in the LoCon manner:
        y = conv(x) + up . (down * x),   down: a 3x3 conv cin -> r, up: a 1x1 conv r -> cout.
    Supplied like LoRALinear's, through `UNet.lora`: down [B, r, cin, 9] (kohya's lora_down [r, cin, 3, 3] with the
    kernel flattened, tap k = ky*3 + kx; [B, r, cin*9] is accepted outside the graph), up [B, cout, r].
    The branch is conv_lora_branch: with one LoRA set for every sample (batch-1 inputs, or one LoRA expanded over the
    batch in training) it runs as the two convolutions; per sample, in the exported graph, tap by tap: Z_k = down_k x
    for the nine taps in one MatMul ([B, r, 9, cin] x [B, 1, cin, HW]), then h(p) = sum_k Z_k(p + offset_k), a
    constant 3x3 convolution of each rank's nine maps (weight [1, 9, 3, 3], the rank folded into the batch), then up
    as a MatMul. Building the 3x3 patches instead (im2col as a depthwise Conv) cost the trained U-Net +41% with no
    LoRA (bench/GRAPH.md), and padded reshapes with dynamic sizes add dozens of shape nodes per branch; here every
    size but batch and rank is a constant."""

    path: str = ""
    owner = None

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        taps = torch.eye(9).view(1, 9, 3, 3)  # channel k has a one at tap k
        self.register_buffer("taps", taps, persistent=False)

    def forward(self, x):
        y = super().forward(x)
        ctx = self.owner[0].lora if self.owner is not None else None
        if ctx is not None and self.path in ctx:
            down, up = ctx[self.path]
            # Plain ints (constants in the graph; the exported U-Net's spatial sizes are fixed, only batch and rank vary).
            C, O, H, W = self.in_channels, self.out_channels, int(x.shape[2]), int(x.shape[3])
            if down.dim() == 3:
                down = down.reshape(down.shape[0], down.shape[1], C, 9)
            if not torch.onnx.is_in_onnx_export():
                if down.stride(0) == 0 and up.stride(0) == 0:
                    # One LoRA expanded over the batch (LoRA training, evaluation): the shared form, two batched
                    # convolutions, 1.9x faster than the patches below.
                    return conv_lora_branch(y, x, down[:1], up[:1], self.taps, C, O, H, W)
                if down.shape[1] > 0:
                    # Per sample outside the graph: the branch on the 3x3 patches (nine shifted slices), 3x faster
                    # than the graph's form under autograd (a training step 0.35-0.44 s against 1.1-1.6 s, batch 32,
                    # one thread). tests/test_lora_branches.py and the export's numeric check (ONNX against this)
                    # hold the forms equal.
                    B = x.shape[0]
                    xp = F.pad(x, (1, 1, 1, 1))
                    cols = torch.stack([xp[:, :, i : i + H, j : j + W] for i in range(3) for j in range(3)], 2)
                    h = torch.bmm(down.reshape(B, down.shape[1], C * 9), cols.reshape(B, C * 9, H * W))
                    y = y + torch.bmm(up, h).reshape(B, O, H, W)
                return y
            return conv_lora_branch(y, x, down, up, self.taps, C, O, H, W)
        return y


def gn(c):
    return nn.GroupNorm(min(8, c // 4) if c >= 8 else 1, c, eps=1e-5)


class Attention(nn.Module):
    def __init__(self, dim, ctx_dim=None, heads=1, lora=False):
        super().__init__()
        L = LoRALinear if lora else nn.Linear
        ctx_dim = ctx_dim or dim
        self.heads = heads
        self.to_q = L(dim, dim, bias=False)
        self.to_k = L(ctx_dim, dim, bias=False)
        self.to_v = L(ctx_dim, dim, bias=False)
        self.to_out = L(dim, dim)

    def forward(self, x, ctx=None):
        ctx = x if ctx is None else ctx
        B, N, C = x.shape
        h = self.heads
        q = self.to_q(x).reshape(B, N, h, C // h).transpose(1, 2)
        k = self.to_k(ctx).reshape(B, ctx.shape[1], h, C // h).transpose(1, 2)
        v = self.to_v(ctx).reshape(B, ctx.shape[1], h, C // h).transpose(1, 2)
        a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(C // h)), dim=-1)
        o = torch.matmul(a, v).transpose(1, 2).reshape(B, N, C)
        return self.to_out(o)


class SpatialTransformer(nn.Module):
    """proj_in -> [+2-D positional embedding] -> (self-attn) -> cross-attn over text -> FF -> proj_out, residual."""

    def __init__(self, c, ctx_dim, hw, heads, self_attn=True, lora_cross=False, lora_proj=False):
        super().__init__()
        self.norm = gn(c)
        self.proj_in = (LoRALinear if lora_proj else nn.Linear)(c, c)
        self.pos = nn.Parameter(torch.randn(1, hw * hw, c) * 0.02)
        self.self_attn = self_attn
        if self_attn:
            self.norm1 = nn.LayerNorm(c)
            self.attn1 = Attention(c, None, heads)
        self.norm2 = nn.LayerNorm(c)
        self.attn2 = Attention(c, ctx_dim, heads, lora=lora_cross)
        self.norm3 = nn.LayerNorm(c)
        self.ff1 = nn.Linear(c, 2 * c)
        self.ff2 = nn.Linear(2 * c, c)
        self.proj_out = (LoRALinear if lora_proj else nn.Linear)(c, c)

    def forward(self, x, ctx):
        B, C, H, W = x.shape
        t = self.norm(x).reshape(B, C, H * W).transpose(1, 2)
        t = self.proj_in(t) + self.pos
        if self.self_attn:
            t = t + self.attn1(self.norm1(t))
        t = t + self.attn2(self.norm2(t), ctx)
        t = t + self.ff2(F.gelu(self.ff1(self.norm3(t))))
        t = self.proj_out(t)
        return x + t.transpose(1, 2).reshape(B, C, H, W)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, tdim):
        super().__init__()
        self.norm1 = gn(cin)
        self.conv1 = LoRAConv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(tdim, cout)
        self.norm2 = gn(cout)
        self.conv2 = LoRAConv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def sinusoidal(t: torch.Tensor, dim: int, sin_first: bool = False, max_period: float = 10000.0):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    s, c = torch.sin(args), torch.cos(args)
    return torch.cat([s, c] if sin_first else [c, s], dim=-1)


def guidance_embedding(guidance: torch.Tensor, dim: int):
    """LCM `timestep_cond`, exactly diffusers' `get_guidance_scale_embedding` (LatentConsistencyModelPipeline):
    w = (guidance - 1) * 1000;  half = dim // 2;  f_j = exp(-ln(10000) * j / (half - 1)),  j = 0..half-1
    emb = [sin(w * f_0..f_{half-1}), cos(w * f_0..f_{half-1})]      (sin first, then cos)"""
    w = (guidance.float() - 1.0) * 1000.0
    half = dim // 2
    f = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    a = w[:, None] * f[None]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


class TimeEmbedding(nn.Module):
    def __init__(self, base, tdim, cond_dim=0):
        super().__init__()
        self.base = base
        self.linear_1 = nn.Linear(base, tdim)
        self.linear_2 = nn.Linear(tdim, tdim)
        self.cond_proj = nn.Linear(cond_dim, base, bias=False) if cond_dim else None

    def forward(self, timestep, timestep_cond=None):
        e = sinusoidal(timestep, self.base)
        if self.cond_proj is not None:
            e = e + self.cond_proj(timestep_cond)
        return self.linear_2(F.silu(self.linear_1(e)))


def coord_channels(x):
    B, _, H, W = x.shape
    ys = torch.linspace(-1.0, 1.0, H, device=x.device).view(1, 1, H, 1).expand(B, 1, H, W)
    xs = torch.linspace(-1.0, 1.0, W, device=x.device).view(1, 1, 1, W).expand(B, 1, H, W)
    return torch.cat([x, xs, ys], 1)


# ----------------------------------------------------------------------------------------------
# U-Net
# ----------------------------------------------------------------------------------------------
UNET_CONFIGS = {
    # trained model
    "base": dict(ch=(32, 64, 96), tdim=128, ctx_dim=64, heads=(1, 2, 3), latent=4, hw=16),
    # random test bundle (tiny)
    "tiny": dict(ch=(8, 16, 24), tdim=32, ctx_dim=32, heads=(1, 1, 1), latent=4, hw=16),
}


class UNet(nn.Module):
    """Text-conditioned U-Net on 16x16x4 latents, epsilon prediction.

    conv_in(+coord channels) -> down_blocks.0 @16 -> [down] down_blocks.1 @8 -> [down] down_blocks.2 @4
    -> mid_block @4 -> up_blocks.0 @4 (+skip2) -> [up] up_blocks.1 @8 (+skip1) -> [up] up_blocks.2 @16 (+skip0)
    -> conv_out.  Skips: skip_i = output of down_blocks.i; ControlNet residual i is added to skip_i,
    the mid residual to the mid output.

    DeepCache split at skip branch 0:
      head = conv_in + down_blocks.0                            -> skip_0
      deep = downsample, down_blocks.1..2, mid, up_blocks.0..1   -> deep_feature (enters up_blocks.2)
      tail = up_blocks.2(cat(deep_feature, skip_0 + res_0)) + conv_out
    """

    def __init__(self, ch=(32, 64, 128), tdim=128, ctx_dim=64, heads=(1, 2, 4), latent=4, hw=16, cond_dim=0):
        super().__init__()
        c0, c1, c2 = ch
        self.config = dict(
            ch=tuple(ch), tdim=tdim, ctx_dim=ctx_dim, heads=tuple(heads), latent=latent, hw=hw, cond_dim=cond_dim
        )
        self.time_embedding = TimeEmbedding(c0 * 2, tdim, cond_dim)
        self.conv_in = nn.Conv2d(latent + 2, c0, 3, padding=1)
        h0, h1, h2 = hw, hw // 2, hw // 4
        D = nn.ModuleDict
        self.down_blocks = nn.ModuleList(
            [
                D(
                    dict(
                        res=ResBlock(c0, c0, tdim),
                        attn=SpatialTransformer(c0, ctx_dim, h0, heads[0], self_attn=False, lora_cross=True),
                    )
                ),
                D(dict(res=ResBlock(c0, c1, tdim), attn=SpatialTransformer(c1, ctx_dim, h1, heads[1], lora_proj=True))),
                D(dict(res=ResBlock(c1, c2, tdim), attn=SpatialTransformer(c2, ctx_dim, h2, heads[2]))),
            ]
        )
        self.downsamplers = nn.ModuleList(
            [nn.Conv2d(c0, c0, 3, stride=2, padding=1), nn.Conv2d(c1, c1, 3, stride=2, padding=1)]
        )
        self.mid_block = D(
            dict(
                res1=ResBlock(c2, c2, tdim),
                attn=SpatialTransformer(c2, ctx_dim, h2, heads[2], lora_cross=True),
                res2=ResBlock(c2, c2, tdim),
            )
        )
        self.up_blocks = nn.ModuleList(
            [
                D(dict(res=ResBlock(c2 + c2, c2, tdim), attn=SpatialTransformer(c2, ctx_dim, h2, heads[2]))),
                D(
                    dict(
                        res=ResBlock(c2 + c1, c1, tdim),
                        attn=SpatialTransformer(c1, ctx_dim, h1, heads[1], lora_proj=True),
                    )
                ),
                D(
                    dict(
                        res=ResBlock(c1 + c0, c0, tdim),
                        attn=SpatialTransformer(c0, ctx_dim, h0, heads[0], self_attn=False, lora_cross=True),
                    )
                ),
            ]
        )
        self.upsamplers = nn.ModuleList([nn.Conv2d(c2, c2, 3, padding=1), nn.Conv2d(c1, c1, 3, padding=1)])
        self.norm_out = gn(c0)
        self.conv_out = nn.Conv2d(c0, latent, 3, padding=1)
        self.lora = None  # dict path -> (down [B,r,in], up [B,out,r]) while a call is running
        self.lora_targets = []
        for kind in (LoRALinear, LoRAConv2d):  # linear targets first: they keep the graph input names they had
            for name, m in self.named_modules():
                if isinstance(m, kind):
                    m.path = name
                    m.owner = [self]  # list: not registered as a submodule
                    self.lora_targets.append(name)

    # --- description used by the exporter / LoRA trainer -------------------------------------
    def lora_target_info(self):
        mods = dict(self.named_modules())
        out = []
        for p in self.lora_targets:
            m = mods[p]
            part = "head" if p.startswith("down_blocks.0.") else "tail" if p.startswith("up_blocks.2.") else "deep"
            if isinstance(m, LoRAConv2d):  # the down input holds the flattened 3x3 kernel: in_features * 9 columns
                out.append(
                    dict(
                        path=p,
                        kind="conv3x3",
                        in_features=m.in_channels,
                        out_features=m.out_channels,
                        down_features=m.in_channels * 9,
                        part=part,
                    )
                )
            else:
                out.append(
                    dict(
                        path=p,
                        kind="linear",
                        in_features=m.in_features,
                        out_features=m.out_features,
                        down_features=m.in_features,
                        part=part,
                    )
                )
        return out

    def residual_shapes(self):
        c0, c1, c2 = self.config["ch"]
        hw = self.config["hw"]
        return [(c0, hw, hw), (c1, hw // 2, hw // 2), (c2, hw // 4, hw // 4)], (c2, hw // 4, hw // 4)

    # --- the three parts -----------------------------------------------------------------------
    def temb(self, timestep, timestep_cond=None):
        return self.time_embedding(timestep, timestep_cond)

    def head(self, sample, temb, ctx):
        h = self.conv_in(coord_channels(sample))
        b = self.down_blocks[0]
        return b["attn"](b["res"](h, temb), ctx)

    def deep(self, skip0, temb, ctx, res=None, mid_res=None):
        h = self.downsamplers[0](skip0)
        b = self.down_blocks[1]
        s1 = b["attn"](b["res"](h, temb), ctx)
        h = self.downsamplers[1](s1)
        b = self.down_blocks[2]
        s2 = b["attn"](b["res"](h, temb), ctx)
        m = self.mid_block
        h = m["res2"](m["attn"](m["res1"](s2, temb), ctx), temb)
        if res is not None:
            s1 = s1 + res[1]
            s2 = s2 + res[2]
        if mid_res is not None:
            h = h + mid_res
        b = self.up_blocks[0]
        h = b["attn"](b["res"](torch.cat([h, s2], 1), temb), ctx)
        h = self.upsamplers[0](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        b = self.up_blocks[1]
        h = b["attn"](b["res"](torch.cat([h, s1], 1), temb), ctx)
        return self.upsamplers[1](F.interpolate(h, scale_factor=2.0, mode="nearest"))

    def tail(self, deep_feature, skip0, temb, ctx, res0=None):
        if res0 is not None:
            skip0 = skip0 + res0
        b = self.up_blocks[2]
        h = b["attn"](b["res"](torch.cat([deep_feature, skip0], 1), temb), ctx)
        return self.conv_out(F.silu(self.norm_out(h)))

    def forward(
        self,
        sample,
        timestep,
        encoder_hidden_states,
        timestep_cond=None,
        lora=None,
        down_residuals=None,
        mid_residual=None,
    ):
        self.lora = lora
        try:
            temb = self.temb(timestep, timestep_cond)
            s0 = self.head(sample, temb, encoder_hidden_states)
            deep = self.deep(s0, temb, encoder_hidden_states, down_residuals, mid_residual)
            return self.tail(
                deep, s0, temb, encoder_hidden_states, None if down_residuals is None else down_residuals[0]
            )
        finally:
            self.lora = None


# ----------------------------------------------------------------------------------------------
# ControlNet: a trainable copy of the U-Net's encoder (conv_in, down blocks, mid) plus a mask hint
# encoder; zero-initialised 1x1 output convs produce the residuals the U-Net accepts.
# ----------------------------------------------------------------------------------------------
class ControlNet(nn.Module):
    def __init__(self, unet: UNet, hint_channels=1):
        super().__init__()
        cfg = unet.config
        c0, c1, c2 = cfg["ch"]
        self.config = dict(cfg)
        self.time_embedding = TimeEmbedding(c0 * 2, cfg["tdim"], cfg.get("cond_dim", 0))
        self.conv_in = nn.Conv2d(cfg["latent"] + 2, c0, 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        self.mid_block = None
        hid = max(8, c0 // 2)
        self.hint = nn.Sequential(  # 64x64 mask -> 16x16 features
            nn.Conv2d(hint_channels, hid, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hid, hid, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(hid, c0, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(c0, c0, 3, padding=1),
        )
        nn.init.zeros_(self.hint[-1].weight)
        nn.init.zeros_(self.hint[-1].bias)
        import copy

        self.down_blocks = copy.deepcopy(unet.down_blocks)
        self.downsamplers = copy.deepcopy(unet.downsamplers)
        self.mid_block = copy.deepcopy(unet.mid_block)
        self.time_embedding.load_state_dict(unet.time_embedding.state_dict())
        self.conv_in.load_state_dict(unet.conv_in.state_dict())
        for m in self.modules():  # the copy never takes LoRA branches
            if isinstance(m, (LoRALinear, LoRAConv2d)):
                m.owner = None
        self.zero_convs = nn.ModuleList([nn.Conv2d(c, c, 1) for c in (c0, c1, c2)])
        self.mid_zero = nn.Conv2d(c2, c2, 1)
        for z in list(self.zero_convs) + [self.mid_zero]:
            nn.init.zeros_(z.weight)
            nn.init.zeros_(z.bias)

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, timestep_cond=None):
        temb = self.time_embedding(timestep, timestep_cond)
        ctx = encoder_hidden_states
        h = self.conv_in(coord_channels(sample)) + self.hint(controlnet_cond)
        outs = []
        for i, b in enumerate(self.down_blocks):
            if i > 0:
                h = self.downsamplers[i - 1](h)
            h = b["attn"](b["res"](h, temb), ctx)
            outs.append(self.zero_convs[i](h))
        m = self.mid_block
        h = m["res2"](m["attn"](m["res1"](h, temb), ctx), temb)
        return outs, self.mid_zero(h)


# ----------------------------------------------------------------------------------------------
# Text encoder
# ----------------------------------------------------------------------------------------------
TEXT_CONFIGS = {"base": dict(dim=64, layers=2, heads=4), "tiny": dict(dim=32, layers=1, heads=2)}


class TextEncoder(nn.Module):
    def __init__(self, vocab_size, dim=64, layers=2, heads=4, max_length=MAX_LENGTH):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, dim=dim, layers=layers, heads=heads, max_length=max_length)
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(1, max_length, dim) * 0.02)
        self.blocks = nn.ModuleList()
        for _ in range(layers):
            self.blocks.append(
                nn.ModuleDict(
                    dict(
                        n1=nn.LayerNorm(dim),
                        attn=Attention(dim, None, heads),
                        n2=nn.LayerNorm(dim),
                        ff1=nn.Linear(dim, 2 * dim),
                        ff2=nn.Linear(2 * dim, dim),
                    )
                )
            )
        self.final = nn.LayerNorm(dim)

    def forward(self, input_ids):
        x = self.tok(input_ids) + self.pos
        for b in self.blocks:
            x = x + b["attn"](b["n1"](x))
            x = x + b["ff2"](F.gelu(b["ff1"](b["n2"](x))))
        return self.final(x)


# ----------------------------------------------------------------------------------------------
# VAE: 64x64x3 <-> 16x16x4, KL-regularised
# ----------------------------------------------------------------------------------------------
VAE_CONFIGS = {"base": dict(ch=(16, 32, 64)), "tiny": dict(ch=(8, 16, 16))}


class VAEBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.n1, self.c1 = gn(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.n2, self.c2 = gn(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.c2(F.silu(self.n2(self.c1(F.silu(self.n1(x))))))


class VAEEncoder(nn.Module):
    def __init__(self, ch=(32, 64, 64), latent=4):
        super().__init__()
        a, b, c = ch
        self.net = nn.Sequential(
            nn.Conv2d(3, a, 3, padding=1),
            VAEBlock(a, a),
            nn.Conv2d(a, b, 3, stride=2, padding=1),
            VAEBlock(b, b),
            nn.Conv2d(b, c, 3, stride=2, padding=1),
            VAEBlock(c, c),
            VAEBlock(c, c),
            gn(c),
            nn.SiLU(),
            nn.Conv2d(c, 2 * latent, 3, padding=1),
        )

    def forward(self, x):
        mean, logvar = self.net(x).chunk(2, 1)
        return mean, logvar.clamp(-30.0, 20.0)


class VAEDecoder(nn.Module):
    def __init__(self, ch=(32, 64, 64), latent=4):
        super().__init__()
        a, b, c = ch
        self.conv_in = nn.Conv2d(latent, c, 3, padding=1)
        self.b1, self.b2 = VAEBlock(c, c), VAEBlock(c, b)
        self.up1 = nn.Conv2d(b, b, 3, padding=1)
        self.b3 = VAEBlock(b, a)
        self.up2 = nn.Conv2d(a, a, 3, padding=1)
        self.b4 = VAEBlock(a, a)
        self.out = nn.Sequential(gn(a), nn.SiLU(), nn.Conv2d(a, 3, 3, padding=1))

    def forward(self, z):
        h = self.b2(self.b1(self.conv_in(z)))
        h = self.b3(self.up1(F.interpolate(h, scale_factor=2.0, mode="nearest")))
        h = self.b4(self.up2(F.interpolate(h, scale_factor=2.0, mode="nearest")))
        return self.out(h)


class VAE(nn.Module):
    def __init__(self, ch=(32, 64, 64), latent=4):
        super().__init__()
        self.config = dict(ch=tuple(ch), latent=latent)
        self.encoder = VAEEncoder(ch, latent)
        self.decoder = VAEDecoder(ch, latent)
        self.register_buffer("scaling_factor", torch.tensor(1.0))


# ----------------------------------------------------------------------------------------------
# Evaluator: classifier on REAL generated images only; penultimate features for a Frechet distance
# ----------------------------------------------------------------------------------------------
class Evaluator(nn.Module):
    def __init__(self, feat=128):
        super().__init__()
        from zoo import data

        self.heads_spec = {a: len(data.ATTR_CLASSES[a]) for a in data.ATTRS}
        self.heads_spec["styles"] = len(data.STYLES)

        def blk(cin, cout):
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            )

        self.body = nn.Sequential(
            blk(5, 16), nn.MaxPool2d(2), blk(16, 32), nn.MaxPool2d(2), blk(32, 64), nn.MaxPool2d(2), blk(64, 128)
        )  # 8x8
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(128 * 8 * 8, feat), nn.ReLU())
        self.heads = nn.ModuleDict({k: nn.Linear(feat, n) for k, n in self.heads_spec.items()})

    def features(self, x):
        """x: float images in [-1,1], [B,3,64,64] -> penultimate features [B,feat]."""
        return self.fc(self.body(coord_channels(x)))

    def forward(self, x):
        f = self.features(x)
        return {k: h(f) for k, h in self.heads.items()}, f


def count_params(m):
    return sum(p.numel() for p in m.parameters())
