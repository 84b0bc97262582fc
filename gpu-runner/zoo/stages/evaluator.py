"""Stage `evaluator`: the CNN that scores generated images, trained on REAL rendered images only."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.nn.functional as F

from zoo import data, models, paths
from zoo.loop import (
    Log,
    Progress,
    atomic_save,
    cosine_lr,
    resume,
    save,
    to_img_tensor,
)


def eval_loss_acc(out, labs):
    loss = 0.0
    acc = {}
    for a in data.ATTRS:
        y = torch.from_numpy(labs[a]).long()
        loss = loss + F.cross_entropy(out[a], y)
        acc[a] = (out[a].argmax(1) == y).float().mean().item()
    ys = torch.from_numpy(labs["styles"]).float()
    loss = loss + F.binary_cross_entropy_with_logits(out["styles"], ys) * 3
    acc["styles"] = ((out["styles"] > 0).float() == ys).float().mean().item()
    return loss, acc


def evaluator_heldout(ev, n=2000):
    """Accuracy on held-out eval seeds (plain and styled)."""
    ev.eval()
    res = {}
    with torch.no_grad():
        for name, kw in [("plain", dict(styles=[])), ("styled", dict(style_prob=1.0))]:
            seeds = np.arange(0, n) if name == "plain" else np.arange(5000, 5000 + n)
            imgs, _, _, labs, _ = data.batch_arrays(seeds, **kw)
            outs = [ev(to_img_tensor(imgs[i : i + 250]))[0] for i in range(0, n, 250)]
            out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
            _, acc = eval_loss_acc(out, labs)
            res[name] = acc
    ev.train()
    return res


def _gauss_kernel(sigma):
    r = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def augment_real(x, g):
    """Augmentations of REAL images so the evaluator judges attributes, not crispness: the decoded images of any
    latent model are smoother than the renderer's. Random Gaussian blur (sigma 0.3-1.6 px) or a 2x down/up
    resampling, a little noise, small brightness/contrast jitter. Applied per image with probability 0.6."""
    B = x.shape[0]
    out = x.clone()
    for i in range(B):
        if torch.rand(1, generator=g).item() > 0.6:
            continue
        xi = out[i : i + 1]
        if torch.rand(1, generator=g).item() < 0.7:
            sigma = 0.3 + 1.3 * torch.rand(1, generator=g).item()
            k = _gauss_kernel(sigma)
            r = (k.numel() - 1) // 2
            xi = F.pad(xi, (r, r, r, r), mode="replicate")
            xi = F.conv2d(xi, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
            xi = F.conv2d(xi, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
        else:
            xi = F.interpolate(
                F.interpolate(xi, scale_factor=0.5, mode="bilinear", align_corners=False),
                scale_factor=2.0,
                mode="bilinear",
                align_corners=False,
            )
        c = 1.0 + 0.08 * (torch.rand(1, generator=g).item() * 2 - 1)
        b = 0.04 * (torch.rand(1, generator=g).item() * 2 - 1)
        xi = xi * c + b + 0.04 * torch.rand(1, generator=g).item() * torch.randn(xi.shape, generator=g)
        out[i : i + 1] = xi.clamp(-1, 1)
    return out


def stage_evaluator(args):
    log = Log("evaluator")
    B, TOTAL, LR = 64, args.steps or 800, 2e-3
    torch.manual_seed(1)
    ev = models.Evaluator()
    opt = torch.optim.AdamW(ev.parameters(), LR, weight_decay=1e-4)
    step, _ = resume("evaluator", log, dict(model=ev, opt=opt))
    log(f"evaluator params {models.count_params(ev)} batch {B} total {TOTAL}")
    prog = Progress(log, TOTAL, step)
    g_aug = torch.Generator().manual_seed(31 + step)
    ev.train()
    while step < TOTAL:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, TOTAL, LR, floor=0.02)
        seeds = data.TRAIN_SEED_BASE + 200_000_000 + step * B + np.arange(B)
        imgs, _, _, labs, _ = data.batch_arrays(seeds, style_prob=0.5)
        x = augment_real(to_img_tensor(imgs), g_aug)
        out, _ = ev(x)
        loss, acc = eval_loss_acc(out, labs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 25 == 0:
            prog.report(step, loss=loss.item(), **{k: round(v, 3) for k, v in acc.items()})
        if prog.due() or step == TOTAL:
            save("evaluator", step, dict(model=ev, opt=opt))
    res = evaluator_heldout(ev)
    # Frechet reference statistics of held-out real (plain) images
    ev.eval()
    with torch.no_grad():
        imgs, _, _, _, _ = data.batch_arrays(np.arange(0, 2000))
        feats = torch.cat([ev.features(to_img_tensor(imgs[i : i + 250])) for i in range(0, 2000, 250)]).double()
    mu, cov = feats.mean(0), torch.cov(feats.T)
    log(f"finished: held-out accuracy {res}")
    atomic_save(
        dict(model=ev.state_dict(), heldout=res, fid_ref_mu=mu, fid_ref_cov=cov, steps=step, finished=True),
        os.path.join(paths.CKPT, "evaluator.pt"),
    )
