"""Training-loop helpers every stage shares: logging, resumable state under .work/, EMA, learning-rate schedule,
progress and periodic saves."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import torch

from zoo import paths

SAVE_EVERY_S = 180.0


class Log:
    def __init__(self, stage):
        os.makedirs(os.path.join(paths.WORK, "logs"), exist_ok=True)
        self.f = open(os.path.join(paths.WORK, "logs", f"{stage}.log"), "a")
        self.stage = stage

    def __call__(self, *a):
        msg = time.strftime("%Y-%m-%d %H:%M:%S ", time.gmtime()) + " ".join(str(x) for x in a)
        print(msg, flush=True)
        self.f.write(msg + "\n")
        self.f.flush()


def atomic_save(obj, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def state_path(stage):
    return os.path.join(paths.WORK, stage, "state.pt")


def load_state(stage):
    p = state_path(stage)
    return torch.load(p, map_location="cpu") if os.path.exists(p) else None


def half_sd(m):
    return {k: (v.half() if v.is_floating_point() else v) for k, v in m.state_dict().items()}


def float_sd(sd):
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def to_img_tensor(u8):  # uint8 [N,64,64,3] -> float [-1,1] [N,3,64,64]
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def cosine_lr(step, total, base, warmup=100, floor=0.1):
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


class EMA:
    def __init__(self, model, decay=0.999):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        self.n = 0

    @torch.no_grad()
    def update(self, model):
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


class Progress:
    def __init__(self, log, total, start):
        self.log, self.total, self.t0, self.s0 = log, total, time.time(), start
        self.last_save = time.time()

    def report(self, step, **kv):
        el = time.time() - self.t0
        sps = (step - self.s0) / max(el, 1e-6)
        eta = (self.total - step) / max(sps, 1e-9)
        extra = " ".join(f"{k}={v:.5f}" if isinstance(v, float) else f"{k}={v}" for k, v in kv.items())
        self.log(f"step {step}/{self.total} {extra} steps/s={sps:.3f} eta={eta / 60:.1f}min")

    def due(self):
        if time.time() - self.last_save > SAVE_EVERY_S:
            self.last_save = time.time()
            return True
        return False


def rng_for(stage, step):
    return np.random.default_rng([hash(stage) % (2**31), step])


def resume(stage, log, objs: dict, ema: EMA | None = None):
    """Loads the stage's resumable state into `objs` (name -> object with load_state_dict) and `ema`, if any.
    Returns (step, extra dict); (0, {}) when there is no state yet."""
    st = load_state(stage)
    if not st:
        return 0, {}
    for k, o in objs.items():
        o.load_state_dict(st[k])
    if ema is not None:  # stored flat (ema, ema_n) so that states written before this helper still resume
        ema.shadow, ema.n = st["ema"], st["ema_n"]
    log(f"resumed {stage} at step {st['step']}")
    return st["step"], st.get("extra", {})


def save(stage, step, objs: dict, ema: EMA | None = None, extra=None):
    """The stage's resumable state: each object's state_dict, the EMA, the step (see resume)."""
    st = dict({k: o.state_dict() for k, o in objs.items()}, step=step, extra=extra or {})
    if ema is not None:
        st.update(ema=ema.shadow, ema_n=ema.n)
    atomic_save(st, state_path(stage))
