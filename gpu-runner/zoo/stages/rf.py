"""Stage `rf`: InstaFlow, reflow on (noise, image) pairs from the base's guided ODE, then one-step distillation."""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from zoo import models, paths, samplers
from zoo.loop import EMA, Log, Progress, atomic_save, half_sd, resume, save
from zoo.stages.base import base_dataset, frozen_base

RF_PAIRS, RF_ODE_STEPS, RF_GUIDANCE = 4096, 20, 4.0  # 4096 pairs: ~11 min of guided DDIM-20 on 2 cores


def stage_rf(args):
    log = Log("rf")
    B = 64
    R1 = args.steps or 800  # reflow steps (sized, with R2, to fit beside other stages in one session on 2 cores)
    R2 = args.steps if args.steps else 600  # one-step distillation steps
    tok, base, te = frozen_base()
    ds = base_dataset(log)
    caps = ds["captions"]
    # 1) pairs from the base's deterministic DDIM (probability-flow ODE) with CFG, resumable in chunks
    pp = os.path.join(paths.WORK, "rf", "pairs.pt")
    pairs = torch.load(pp) if os.path.exists(pp) else dict(z=[], x1=[], ids=[])
    empty = te(tok([""]))
    done = sum(z.shape[0] for z in pairs["z"])
    t0 = time.time()
    while done < RF_PAIRS:
        g = torch.Generator().manual_seed(9000 + done)
        idx = torch.randint(0, len(caps), (256,), generator=g)
        ids = tok([caps[i] for i in idx])
        with torch.no_grad():
            ctx = te(ids)
            z = torch.randn((256, 4, 16, 16), generator=g)
            x1 = samplers.ddim_sample(
                lambda x, t, c: base(x, t, c),
                ctx,
                empty.expand(256, -1, -1),
                z.shape,
                RF_ODE_STEPS,
                RF_GUIDANCE,
                x=z.clone(),
            )
        pairs["z"].append(z.half())
        pairs["x1"].append(x1.half())
        pairs["ids"].append(ids)
        done += 256
        atomic_save(pairs, pp)
        log(f"pairs {done}/{RF_PAIRS} ({(time.time() - t0) / 60:.1f} min)")
    Z, X1, IDS = (torch.cat(pairs[k]) for k in ("z", "x1", "ids"))
    Z, X1 = Z.float(), X1.float()
    torch.manual_seed(4)
    model = models.UNet(**base.config)
    model.load_state_dict(base.state_dict())
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), 2e-4, weight_decay=0.0)
    ema = EMA(model, 0.999)
    step, _ = resume("rf", log, dict(model=model, opt=opt), ema)
    TOTAL = R1 + R2
    prog = Progress(log, TOTAL, step)
    g = torch.Generator().manual_seed(55 + step)
    while step < TOTAL:
        phase = 1 if step < R1 else 2
        if step == R1 and phase == 2:
            model.load_state_dict(ema.shadow)  # distil from the reflowed EMA weights
            ema = EMA(model, 0.999)
            opt = torch.optim.AdamW(model.parameters(), 1e-4, weight_decay=0.0)
        idx = torch.randint(0, Z.shape[0], (B,), generator=g)
        z, x1 = Z[idx], X1[idx]
        with torch.no_grad():
            ctx = te(IDS[idx])
        if phase == 1:
            t = torch.rand(B, generator=g)
            tt = t.view(B, 1, 1, 1)
            xt = tt * x1 + (1 - tt) * z
            v = model(xt, (1 - t) * 1000.0, ctx)
            loss = F.mse_loss(v, x1 - z)
        else:
            v = model(z, torch.full((B,), 1000.0), ctx)
            loss = F.mse_loss(z + v, x1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        step += 1
        if step % 25 == 0:
            prog.report(step, phase=phase, loss=loss.item())
        if prog.due() or step == TOTAL or step == R1:
            save("rf", step, dict(model=model, opt=opt), ema)
    final = models.UNet(**base.config)
    final.load_state_dict(ema.shadow)
    atomic_save(
        dict(
            model=half_sd(final),
            config=final.config,
            steps=step,
            reflow_steps=R1,
            distill_steps=R2,
            pairs=int(Z.shape[0]),
            finished=True,
        ),
        os.path.join(paths.CKPT, "rf.pt"),
    )
    log("finished")
    try:
        from zoo import evaluate

        evaluate.evaluate_rf(final.eval(), te, tok, steps=1, log=log, tag="rectified-flow 1-step")
    except Exception as e:
        log(f"EVAL failed: {e!r}")
