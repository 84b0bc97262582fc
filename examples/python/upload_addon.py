"""Upload a LoRA (default: the demo lora-pastel.safetensors) with a progress bar, then use it.

python3 examples/python/upload_addon.py [file.safetensors] [name]
"""

import sys

from _config import ROOT, client, model

path = sys.argv[1] if len(sys.argv) > 1 else ROOT / "gpu-runner/models/tiny-shapes/addons/lora-pastel.safetensors"
name = sys.argv[2] if len(sys.argv) > 2 else "my-pastel"


def progress(sent: int, total: int) -> None:
    print(f"\r  uploading {sent * 100 // total:3d}% of {total} bytes", end="" if sent < total else "\n", flush=True)


with client() as c:
    up = c.addons.upload(path, kind="lora", name=name, family="tiny-shapes", on_progress=progress)
    if up.version.status != "ready":
        sys.exit(f"rejected: {up.version.rejection_reason}")
    print(f"{up.addon.id} version {up.version.version} is ready")
    g = c.generations.create_and_wait(model=model(), prompt="a small green square", seed=2, loras=[{"id": up.addon.id}])
    print(f"{g.id} used it: {g.images[0].url}")
