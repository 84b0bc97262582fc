"""Tiny random-weight Stable Diffusion pipelines, shaped like diffusers' own fast-test models.

Each family keeps the real model's conventions (scheduler config, prediction type, tokenizer padding, VAE scale
factor 8 and scaling factor, SD2's linear projections, LCM's `time_cond_proj_dim`, SDXL's two encoders and
`text_time` embedding) at widths of 4-64 so that every export stays a few hundred KB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import tiny_vocab
import torch

IMAGE_SIZE = 64  # → 8×8 latents with the VAE's 8× downscale

BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


@dataclass(frozen=True)
class Family:
    name: str
    pipeline: str  # diffusers class written to model_index.json
    scheduler: str
    scheduler_config: dict
    text: list[dict]  # one CLIPTextConfig kwargs per encoder (+ "pad" and "projection")
    unet: dict
    vae: dict = field(default_factory=dict)
    seed: int = 0


def _text(hidden: int, layers: int, act: str, pad: str, projection: bool = False) -> dict:
    return dict(hidden_size=hidden, num_hidden_layers=layers, hidden_act=act, pad=pad, projection=projection)


_UNET_SD = dict(
    sample_size=IMAGE_SIZE // 8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(8, 16),
    norm_num_groups=4,
    # SD1.x order: cross-attention at the high resolutions, a plain block at the lowest.
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            name="sd15",
            pipeline="StableDiffusionPipeline",
            scheduler="PNDMScheduler",
            scheduler_config=dict(
                **BETAS, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, clip_sample=False
            ),
            text=[_text(32, 3, "quick_gelu", tiny_vocab.EOS)],
            unet=dict(_UNET_SD, cross_attention_dim=32, attention_head_dim=4),
            seed=15,
        ),
        Family(
            name="sd2v",
            pipeline="StableDiffusionPipeline",
            scheduler="DDIMScheduler",
            scheduler_config=dict(
                **BETAS,
                prediction_type="v_prediction",
                steps_offset=1,
                set_alpha_to_one=False,
                clip_sample=False,
            ),
            text=[_text(48, 2, "gelu", "!")],
            unet=dict(
                _UNET_SD,
                cross_attention_dim=48,
                attention_head_dim=(2, 4),
                use_linear_projection=True,
                upcast_attention=True,
            ),
            seed=21,
        ),
        Family(
            name="lcm",
            pipeline="LatentConsistencyModelPipeline",
            scheduler="LCMScheduler",
            scheduler_config=dict(
                **BETAS,
                original_inference_steps=50,
                steps_offset=1,
                set_alpha_to_one=True,
                clip_sample=False,
                timestep_spacing="leading",
            ),
            text=[_text(32, 3, "quick_gelu", tiny_vocab.EOS)],
            unet=dict(_UNET_SD, cross_attention_dim=32, attention_head_dim=4, time_cond_proj_dim=32),
            seed=7,
        ),
        Family(
            name="sdxl",
            pipeline="StableDiffusionXLPipeline",
            scheduler="EulerDiscreteScheduler",
            scheduler_config=dict(**BETAS, steps_offset=1, timestep_spacing="leading", interpolation_type="linear"),
            # Different widths for the two encoders so that a swapped concatenation cannot pass.
            text=[_text(24, 2, "quick_gelu", tiny_vocab.EOS), _text(40, 3, "gelu", "!", projection=True)],
            unet=dict(
                _UNET_SD,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2),
                attention_head_dim=(2, 4),
                use_linear_projection=True,
                cross_attention_dim=24 + 40,
                addition_embed_type="text_time",
                addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=6 * 8 + 32,  # six time ids + pooled projection_dim
            ),
            vae=dict(scaling_factor=0.13025, force_upcast=False),
            seed=1,
        ),
        Family(
            name="turbo",
            pipeline="StableDiffusionPipeline",
            scheduler="EulerDiscreteScheduler",
            scheduler_config=dict(**BETAS, steps_offset=1, timestep_spacing="trailing"),
            text=[_text(32, 2, "gelu", "!")],
            unet=dict(_UNET_SD, cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True),
            seed=3,
        ),
    ]
}


def _text_encoder(cfg: dict, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=cfg["hidden_size"],
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=cfg["num_hidden_layers"],
        hidden_act=cfg["hidden_act"],
        layer_norm_eps=1e-5,
        max_position_embeddings=77,
        vocab_size=vocab_size,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,  # not 2, so that the pooled output looks for EOS rather than argmax
        pad_token_id=vocab_size - 1,
        projection_dim=32,
    )
    cls = CLIPTextModelWithProjection if cfg["projection"] else CLIPTextModel
    return cls(config).eval()


def build_pipeline(family: Family, vocab_dir: Path):
    """Random-weight diffusers pipeline for `family` (deterministic: seeded per family)."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(family.seed)
    unet = UNet2DConditionModel(**family.unet).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(4, 8, 8, 8),
        norm_num_groups=4,
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        sample_size=IMAGE_SIZE,
        **family.vae,
    ).eval()
    vocab_size = len(json.loads((vocab_dir / "vocab.json").read_text()))
    encoders = [_text_encoder(cfg, vocab_size) for cfg in family.text]
    tokenizers = [tiny_vocab.clip_tokenizer(vocab_dir, cfg["pad"]) for cfg in family.text]
    # from_config, as loading the real SD1.5 scheduler_config.json does: it keeps keys the class does not take
    # (SD1.5's PNDM config carries `clip_sample: false`, which DDIMScheduler.from_config then honours).
    scheduler = getattr(diffusers, family.scheduler).from_config(family.scheduler_config)
    cls = getattr(diffusers, family.pipeline)
    if family.pipeline == "StableDiffusionXLPipeline":
        return cls(
            vae=vae,
            text_encoder=encoders[0],
            text_encoder_2=encoders[1],
            tokenizer=tokenizers[0],
            tokenizer_2=tokenizers[1],
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
        )
    return cls(
        vae=vae,
        text_encoder=encoders[0],
        tokenizer=tokenizers[0],
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
