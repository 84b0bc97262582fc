"""python -m zoo.export <target>: random | trained | evaluator | loras | merge (see zoo/export/__init__.py)."""

from __future__ import annotations

import argparse

import torch

from zoo import paths
from zoo.export.bundles import (
    export_evaluator,
    export_loras,
    export_merge,
    export_random,
    export_trained,
)
from zoo.export.manifest import write_checksums

TARGETS = {
    "random": "the randomly initialised test bundles (seconds)",
    "trained": "bundles from whatever stages have finished, and the evaluator",
    "evaluator": "only the evaluator",
    "loras": "only the style LoRA add-ons (after the loras stage retrained one)",
    "merge": "merge-mode twin of the LCM bundle into .work/bundles (bench only)",
}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m zoo.export", description=__doc__)
    ap.add_argument(
        "target",
        nargs="?",
        default="random",
        choices=list(TARGETS),
        help="; ".join(f"{k}: {v}" for k, v in TARGETS.items()),
    )
    target = ap.parse_args(argv).target
    torch.set_num_threads(1)
    if target == "random":
        export_random()
    elif target == "trained":
        export_trained()
        export_evaluator()
    elif target == "evaluator":
        export_evaluator()
    elif target == "merge":
        export_merge()
    elif target == "loras":
        export_loras()
    if target in ("trained", "evaluator", "loras"):
        write_checksums(paths.MODELS_DIR)


if __name__ == "__main__":
    main()
