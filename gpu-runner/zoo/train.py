"""Resumable training stages of the `tiny-shapes` family (run from gpu-runner/):

    /usr/bin/python3 -m zoo.train <stage> [--steps N]

Stages (in order): vae, evaluator, base, lcm, rf, vaedec, loras, controlnet; one module each under zoo/stages/.
Each stage checkpoints its full state to .work/<stage>/state.pt every few minutes (and resumes from it),
logs to .work/logs/<stage>.log, and when finished writes its small outputs to checkpoints/<stage>.pt
(committed) and the marker .work/<stage>.done.  A stage whose checkpoints/<stage>.pt says finished=True
is skipped.  The base stage also writes its running (fp16) weights to checkpoints/base.pt so that a fresh
clone can continue it.
"""

from __future__ import annotations

import argparse
import importlib
import os

import torch

from zoo import data, paths
from zoo.stages.loras import lora_recipe, lora_recipes_of
from zoo.stages.vaedec import VAEDEC_VERSION

STAGES = ["vae", "evaluator", "base", "lcm", "rf", "vaedec", "loras", "controlnet"]


def stage_finished(stage):
    p = os.path.join(paths.CKPT, f"{stage}.pt")
    if not os.path.exists(p):
        return False
    ck = torch.load(p, map_location="cpu")
    if stage == "loras" and any(lora_recipes_of(ck).get(st) != lora_recipe(st) for st in data.STYLES):
        return False  # a style trained with an older recipe: retrain it
    if stage == "vaedec" and ck.get("version", 1) != VAEDEC_VERSION:
        return False  # v1 is v2's phase 1: the stage goes on with phase 2
    return bool(ck.get("finished", False))


def main():
    ap = argparse.ArgumentParser(prog="python -m zoo.train")
    ap.add_argument("stage", choices=STAGES)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if stage_finished(args.stage):
        print(f"stage {args.stage} already finished (checkpoints/{args.stage}.pt)")
        return
    stage = importlib.import_module(f"zoo.stages.{args.stage}")
    getattr(stage, f"stage_{args.stage}")(args)


if __name__ == "__main__":
    main()
