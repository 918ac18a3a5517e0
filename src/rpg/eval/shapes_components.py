"""What ``shapes-sd`` is made of: a word-level CLIP tokenizer over the shapes world's words and
fresh, seeded text encoder, UNet, VAE and schedulers (see :mod:`rpg.eval.train_shapes`).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rpg.eval.shapes import WORDS

__all__ = [
    "MAX_LENGTH",
    "TEXT_HIDDEN",
    "attention_levels",
    "build_components",
    "grow_unet_attention",
    "word_tokenizer_files",
    "write_word_tokenizer",
]

_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
MAX_LENGTH = 77
TEXT_HIDDEN = 64


def _bpe(word: str, merges: Sequence[str]) -> list[str]:
    """The pieces CLIP's byte-pair encoding makes of ``word`` (lowest-ranked merge first)."""
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    pieces = [*list(word[:-1]), word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [
            (ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(itertools.pairwise(pieces))
        ]
        rank, i = min(pairs)
        if rank == math.inf:
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def word_tokenizer_files() -> tuple[dict[str, int], list[str]]:
    """A CLIP vocabulary with one token per world word, plus single characters for anything else.

    The merges build each word from its letters left to right; every intermediate piece is in
    the vocabulary, so any text still tokenizes (unknown words become letters).
    """
    letters = sorted({ch for w in WORDS for ch in w} | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    tokens: list[str] = []
    seen: set[str] = set()

    def add(token: str) -> None:
        if token not in seen:
            seen.add(token)
            tokens.append(token)

    for ch in letters + list(",.;:!?'-()"):
        add(ch)
        add(ch + "</w>")
    merges: list[str] = []
    for word in sorted(WORDS, key=len, reverse=True):
        # merge the first two pieces that BPE leaves until the word is one token; a merge added
        # later ranks lower, so it only fires once the earlier ones are done
        while len(pieces := _bpe(word, merges)) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            add(pieces[0] + pieces[1])
        add(pieces[0])
    add(_BOS)
    add(_EOS)
    return {t: i for i, t in enumerate(tokens)}, merges


def write_word_tokenizer(folder: Path) -> None:
    """Write the word-level CLIP tokenizer (vocab, merges and configs) to ``folder``."""
    from rpg.backbones.tiny.components import write_tokenizer

    write_tokenizer(folder, word_tokenizer_files())


def build_components(
    tok_dir: Path,
    *,
    seed: int,
    unet_channels: Sequence[int],
    unet_attention: Sequence[int] = (1, 2),
    unet_heads: int = 2,
    vae_channels: Sequence[int] = (32, 64, 64),
    latent_channels: int = 16,
    prediction_type: str = "v_prediction",
    zero_terminal_snr: bool = False,
) -> dict[str, Any]:
    """Fresh tokenizer, text encoder, UNet, VAE and scheduler of shapes-sd (seeded weights).

    With ``zero_terminal_snr`` the SD betas are rescaled so the last timestep is pure noise, and
    sampling starts there (``trailing`` spacing). Under the stock schedule the last step keeps 7%
    of the image; over a 16×16 latent the mean of the starting noise is as large as that, and
    the model reads it as the picture: the seed, not the prompt, chooses the background colour.
    It is off by default because 2 000 steps (25 minutes) of training on it, from a UNet trained
    on the stock schedule, drew mostly empty pictures; ``shapes-sd`` keeps the SD schedule.

    ``unet_attention`` names the UNet levels (0 = the 16×16 latent) that have transformer blocks.
    The default leaves the 16×16 level to convolutions: on a CPU, attention over its 256 tokens
    with narrow heads cost half of every training step, and a half-as-slow step bought a 1.8×
    wider UNet that still takes twice the steps in the same time.
    """
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from rpg.backbones.tiny.components import SD_SCHEDULE

    write_word_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_HIDDEN,
            intermediate_size=4 * TEXT_HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=TEXT_HIDDEN,
        )
    )
    levels = len(unet_channels)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=latent_channels,
        out_channels=latent_channels,
        layers_per_block=1,
        block_out_channels=tuple(unet_channels),
        **unet_block_types(levels, unet_attention),
        cross_attention_dim=TEXT_HIDDEN,
        # diffusers reads this legacy name as the number of heads
        attention_head_dim=unet_heads,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=tuple(vae_channels),
        layers_per_block=1,
        latent_channels=latent_channels,
        # four channels per group in the narrowest block: with one channel per group, GroupNorm
        # erases the colour of a flat image
        norm_num_groups=max(1, min(vae_channels) // 4),
        sample_size=64,
        mid_block_add_attention=False,
    )
    schedule = dict(SD_SCHEDULE, prediction_type=prediction_type)
    if zero_terminal_snr:
        schedule.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "unet": unet,
        "vae": vae,
        "train_scheduler": DDPMScheduler(**schedule),
        "scheduler": DPMSolverMultistepScheduler(**schedule),
    }


def unet_block_types(count: int, attention: Sequence[int]) -> dict[str, tuple[str, ...]]:
    """Down and up block types of a ``count``-level UNet with cross-attention at ``attention``."""
    return {
        "down_block_types": tuple(
            "CrossAttnDownBlock2D" if i in attention else "DownBlock2D" for i in range(count)
        ),
        "up_block_types": tuple(
            "CrossAttnUpBlock2D" if i in attention else "UpBlock2D" for i in reversed(range(count))
        ),
    }


def attention_levels(unet: Any) -> list[int]:
    """The levels (0 = the 16×16 latent) of a UNet's down path that have cross-attention."""
    return [i for i, kind in enumerate(unet.config.down_block_types) if "CrossAttn" in kind]


def grow_unet_attention(trained: Any, levels: Sequence[int], *, seed: int = 0) -> Any:
    """``trained`` with cross-attention on more ``levels``, in new blocks that start as no-ops.

    The new blocks get seeded fresh weights except ``proj_out``, which starts at zero. A
    transformer block adds its output to its input, so the grown UNet computes exactly what the
    trained one did, and training goes on from the trained model instead of from one that new
    random layers have knocked off course.
    """
    from diffusers import UNet2DConditionModel

    have = attention_levels(trained)
    if not set(have) <= set(levels):
        raise ValueError(
            f"the UNet has cross-attention at levels {have}; a UNet can grow attention, not "
            f"lose it, so name at least those levels (asked for {list(levels)})"
        )
    count = len(trained.config.down_block_types)
    config = dict(trained.config, **unet_block_types(count, levels))
    torch.manual_seed(seed)
    grown = UNet2DConditionModel.from_config(config)
    missing, unexpected = grown.load_state_dict(trained.state_dict(), strict=False)
    assert not unexpected and all(".attentions." in key for key in missing), (missing, unexpected)
    block_of = (re.match(r"(.*?\.attentions\.\d+)\.", key) for key in missing)
    with torch.no_grad():
        for name in sorted({match.group(1) for match in block_of if match}):
            proj_out = grown.get_submodule(name).proj_out
            proj_out.weight.zero_()
            if proj_out.bias is not None:
                proj_out.bias.zero_()
    return grown
