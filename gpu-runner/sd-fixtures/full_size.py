"""Full-size SD1.5- and SDXL-shaped pipelines with random weights, exported fp16 by optimum into out/full/ (ignored,
never committed): they prove the runner loads and runs real-sized graphs (external data, fp16 I/O) on a CPU.

    .venv/bin/python full_size.py sd15          # ~860M U-Net, 512×512; a few GB of RAM and disk
    .venv/bin/python full_size.py sdxl          # ~2.6B U-Net, 1024×1024; needs far more RAM: memory permitting
    .venv/bin/python full_size.py --via-fp32 sd15     # fp32 export + ORT's fp16 conversion: far faster on CPU
    .venv/bin/python full_size.py --smoke-only sd15   # only the onnxruntime smoke run over an existing export
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import make_fixtures  # noqa: E402
import tiny_vocab  # noqa: E402
import torch  # noqa: E402

FULL = make_fixtures.OUT / "full"

# CLIP ViT-L/14's text tower (SD1.x, SDXL's first encoder) and OpenCLIP ViT-bigG's (SDXL's second).
CLIP_L = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    hidden_act="quick_gelu",
    projection_dim=768,
)
CLIP_G = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    hidden_act="gelu",
    projection_dim=1280,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
)

SHAPES = {
    "sd15": dict(
        size=512,
        unet=dict(
            sample_size=64,
            cross_attention_dim=768,
            attention_head_dim=8,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        ),
        vae=dict(scaling_factor=0.18215),
        text=[(CLIP_L, tiny_vocab.EOS, False)],
    ),
    "sdxl": dict(
        size=1024,
        unet=dict(
            sample_size=128,
            cross_attention_dim=2048,
            attention_head_dim=(5, 10, 20),
            layers_per_block=2,
            block_out_channels=(320, 640, 1280),
            transformer_layers_per_block=(1, 2, 10),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        ),
        vae=dict(scaling_factor=0.13025, force_upcast=True),
        text=[(CLIP_L, tiny_vocab.EOS, False), (CLIP_G, "!", True)],
    ),
}


def build(name: str, fp16: bool = True) -> Path:
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    shape = SHAPES[name]
    vocab = make_fixtures.VOCAB
    tiny_vocab.write_vocab(vocab)
    n_tokens = len(tiny_vocab.clip_tokenizer(vocab, tiny_vocab.EOS))
    torch.manual_seed(0)
    # Built in fp16 directly when exporting fp16: an fp32 SDXL U-Net alone is 10 GB of RAM.
    dtype = torch.float16 if fp16 else torch.float32
    torch.set_default_dtype(dtype)
    # CLIP's real 49408-row embedding, with the tiny vocabulary's BOS/EOS ids (the tokenizer is the small one).
    encoders = [
        (CLIPTextModelWithProjection if proj else CLIPTextModel)(
            CLIPTextConfig(
                vocab_size=49408,
                max_position_embeddings=77,
                bos_token_id=n_tokens - 2,
                eos_token_id=n_tokens - 1,
                pad_token_id=n_tokens - 1,
                **cfg,
            )
        ).to(dtype)
        for cfg, _, proj in shape["text"]
    ]
    tokenizers = [tiny_vocab.clip_tokenizer(vocab, pad) for _, pad, _ in shape["text"]]
    unet = UNet2DConditionModel(**shape["unet"])
    vae = AutoencoderKL(sample_size=shape["size"], **VAE, **shape["vae"])
    torch.set_default_dtype(torch.float32)
    betas = dict(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, steps_offset=1
    )
    if name == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=encoders[0],
            text_encoder_2=encoders[1],
            tokenizer=tokenizers[0],
            tokenizer_2=tokenizers[1],
            unet=unet,
            scheduler=EulerDiscreteScheduler(**betas),
        )
    else:
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=encoders[0],
            tokenizer=tokenizers[0],
            unet=unet,
            scheduler=PNDMScheduler(**betas, skip_prk_steps=True),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    print(f"{name}: U-Net {sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M parameters", flush=True)
    src = FULL / f"{name}-pt{16 if fp16 else 32}"
    if src.exists():
        shutil.rmtree(src)
    pipe.save_pretrained(src)
    return src


def to_fp16(folder: Path) -> None:
    """fp32 export → fp16 graphs with fp16 inputs/outputs, as optimum's `--dtype fp16` writes them. PyTorch's fp16
    kernels on CPU are so slow that tracing an fp16 U-Net takes the better part of an hour on two cores; the fp32
    trace takes minutes and ORT's converter the rest."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    import onnx

    for path in sorted(folder.glob("*/model.onnx")):
        model = onnx.load(str(path))  # with its external data
        model = _float_resize_scales(convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=True))
        data = path.with_name("model.onnx_data")
        if data.exists():
            data.unlink()
        large = sum(t.ByteSize() for t in model.graph.initializer) > 2**31 - 2**26  # protobuf's 2 GB, less the graph
        onnx.save(
            model,
            str(path),
            save_as_external_data=large,
            all_tensors_to_one_file=True,
            location="model.onnx_data",
            size_threshold=100,
        )
        del model
        print(f"  {path.parent.name}: converted to fp16", flush=True)


