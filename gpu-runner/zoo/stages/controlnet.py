"""Stage `controlnet`: mask ControlNet (trainable copy of the encoder + hint encoder, zero convs)."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from zoo import data, models, paths
from zoo.latents import build_latent_dataset
from zoo.loop import (
    Log,
    Progress,
    atomic_save,
    cosine_lr,
    float_sd,
    half_sd,
    resume,
    save,
)
from zoo.stages.base import frozen_base

CN_N = 20000  # ControlNet training images


def stage_controlnet(args):
    log = Log("controlnet")
    B, S, LR = 64, args.steps or 2000, 2e-4
    tok, unet, te = frozen_base()
    ds = build_latent_dataset(
        log, os.path.join(paths.WORK, "controlnet_latents.pt"), CN_N, data.CONTROL_SEED_BASE, styles=[], with_masks=True
    )
    lat, masks, ids_all = ds["latents"], ds["masks"], tok(ds["captions"])
    ids_free = tok([data.layout_free(c) for c in ds["captions"]])
    empty = tok([""])
    torch.manual_seed(5)
    cn = models.ControlNet(unet)
    for p in cn.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(cn.parameters(), LR, weight_decay=0.0)
    step, _ = resume("controlnet", log, dict(cn=cn, opt=opt))
    acp = models.alphas_cumprod(torch.float32)
    g = torch.Generator().manual_seed(600 + step)
    prog = Progress(log, S, step)
    log(f"ControlNet params {models.count_params(cn)}")
    while step < S:
        for gr in opt.param_groups:
            gr["lr"] = cosine_lr(step, S, LR, warmup=100, floor=0.1)
        idx = torch.randint(0, lat.shape[0], (B,), generator=g)
        x0 = lat[idx].float()
        ids = ids_all[idx].clone()
        # v2: a third of the captions name no position and no size, so the layout must come from the mask (v1 only
        # had full captions, which already carried the layout, and empty ones: it learned to refine, not to steer)
        r = torch.rand(B, generator=g)
        ids[r < 0.35] = ids_free[idx][r < 0.35]
        ids[r >= 0.7] = empty
        with torch.no_grad():
            ctx = te(ids)
        m = masks[idx].float().div(255.0).unsqueeze(1)
        t = torch.randint(0, 1000, (B,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = acp[t].view(B, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        outs, mid = cn(xt, t.float(), ctx, m)
        pred = unet(xt, t.float(), ctx, down_residuals=outs, mid_residual=mid)
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(cn.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            prog.report(step, loss=loss.item())
        if prog.due() or step == S:
            save("controlnet", step, dict(cn=cn, opt=opt))
    atomic_save(dict(model=half_sd(cn), steps=step, finished=True), os.path.join(paths.CKPT, "controlnet.pt"))
    log("finished")
    try:
        from zoo import evaluate

        evaluate.evaluate_controlnet(unet, te, tok, cn.eval(), log=log)
        evaluate.evaluate_controlnet(unet, te, tok, cn.eval(), log=log, layout_free=True)
    except Exception as e:
        log(f"EVAL failed: {e!r}")


def load_controlnet(unet):
    ck = torch.load(os.path.join(paths.CKPT, "controlnet.pt"), map_location="cpu")
    cn = models.ControlNet(unet)
    cn.load_state_dict(float_sd(ck["model"]))
    return cn.eval()
