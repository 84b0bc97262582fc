"""Stage `lcm`: latent consistency distillation (LCM paper Alg. 2 / diffusers train_lcm_distill_sd)."""

from __future__ import annotations

import os

import torch

from zoo import models, paths, samplers
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
from zoo.stages.base import base_dataset, frozen_base


def pseudo_huber(a, b, c=0.001):
    return (torch.sqrt((a - b).pow(2) + c * c) - c).mean()


LCM_COND_DIM = 64


LCM_W_RANGE = (2.0, 8.0)  # guidance scales the student learns (teacher CFG); embedded as w = g - 1


def make_lcm_unet(base_unet):
    cfg = dict(base_unet.config)
    cfg["cond_dim"] = LCM_COND_DIM
    u = models.UNet(**cfg)
    missing, unexpected = u.load_state_dict(base_unet.state_dict(), strict=False)
    assert set(missing) == {"time_embedding.cond_proj.weight"} and not unexpected, (missing, unexpected)
    torch.nn.init.zeros_(u.time_embedding.cond_proj.weight)
    return u


def stage_lcm(args):
    log = Log("lcm")
    B, TOTAL, LR = 64, args.steps or 1500, 2e-4  # sized to fit one session on 2 shared cores
    ds = base_dataset(log)
    lat, all_ids = ds["latents"], None
    tok, teacher, te = frozen_base()
    all_ids = tok(ds["captions"])
    torch.manual_seed(3)
    student = make_lcm_unet(teacher)
    target = make_lcm_unet(teacher)
    target.load_state_dict(student.state_dict())
    for p in target.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), LR, weight_decay=0.0)
    step, _ = resume("lcm", log, dict(student=student, target=target, opt=opt))
    acp = models.alphas_cumprod(torch.float32)
    skeleton = torch.arange(1, 51) * 20 - 1
    empty = te(tok([""]))
    g = torch.Generator().manual_seed(77 + step)
    prog = Progress(log, TOTAL, step)
    log(f"LCM distillation: student params {models.count_params(student)}, batch {B}, total {TOTAL}")
    while step < TOTAL:
        for gr in opt.param_groups:
            gr["lr"] = cosine_lr(step, TOTAL, LR, warmup=100, floor=0.1)
        idx = torch.randint(0, lat.shape[0], (B,), generator=g)
        x0 = lat[idx].float()
        with torch.no_grad():
            ctx = te(all_ids[idx])
        k = torch.randint(0, 50, (B,), generator=g)
        t = skeleton[k]
        tp = (t - 20).clamp(min=0)
        noise = torch.randn(x0.shape, generator=g)
        a_t, a_p = acp[t].view(B, 1, 1, 1), acp[tp].view(B, 1, 1, 1)
        xt = a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise
        gs = LCM_W_RANGE[0] + (LCM_W_RANGE[1] - LCM_W_RANGE[0]) * torch.rand(B, generator=g)
        wemb = models.guidance_embedding(gs, LCM_COND_DIM)
        with torch.no_grad():
            e = teacher(torch.cat([xt, xt]), torch.cat([t, t]).float(), torch.cat([empty.expand(B, -1, -1), ctx]))
            eu, ec = e.chunk(2)
            eps = eu + gs.view(B, 1, 1, 1) * (ec - eu)
            x0_t = (xt - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            x_prev = a_p.sqrt() * x0_t + (1 - a_p).sqrt() * eps
            e_tg = target(x_prev, tp.float(), ctx, timestep_cond=wemb)
            cs_p, co_p = (c.view(-1, 1, 1, 1) for c in samplers.lcm_scalings(tp.float()))
            tgt = cs_p * x_prev + co_p * (x_prev - (1 - a_p).sqrt() * e_tg) / a_p.sqrt()
        e_s = student(xt, t.float(), ctx, timestep_cond=wemb)
        cs_t, co_t = (c.view(-1, 1, 1, 1) for c in samplers.lcm_scalings(t.float()))
        pred = cs_t * xt + co_t * (xt - (1 - a_t).sqrt() * e_s) / a_t.sqrt()
        loss = pseudo_huber(pred, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # target network = EMA(0.95) of the student
            for pt, ps in zip(target.parameters(), student.parameters()):
                pt.mul_(0.95).add_(ps.detach(), alpha=0.05)
        step += 1
        if step % 25 == 0:
            prog.report(step, loss=loss.item())
        if prog.due() or step == TOTAL:
            save("lcm", step, dict(student=student, target=target, opt=opt))
    atomic_save(
        dict(model=half_sd(target), config=target.config, steps=step, w_range=LCM_W_RANGE, finished=True),
        os.path.join(paths.CKPT, "lcm.pt"),
    )
    log("finished")
    try:
        from zoo import evaluate

        for steps in (1, 2, 4, 8):
            evaluate.evaluate_lcm(target, te, tok, steps=steps, guidance=4.0, log=log, tag=f"lcm {steps}-step")
    except Exception as e:
        log(f"EVAL failed: {e!r}")


def load_lcm():
    ck = torch.load(os.path.join(paths.CKPT, "lcm.pt"), map_location="cpu")
    u = models.UNet(**ck["config"])
    u.load_state_dict(float_sd(ck["model"]))
    return u.eval()
