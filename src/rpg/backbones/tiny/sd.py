"""The tiny Stable Diffusion 1.x-architecture model (``tiny-sd``), written as a diffusers folder.

It loads with ``StableDiffusionPipeline.from_pretrained`` like any checkpoint, renders 64×64 in
about a second on two CPU cores, and is bit-for-bit the same for a given seed. Its images are
noise: the weights are random.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rpg.backbones.tiny.components import (
    SD_SCHEDULE,
    clip_text_config,
    copy_tokenizer_files,
    four_level_vae,
    sd_pipeline,
    staged_folder,
    write_tokenizer,
)

__all__ = ["HIDDEN", "write_tiny_sd"]

#: Width of the tiny SD text encoder, and so the UNet's cross-attention dimension.
HIDDEN = 32


def write_tiny_sd(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a complete tiny SD 1.x-architecture diffusers folder to ``path`` and return it.

    UNet with block_out_channels (32, 64), one layer per block and cross-attention dimension 32
    (native size 64×64); a four-level VAE (latent factor 8, like the real one); a two-layer CLIP
    text encoder of width 32; a byte-level CLIP tokenizer (``vocab.json``/``merges.txt``,
    ``model_max_length=77``); SD 1.5's PNDM scheduler settings. The same ``seed`` writes the
    same weights. An existing folder is replaced.
    """
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    with staged_folder(path) as (tmp, staging):
        tok_dir = tmp / "tokenizer"
        write_tokenizer(tok_dir)
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = UNet2DConditionModel(
                sample_size=8,
                in_channels=4,
                out_channels=4,
                layers_per_block=1,
                block_out_channels=(32, 64),
                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=HIDDEN,
                attention_head_dim=4,
                norm_num_groups=16,
            )
            vae = four_level_vae(
                (16, 16, 32, 32), layers_per_block=1, sample_size=64, norm_num_groups=16
            )
            text_encoder = CLIPTextModel(clip_text_config(tokenizer, HIDDEN, 2, intermediate=37))
        scheduler = PNDMScheduler(**SD_SCHEDULE, set_alpha_to_one=False, skip_prk_steps=True)
        pipe = sd_pipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler
        )
        pipe.save_pretrained(staging)
        # Keep the tokenizer's source files next to whatever save_pretrained wrote.
        copy_tokenizer_files(tok_dir, staging / "tokenizer")
    return Path(path)