def _float_resize_scales(model):
    """The converter leaves Resize in fp32 but turns the Constant holding its `scales` (and `roi`) into fp16, which
    ONNX refuses: put those constants back to fp32."""
    import numpy as np

    from onnx import numpy_helper

    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type != "Resize":
            continue
        for name in node.input[1:3]:
            const = producers.get(name)
            if const is None or const.op_type != "Constant":
                continue
            for attr in const.attribute:
                if attr.name == "value" and attr.t.data_type == 10:  # FLOAT16
                    value = numpy_helper.to_array(attr.t).astype(np.float32)
                    attr.t.CopyFrom(numpy_helper.from_array(value, attr.t.name))
    return model


def smoke(dst: Path) -> None:
    """One text-encoder pass, one U-Net step and one VAE decode through onnxruntime's CPU EP, with the graphs'
    own dtypes: proves the export loads and runs on a CPU and says how long a step takes."""
    import numpy as np
    import onnxruntime as ort

    def session(part: str):
        start = time.time()
        s = ort.InferenceSession(str(dst / part / "model.onnx"), providers=["CPUExecutionProvider"])
        print(f"  {part}: loaded in {time.time() - start:.1f} s", flush=True)
        return s

    def feed(s, values: dict):
        types = {i.name: i.type for i in s.get_inputs()}
        return {k: v.astype(np.float16 if types[k] == "tensor(float16)" else v.dtype) for k, v in values.items()}

    def run(s, part, values):
        start = time.time()
        out = s.run(None, feed(s, values))
        print(f"  {part}: ran in {time.time() - start:.1f} s → {[o.shape for o in out][:3]}", flush=True)
        return out

    ids = np.full((1, 77), 848, dtype=np.int64)
    ids[0, 0] = 847
    states = [run(session(p), p, {"input_ids": ids}) for p in ("text_encoder", "text_encoder_2") if (dst / p).exists()]
    unet = session("unet")
    names = {i.name: i.shape for i in unet.get_inputs()}
    size = 128 if "time_ids" in names else 64
    width = names["encoder_hidden_states"][2]
    values = {
        "sample": np.random.randn(1, 4, size, size).astype(np.float32),
        "timestep": np.array(999.0, dtype=np.float32),
        "encoder_hidden_states": np.random.randn(1, 77, width).astype(np.float32),
    }
    if "time_ids" in names:
        values["text_embeds"] = states[-1][0].astype(np.float32)
        values["time_ids"] = np.array([[1024, 1024, 0, 0, 1024, 1024]], dtype=np.float32)
    run(unet, "unet", values)
    del unet
    run(session("vae_decoder"), "vae_decoder", {"latent_sample": np.random.randn(1, 4, size, size).astype(np.float32)})


def main(names: list[str], smoke_only: bool, via_fp32: bool) -> None:
    for name in names:
        dst = FULL / f"{name}-fp16" if not via_fp32 else FULL / f"{name}-fp16-via-fp32"
        if not smoke_only:
            start = time.time()
            src = build(name, fp16=not via_fp32)
            make_fixtures.export(src, dst, dtype=None if via_fp32 else "fp16", external=False, validate=False)
            shutil.rmtree(src)
            if via_fp32:
                to_fp16(dst)
            print(f"{name}: built and exported in {time.time() - start:.0f} s", flush=True)
        for f in sorted(p for p in dst.rglob("*") if p.is_file() and p.stat().st_size > 1e6):
            print(f"  {f.relative_to(dst)}  {f.stat().st_size / 1e6:.0f} MB")
        smoke(dst)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(args or ["sd15"], smoke_only="--smoke-only" in sys.argv, via_fp32="--via-fp32" in sys.argv)
