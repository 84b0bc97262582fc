"""The Python samplers the zoo trains and evaluates with; the runner's TypeScript samplers (gpu-runner/src/samplers/)
follow the same formulas. DDIM (eta 0, "leading" spacing, steps_offset 1, classifier-free guidance), LCM multi-step
(skeleton of 50, boundary scalings, re-noising), rectified-flow Euler steps, as in diffusers."""

from __future__ import annotations

import math

import numpy as np
import torch

from zoo import models


def ddim_timesteps(steps, T=models.NUM_TRAIN_TIMESTEPS, offset=1):
    ratio = T // steps
    return (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) + offset, ratio


@torch.no_grad()
def ddim_sample(eps_fn, cond, uncond, shape, steps=50, guidance=4.0, gen=None, x=None):
    """eps_fn(x, t[B], ctx[B,16,D]) -> eps.  Classifier-free guidance when guidance != 1."""
    acp = models.alphas_cumprod(torch.float64)
    x = torch.randn(shape, generator=gen) if x is None else x
    ts, ratio = ddim_timesteps(steps)
    B = shape[0]
    for t in ts:
        tt = torch.full((B,), float(t))
        if guidance != 1.0:
            e = eps_fn(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([uncond, cond]))
            eu, ec = e.chunk(2)
            eps = eu + guidance * (ec - eu)
        else:
            eps = eps_fn(x, tt, cond)
        a = acp[t].float()
        prev = t - ratio
        ap = acp[prev].float() if prev >= 0 else acp[0].float()
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = ap.sqrt() * x0 + (1 - ap).sqrt() * eps
    return x


def lcm_timesteps(steps, T=models.NUM_TRAIN_TIMESTEPS, orig=50):
    k = T // orig
    skeleton = (np.arange(1, orig + 1) * k - 1)[::-1]
    idx = np.floor(np.linspace(0, orig, steps, endpoint=False)).astype(np.int64)
    return skeleton[idx]


def lcm_scalings(t, sigma_data=0.5, timestep_scaling=10.0):
    """LCM's boundary-condition scalings (c_skip, c_out) at timestep t: a float (sampling) or a float tensor of
    timesteps (distillation, zoo.stages.lcm)."""
    s = t * timestep_scaling
    c_skip = sigma_data**2 / (s**2 + sigma_data**2)
    root = torch.sqrt if torch.is_tensor(s) else math.sqrt
    c_out = s / root(s**2 + sigma_data**2)
    return c_skip, c_out


@torch.no_grad()
def lcm_sample(eps_fn, cond, shape, steps=4, gen=None):
    """eps_fn(x, t, ctx) -> eps (the guidance embedding, if any, is bound into eps_fn)."""
    acp = models.alphas_cumprod(torch.float64)
    x = torch.randn(shape, generator=gen)
    ts = lcm_timesteps(steps)
    B = shape[0]
    denoised = x
    for i, t in enumerate(ts):
        eps = eps_fn(x, torch.full((B,), float(t)), cond)
        a = acp[t].float()
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        c_skip, c_out = lcm_scalings(float(t))
        denoised = c_out * x0 + c_skip * x
        if i < len(ts) - 1:
            an = acp[ts[i + 1]].float()
            x = an.sqrt() * denoised + (1 - an).sqrt() * torch.randn(shape, generator=gen)
    return denoised


@torch.no_grad()
def rf_sample(v_fn, cond, shape, steps=1, gen=None):
    x = torch.randn(shape, generator=gen)
    B = shape[0]
    for i in range(steps):
        t = (1 - i / steps) * 1000.0
        x = x + v_fn(x, torch.full((B,), t), cond) / steps
    return x
