"""Where the zoo reads and writes. Modules read these as `paths.X` at call time, so a test or the smoke test can
point them at a temporary folder."""

from __future__ import annotations

import os

ZOO = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.dirname(ZOO)
# Committed: each stage's final outputs (checkpoints/<stage>.pt), what later stages and the export start from.
CKPT = os.path.join(ZOO, "checkpoints")
# Git-ignored: resumable state, logs, cached latents, grids, scratch bundles. Regenerable, never committed.
WORK = os.path.join(ZOO, ".work")
# Committed, small and text: every measured row; REPORT.md is regenerated from it.
RESULTS = os.path.join(ZOO, "report", "results.jsonl")
# Git-ignored: the 8x8 sample grids (PNG + prompts) an evaluation writes; rerunning it regenerates them.
REPORT_DIR = os.path.join(WORK, "report")
# The embedded default bundles the runner reads (committed), outside the training folder.
MODELS_DIR = os.path.join(RUNNER, "models")
SCHEMA = os.path.join(os.path.dirname(RUNNER), "formats", "manifest.schema.json")
