"""Stage `vae`: the KL-VAE 64x64x3 <-> 16x16x4 and its scaling factor (1 / std of the latents)."""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from zoo import data, models, paths
from zoo.loop import (
    Log,
    Progress,
    atomic_save,
    cosine_lr,
    half_sd,
    resume,
    save,
    to_img_tensor,
)


def stage_vae(args):
    log = Log("vae")
    B, TOTAL, LR, KL_W = 32, args.steps or 750, 1e-3, 1e-6
    torch.manual_seed(0)
    vae = models.VAE(**models.VAE_CONFIGS["base"])
    opt = torch.optim.Adam(vae.parameters(), LR)
    step, _ = resume("vae", log, dict(model=vae, opt=opt))
    log(f"VAE params {models.count_params(vae)} batch {B} total {TOTAL}")
    prog = Progress(log, TOTAL, step)
    vae.train()
    while step < TOTAL:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, TOTAL, LR)
        seeds = data.TRAIN_SEED_BASE + 100_000_000 + step * B + np.arange(B)  # >= TRAIN_MIN_SEED
        imgs, _, _, _, _ = data.batch_arrays(seeds, style_prob=0.35)
        x = to_img_tensor(imgs)
        mean, logvar = vae.encoder(x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        rec = vae.decoder(z)
        l1 = (rec - x).abs().mean()
        mse = (rec - x).pow(2).mean()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = l1 + mse + KL_W * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 25 == 0:
            prog.report(step, l1=l1.item(), mse=mse.item(), kl=kl.item())
        if prog.due() or step == TOTAL:
            save("vae", step, dict(model=vae, opt=opt))
    # scaling factor from the latents' std (like SD's 0.18215), on 2048 training images
    vae.eval()
    with torch.no_grad():
        seeds = data.TRAIN_SEED_BASE + 150_000_000 + np.arange(2048)
        imgs, _, _, _, _ = data.batch_arrays(seeds, style_prob=0.35)
        x = to_img_tensor(imgs)
        zs = torch.cat([vae.encoder(x[i : i + 256])[0] for i in range(0, 2048, 256)])
        sf = 1.0 / zs.std().item()
        rec = torch.cat([vae.decoder(zs[i : i + 256]) for i in range(0, 2048, 256)])
        psnr = 10 * math.log10(4.0 / (rec.clamp(-1, 1) - x).pow(2).mean().item())
    vae.scaling_factor.fill_(sf)
    log(
        f"finished: latent std {zs.std().item():.4f} mean {zs.mean().item():.4f} scaling_factor {sf:.5f} "
        f"reconstruction PSNR {psnr:.2f} dB on 2048 images"
    )
    atomic_save(
        dict(model=half_sd(vae), config=vae.config, scaling_factor=sf, psnr=psnr, steps=step, finished=True),
        os.path.join(paths.CKPT, "vae.pt"),
    )
