"""Every example in examples/python runs against the stack and prints what it promises."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[3] / "examples/python"
EXPECT = {
    "generate.py": "steps →",
    "two_loras.py": "lora-pastel@1 × 0.8, lora-striped@1 × 0.5",
    "upload_addon.py": "used it: http",
    "stream_progress.py": ": succeeded",
    "verify_webhook.py": "a tampered copy is refused",
}


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_example(name, stack, tmp_path):
    env = {**os.environ, "IMAGEGEN_BASE_URL": stack.edge_url, "IMAGEGEN_API_KEY": stack.api_key}
    args = [sys.executable, str(EXAMPLES / name)]
    if name == "generate.py":
        args.append(str(tmp_path / "out.png"))
    if name == "upload_addon.py":
        args += [str(EXAMPLES.parents[1] / "gpu-runner/models/tiny-shapes/addons/lora-striped.safetensors"), "py-ex"]
    run = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout + run.stderr
    assert EXPECT[name] in run.stdout, run.stdout
    if name == "generate.py":
        assert (tmp_path / "out.png").read_bytes()[:4] == b"\x89PNG"
