"""The tiny SDXL-architecture model (``tiny-sdxl``), written as a diffusers folder.

The SDXL code paths (two text encoders, pooled embeddings, ``add_time_ids``) need a real model
to be tested, and real ones are gigabytes. This writer produces the same architecture at toy
size: a 64×64 render takes about a second on two CPU cores, the same seed writes the same
weights, and the images are noise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rpg.backbones.tiny.components import (
    SD_SCHEDULE,
    clip_text_config,
    copy_tokenizer_files,
    four_level_vae,
    sdxl_pipeline,
    staged_folder,
    write_tokenizer,
)

__all__ = ["sdxl_unet", "write_tiny_sdxl"]

# The two encoders must differ in width: diffusers' single-file loader tells SDXL's CLIP-L
# and OpenCLIP-G apart by the width of their position embeddings, as in the real 768 / 1280.
_HIDDEN_1 = 32
_HIDDEN_2 = 64
# Ten layers: diffusers recognises an SDXL single file by OpenCLIP-G's tenth block.
_LAYERS_2 = 10
_TIME_EMBED_DIM = 8


def sdxl_unet() -> Any:
    """A tiny SDXL-style UNet (random weights): what ``write_tiny_sdxl`` and ControlNets use."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        # Like SDXL: no attention at the finest level, two transformer layers below it.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=_HIDDEN_1 + _HIDDEN_2,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED_DIM,
        # six time ids (original size, crop corner, target size) + the pooled text embedding
        projection_class_embeddings_input_dim=6 * _TIME_EMBED_DIM + _HIDDEN_2,
        norm_num_groups=16,
    )


def write_tiny_sdxl(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a complete tiny SDXL-architecture diffusers folder to ``path`` and return it.

    Text encoders: a ``CLIPTextModel`` of width 32 and a ten-layer
    ``CLIPTextModelWithProjection`` of width 64 (its pooled, projected output feeds the UNet's
    ``text_time`` embedding), each with the byte-level tokenizer of
    :mod:`rpg.backbones.tiny.components`.
    UNet: block_out_channels (32, 64), cross-attention dimension 96 (= 32 + 64), attention only
    below the finest level, as in SDXL. VAE: four levels (latent factor 8). Scheduler: SDXL's
    Euler settings. An existing folder is replaced.
    """
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    with staged_folder(path) as (tmp, staging):
        tok_dir = tmp / "tokenizer"
        write_tokenizer(tok_dir)
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = sdxl_unet()
            vae = four_level_vae(
                (16, 16, 32, 32),
                layers_per_block=1,
                sample_size=64,
                norm_num_groups=16,
                scaling_factor=0.13025,
            )
            text_encoder = CLIPTextModel(clip_text_config(tokenizer, _HIDDEN_1, 2))
            text_encoder_2 = CLIPTextModelWithProjection(
                clip_text_config(tokenizer_2, _HIDDEN_2, _LAYERS_2)
            )
        scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="leading")
        pipe = sdxl_pipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
        )
        pipe.save_pretrained(staging)
        for sub in ("tokenizer", "tokenizer_2"):
            copy_tokenizer_files(tok_dir, staging / sub)
    return Path(path)
