"""The runner's peers for bench/sd-peers.ts: optimum's ONNX Runtime pipeline over an export and diffusers (PyTorch)
over the pipeline the export was made from, both loaded once, then timed one image per request so the TypeScript
driver can interleave them with the runner (runner, optimum, diffusers, runner, ...).

    .venv/bin/python sd_peers.py --export <optimum export> --pytorch <diffusers pipeline> [--threads 1]

Protocol: one JSON line out when loaded ({"ready": ..., load times}), then per request line in
({"peer": "optimum"|"diffusers", "prompt", "negative_prompt", "steps", "guidance", "width", "height",
"latents": <raw float32 file>, "latent_shape", "image": <raw float32 file to write, NHWC in [0, 1]>}) one line out
({"ms": whole call, "unet_ms": [per U-Net call]}). Logs go to stderr. `--only optimum|diffusers` loads one of
them: at full size the runner and both peers do not fit in memory together.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _time_calls(module, log: list[float]) -> None:
    """Times every call of the pipeline's U-Net (an nn.Module for diffusers, optimum's session wrapper for ORT)."""
    forward = module.forward

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return forward(*args, **kwargs)
        finally:
            log.append((time.perf_counter() - start) * 1e3)

    module.forward = timed


def load(args: argparse.Namespace) -> tuple[dict, dict]:
    import diffusers
    import onnxruntime as ort
    from optimum.onnxruntime import ORTDiffusionPipeline

    torch.set_num_threads(args.threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # As the runner's sessions (bundle.ts sessionOptions, allowSpinning false by default).
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if args.spin else "0")

    pipes, info = {}, {}
    if args.only in (None, "optimum"):
        rss = _rss_mb()
        start = time.perf_counter()
        pipes["optimum"] = ORTDiffusionPipeline.from_pretrained(args.export, session_options=so)
        info["optimum"] = {"load_ms": (time.perf_counter() - start) * 1e3, "rss_mb": _rss_mb() - rss}
    if args.only in (None, "diffusers"):
        rss = _rss_mb()
        start = time.perf_counter()
        dtype = getattr(torch, args.diffusers_dtype)
        pipes["diffusers"] = diffusers.DiffusionPipeline.from_pretrained(args.pytorch, torch_dtype=dtype)
        info["diffusers"] = {
            "load_ms": (time.perf_counter() - start) * 1e3,
            "rss_mb": _rss_mb() - rss,
            "dtype": args.diffusers_dtype,
        }
    for pipe in pipes.values():
        pipe.scheduler = getattr(diffusers, args.scheduler).from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
    return pipes, info


def generate(pipes: dict, req: dict) -> dict:
    pipe = pipes[req["peer"]]
    latents = torch.from_numpy(np.fromfile(req["latents"], dtype=np.float32).reshape(req["latent_shape"]))
    if req["peer"] == "diffusers":
        latents = latents.to(pipe.unet.dtype)
    unet_ms: list[float] = []
    _time_calls(pipe.unet, unet_ms)
    start = time.perf_counter()
    with torch.inference_mode():
        images = pipe(
            prompt=req["prompt"],
            negative_prompt=req["negative_prompt"],
            num_inference_steps=req["steps"],
            guidance_scale=req["guidance"],
            width=req["width"],
            height=req["height"],
            latents=latents,
            output_type="np",
        ).images
    ms = (time.perf_counter() - start) * 1e3
    del pipe.unet.forward  # back to the class's own
    if req.get("image"):
        np.asarray(images, dtype=np.float32).tofile(req["image"])
    return {"ms": ms, "unet_ms": unet_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="optimum ONNX export folder (model_index.json, unet/, ...)")
    parser.add_argument("--pytorch", required=True, help="the diffusers pipeline folder the export was made from")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (ONNX Runtime) and torch threads")
    parser.add_argument(
        "--scheduler", default="DDIMScheduler", help="diffusers scheduler class, from the export's config"
    )
    parser.add_argument("--diffusers-dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--spin", action="store_true", help="let ONNX Runtime's intra-op threads spin")
    parser.add_argument("--only", choices=["optimum", "diffusers"], help="load one peer (full-size models: memory)")
    args = parser.parse_args()
    pipes, info = load(args)
    info["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(generate(pipes, json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
