"""Smoke test of every training stage and the evaluation code on micro models in a temporary folder
(a few steps each; minutes on 2 cores).   cd gpu-runner && /usr/bin/python3 -m zoo.tools.smoke_test"""

import importlib
import os
import tempfile
import types

import torch

torch.set_num_threads(int(os.environ.get("SMOKE_THREADS", "1")))

from zoo import evaluate, models, paths, train  # noqa: E402
from zoo.export.bundles import MICRO  # noqa: E402
from zoo.stages import base, controlnet, loras, rf  # noqa: E402

tmp = os.environ.get("SMOKE_DIR") or tempfile.mkdtemp(prefix="zoo-smoke")
paths.WORK = os.path.join(tmp, "work")
paths.CKPT = os.path.join(tmp, "ckpt")
paths.REPORT_DIR = os.path.join(tmp, "report")
paths.RESULTS = os.path.join(paths.REPORT_DIR, "results.jsonl")
paths.ZOO = tmp  # REPORT.md is rewritten there
models.UNET_CONFIGS["base"] = MICRO
models.TEXT_CONFIGS["base"] = dict(dim=16, layers=1, heads=2)
models.VAE_CONFIGS["base"] = dict(ch=(8, 8, 8))
base.BASE_N = 300
loras.LORA_N = 200
controlnet.CN_N = 200
loras.LORA_RECIPES = {s: dict(r, steps=3) for s, r in loras.LORA_RECIPES.items()}  # what --steps 3 trains
rf.RF_PAIRS = 256
rf.RF_ODE_STEPS = 3
N = 16


def small(fn):
    def w(*a, **k):
        k["n"] = N
        if "steps" in k and k["steps"] > 4:
            k["steps"] = 3
        return fn(*a, **k)

    return w


for name in ("evaluate_epsilon_model", "evaluate_lcm", "evaluate_rf", "evaluate_lora", "evaluate_controlnet"):
    setattr(evaluate, name, small(getattr(evaluate, name)))
for st in os.environ["SMOKE_STAGES"].split(",") if os.environ.get("SMOKE_STAGES") else train.STAGES:
    args = types.SimpleNamespace(steps=3, eval_every=2, threads=2)
    print(f"=== {st}")
    getattr(importlib.import_module(f"zoo.stages.{st}"), f"stage_{st}")(args)
    assert train.stage_finished(st) or st == "base", st
print("smoke test passed:", tmp)
