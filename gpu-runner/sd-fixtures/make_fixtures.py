"""Builds the committed Stable Diffusion fixtures: tiny random-weight pipelines exported by optimum, their LoRAs, and
diffusers' reference outputs (make_references.py).

    ./setup-venv.sh && .venv/bin/python make_fixtures.py            # everything
    .venv/bin/python make_fixtures.py --families sd15 lcm --no-references

Deterministic: seeds are fixed per family, so a rerun with the versions in VERSIONS.txt rewrites the same weights.
"""

from __future__ import annotations

import argparse
import os
import shutil
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import families  # noqa: E402
import loras  # noqa: E402
import tiny_vocab  # noqa: E402

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "test" / "fixtures" / "sd"
OUT = HERE / "out"  # ignored: the PyTorch pipelines the exports and references come from
VOCAB = OUT / "vocab"

# (fixture folder, family, optimum dtype, weights in model.onnx_data). turbo is the family exported in fp16 with
# external data: optimum writes model.onnx_data on its own past 2 GB, and FORCE_ONNX_EXTERNAL_DATA=1 forces the same
# layout for a small model. Its references are still PyTorch fp32, as a user's fp16 export is checked against fp32.
EXPORTS = [
    ("sd15", "sd15", None, False),
    ("sd2v", "sd2v", None, False),
    ("lcm", "lcm", None, False),
    ("sdxl", "sdxl", None, False),
    ("turbo", "turbo", "fp16", True),
]

VERSIONED = [
    "torch",
    "diffusers",
    "transformers",
    "tokenizers",
    "optimum",
    "optimum-onnx",
    "onnx",
    "onnxruntime",
    "peft",
    "safetensors",
    "accelerate",
    "numpy",
    "huggingface_hub",
]


def pt_dir(family: str) -> Path:
    return OUT / "pt" / family


def export(src: Path, dst: Path, dtype: str | None, external: bool, validate: bool = True) -> None:
    """optimum's exporter as `optimum-cli export onnx --model src --task text-to-image [--dtype fp16] dst` runs it."""
    from optimum.exporters.onnx import main_export

    if dst.exists():
        shutil.rmtree(dst)
    previous = os.environ.get("FORCE_ONNX_EXTERNAL_DATA")
    os.environ["FORCE_ONNX_EXTERNAL_DATA"] = "1" if external else "0"
    try:
        main_export(
            model_name_or_path=str(src),
            output=str(dst),
            task="text-to-image",
            dtype=dtype,
            # optimum validates the fp16 export against PyTorch fp16 on CPU with fp32 tolerances (1e-5) and fails on
            # ~3e-3 differences (and then crashes formatting its error); the files are written either way.
            do_validation=validate and dtype is None,
        )
    finally:
        if previous is None:
            os.environ.pop("FORCE_ONNX_EXTERNAL_DATA")
        else:
            os.environ["FORCE_ONNX_EXTERNAL_DATA"] = previous


def write_versions() -> None:
    lines = []
    for name in VERSIONED:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    (HERE / "VERSIONS.txt").write_text("\n".join(lines) + "\n")


def build(names: list[str]) -> None:
    tiny_vocab.write_vocab(VOCAB)
    for name in names:
        family = families.FAMILIES[name]
        pipe = families.build_pipeline(family, VOCAB)
        if pt_dir(name).exists():
            shutil.rmtree(pt_dir(name))
        pipe.save_pretrained(pt_dir(name))
        for folder, fam, dtype, external in EXPORTS:
            if fam == name:
                export(pt_dir(name), FIXTURES / folder, dtype, external)
        for file, (tensors, meta) in loras.loras_for(name, pipe).items():
            loras.write(FIXTURES / name / "loras" / file, tensors, meta)


def sizes() -> None:
    total = 0
    for folder in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        total += size
        print(f"{folder.name:12s} {size / 1e6:6.2f} MB")
    print(f"{'total':12s} {total / 1e6:6.2f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="*", default=list(families.FAMILIES))
    parser.add_argument("--no-build", action="store_true", help="reuse out/ and the exports; only references")
    parser.add_argument("--no-references", action="store_true")
    args = parser.parse_args()
    os.chdir(HERE)
    write_versions()
    if not args.no_build:
        build(args.families)
    if not args.no_references:
        import make_references

        make_references.main(args.families)
    sizes()


if __name__ == "__main__":
    main()
