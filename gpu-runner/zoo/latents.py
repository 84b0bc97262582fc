"""The latent space every U-Net trains in: the family's VAE, the stripe code striped images' latents carry, and the
cached latent data sets the stages build from rendered images."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from zoo import data, models, paths
from zoo.loop import atomic_save, float_sd, to_img_tensor


def load_vae(decoder=True):
    """The family's VAE. The encoder (and so the latent space every U-Net was trained in) is the `vae` stage's;
    the decoder is the `vaedec` stage's fine-tune when that stage has finished (decoder=False: the original one)."""
    ck = torch.load(os.path.join(paths.CKPT, "vae.pt"), map_location="cpu")
    vae = models.VAE(**ck["config"])
    vae.load_state_dict(float_sd(ck["model"]))
    p = os.path.join(paths.CKPT, "vaedec.pt")
    if decoder and os.path.exists(p):
        dck = torch.load(p, map_location="cpu")
        if dck.get("finished"):
            vae.decoder.load_state_dict(float_sd(dck["decoder"]))
    vae.eval()
    return vae, float(ck["scaling_factor"])


def edge_map(x):
    """1 on and next to an image's edges (largest finite difference over the channels, dilated by one pixel), 0 in
    flat regions: where the thin outline rings are, which a plain L1 averages away among the flat pixels."""
    gx = (x[..., :, 1:] - x[..., :, :-1]).abs().amax(1, keepdim=True)
    gy = (x[..., 1:, :] - x[..., :-1, :]).abs().amax(1, keepdim=True)
    g = F.pad(gx, (0, 1, 0, 0)) + F.pad(gy, (0, 0, 0, 1))
    return F.max_pool2d((g * 4).clamp(0, 1), 3, 1, 1)


# The stripe code (vaedec v3). The `vae` encoder keeps no trace of stripes finer than its 4x latent grid (a striped
# shape encodes as a paler solid colour), so no decoder could tell where to draw them and no LoRA could ask for them:
# the striped ceiling was 0.023. A striped image's latent is therefore defined as the encoder's mean plus a code
# that says, cell by cell, where the stripes stand: STRIPE_CODE_SCALE x the shape's coverage of the cell x
# (cos, sin) of the stripes' phase at the cell (data.stripe_cell_phase), on latent channels 0 and 1. Plain and other
# styled images get no code, so every U-Net stays valid; vaedec phase 3 teaches the decoder to read it, and the
# striped LoRA learns to write it. (The encoder does not write it: img2img of a striped picture loses its stripes.)
STRIPE_CODE_SCALE = 1.0  # in scaled-latent units (the latents' std is 1)


def cell_mean(m):
    """A per-pixel map [N,64,64] -> its mean over each 4x4 latent cell, [N,1,16,16]."""
    return F.avg_pool2d(torch.as_tensor(m).float().unsqueeze(1), 4)


def cell_cover(masks):
    """uint8 masks [N,64,64] -> the shape's coverage of each latent cell, [N,1,16,16] in [0,1]."""
    return cell_mean(torch.as_tensor(masks).float() / 255.0)


def stripe_code(samples, sf):
    """[N,4,16,16] unscaled offsets that carry the stripe code of each striped sample (zeros for the others)."""
    out = torch.zeros(len(samples), 4, 16, 16)
    for k, s in enumerate(samples):
        if "striped" not in s.styles:
            continue
        phi = torch.from_numpy(2 * math.pi * data.stripe_cell_phase(s.extra["stripe_phase"])).float()
        cover = cell_cover(s.mask[None])[0, 0]
        out[k, 0], out[k, 1] = cover * torch.cos(phi), cover * torch.sin(phi)
    return out * (STRIPE_CODE_SCALE / sf)


def stripe_code_on():
    """Whether the family's latents carry the stripe code: once the decoder has learnt to read it (vaedec v3)."""
    p = os.path.join(paths.CKPT, "vaedec.pt")
    ck = torch.load(p, map_location="cpu") if os.path.exists(p) else {}
    return ck.get("phase", 1) >= 3 and bool(ck.get("finished"))


def encode_latents(vae, sf, imgs, samples, code=None):
    """Scaled latents of real images as every U-Net and LoRA trains on them: the encoder's mean, plus the stripe
    code once the decoder reads it (`code` overrides that check)."""
    z = vae.encoder(to_img_tensor(imgs))[0]
    if stripe_code_on() if code is None else code:
        z = z + stripe_code(samples, sf)
    return z * sf


def build_latent_dataset(log, path, n, seed_base, styles=None, style_prob=0.0, with_masks=False, with_edges=False):
    if os.path.exists(path):
        return torch.load(path)
    vae, sf = load_vae()
    code = stripe_code_on()
    log(f"encoding {n} images (seeds {seed_base}..{seed_base + n - 1}) with the VAE ...")
    lat, caps_attr, seeds_all, style_lab, masks, edges = [], [], [], [], [], []
    t0 = time.time()
    with torch.no_grad():
        for i in range(0, n, 500):
            seeds = seed_base + np.arange(i, min(n, i + 500))
            assert seeds.min() >= data.TRAIN_MIN_SEED
            imgs, mk, caps, labs, ss = data.batch_arrays(seeds, styles=styles, style_prob=style_prob)
            lat.append(encode_latents(vae, sf, imgs, ss, code).half())
            caps_attr.extend(caps)
            seeds_all.append(seeds)
            style_lab.append(labs["styles"])
            if with_masks:
                masks.append(torch.from_numpy(mk))
            if with_edges:  # edge_map max-pooled to the latent's cells
                edges.append(F.max_pool2d(edge_map(to_img_tensor(imgs)), 4).squeeze(1).half())
            if i % 10000 == 0:
                log(f"  {i}/{n} {time.time() - t0:.0f}s")
    d = dict(
        latents=torch.cat(lat),
        captions=caps_attr,
        seeds=np.concatenate(seeds_all),
        styles=np.concatenate(style_lab),
        scaling_factor=sf,
    )
    if with_masks:
        d["masks"] = torch.cat(masks)
    if with_edges:
        d["edges"] = torch.cat(edges)
    atomic_save(d, path)
    return d
