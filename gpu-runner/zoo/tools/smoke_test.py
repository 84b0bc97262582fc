"""Smoke test of every training stage and the evaluation code on micro models in a temporary folder
(a few steps each; minutes on 2 cores).   /usr/bin/python3 gpu-runner/zoo/tools/smoke_test.py"""
import os
import sys
import tempfile
import types

ZOO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ZOO)
import torch  # noqa: E402

torch.set_num_threads(int(os.environ.get("SMOKE_THREADS", "1")))
import evaluate  # noqa: E402
import export  # noqa: E402
import models  # noqa: E402
import train  # noqa: E402

tmp = os.environ.get("SMOKE_DIR") or tempfile.mkdtemp(prefix="zoo-smoke")
train.WORK = os.path.join(tmp, "work")
train.CKPT = os.path.join(tmp, "ckpt")
evaluate.CKPT = train.CKPT
evaluate.REPORT_DIR = os.path.join(tmp, "report")
evaluate.RESULTS = os.path.join(evaluate.REPORT_DIR, "results.jsonl")
evaluate.ZOO = tmp
models.UNET_CONFIGS["base"] = export.MICRO
models.TEXT_CONFIGS["base"] = dict(dim=16, layers=1, heads=2)
models.VAE_CONFIGS["base"] = dict(ch=(8, 8, 8))
train.BASE_N = 300
train.LORA_N = 200
train.CN_N = 200
train.LORA_RECIPES = {s: dict(r, steps=3) for s, r in train.LORA_RECIPES.items()}  # what --steps 3 trains
train.RF_PAIRS = 256
train.RF_ODE_STEPS = 3
_score = evaluate.score_images
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
for st in (os.environ["SMOKE_STAGES"].split(",") if os.environ.get("SMOKE_STAGES") else train.STAGES):
    args = types.SimpleNamespace(steps=3, eval_every=2, threads=2)
    print(f"=== {st}")
    getattr(train, f"stage_{st}")(args)
    assert train.stage_finished(st) or st == "base", st
print("smoke test passed:", tmp)
