"""Building blocks of the tiny random-weight models: a tokenizer, text encoders, VAE, pipelines.

The tiny writers (:mod:`rpg.backbones.tiny.sd`, :mod:`~rpg.backbones.tiny.sdxl`,
:mod:`~rpg.backbones.tiny.controlnet`) and ``bench/overhead.py`` (real sizes, random weights)
build the same kinds of components; only the sizes differ.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_LENGTH",
    "SD_SCHEDULE",
    "byte_level_tokenizer",
    "byte_level_vocab",
    "clip_text_config",
    "copy_tokenizer_files",
    "four_level_vae",
    "sd_pipeline",
    "sdxl_pipeline",
    "staged_folder",
    "write_tokenizer",
]

_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
#: Token positions of the tiny CLIP text encoders, as in the real ones.
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable characters (byte-level BPE)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes, strict=True)}


def byte_level_vocab() -> tuple[dict[str, int], list[str]]:
    """A CLIP vocabulary over single bytes, so that any text tokenizes, and its merges.

    Every byte appears twice, plain and with CLIP's end-of-word suffix ``</w>``; a handful of
    merges for common letter pairs keep ordinary words a little shorter than one token per
    character. The special tokens come last.
    """
    chars = sorted(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges = ["t h", "e r", "a n", "i n", "o n", "th e</w>", "an d</w>"]
    for merge in merges:
        merged = merge.replace(" ", "")
        if merged not in tokens:
            tokens.append(merged)
    tokens += [_BOS, _EOS]
    return {token: i for i, token in enumerate(tokens)}, merges


def write_tokenizer(
    folder: Path, vocab_and_merges: tuple[dict[str, int], list[str]] | None = None
) -> None:
    """Write a CLIP tokenizer into ``folder``: by default the byte-level one of
    :func:`byte_level_vocab`, else the given vocabulary and merges (the shapes world's words).

    ``vocab.json``, ``merges.txt`` and the tokenizer configs (``model_max_length=77``), ready for
    ``CLIPTokenizer.from_pretrained(folder)``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = vocab_and_merges or byte_level_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8"
    )
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": _BOS,
        "eos_token": _EOS,
        "unk_token": _EOS,
        "pad_token": _EOS,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {"bos_token": _BOS, "eos_token": _EOS, "unk_token": _EOS, "pad_token": _EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")


def byte_level_tokenizer() -> Any:
    """The ``CLIPTokenizer`` of :func:`write_tokenizer`, loaded through a temporary folder."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        return CLIPTokenizer.from_pretrained(tmp)


#: The noise schedule of SD 1.x and SDXL, shared by their schedulers.
SD_SCHEDULE: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
}


def four_level_vae(
    block_out_channels: tuple[int, int, int, int],
    *,
    layers_per_block: int,
    sample_size: int,
    norm_num_groups: int = 32,
    latent_channels: int = 4,
    **options: Any,
) -> Any:
    """An ``AutoencoderKL`` with SD's four levels (latent factor 8) and four latent channels
    (SD3's sixteen with ``latent_channels=16``).

    ``options`` go to ``AutoencoderKL`` as well (SDXL's ``scaling_factor=0.13025``).
    """
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=block_out_channels,
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=norm_num_groups,
        sample_size=sample_size,
        **options,
    )


def clip_text_config(
    tokenizer: Any,
    hidden: int,
    layers: int,
    *,
    heads: int = 4,
    intermediate: int | None = None,
    vocab_size: int | None = None,
) -> Any:
    """A ``CLIPTextConfig`` of width ``hidden`` for ``tokenizer`` (77 positions, square projection).

    ``intermediate`` defaults to ``2 * hidden``, ``vocab_size`` to the tokenizer's size. The
    projection is square, as OpenCLIP-G's is; diffusers' single-file converter relies on it.
    """
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer) if vocab_size is None else vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden if intermediate is None else intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden,
    )


def sd_pipeline(*, vae: Any, text_encoder: Any, tokenizer: Any, unet: Any, scheduler: Any) -> Any:
    """A ``StableDiffusionPipeline`` of these components, without safety checker."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sdxl_pipeline(
    *,
    vae: Any,
    text_encoder: Any,
    text_encoder_2: Any,
    tokenizer: Any,
    tokenizer_2: Any,
    unet: Any,
    scheduler: Any,
) -> Any:
    """A ``StableDiffusionXLPipeline`` of these components, without watermarker."""
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


@contextmanager
def staged_folder(path: str | os.PathLike[str]) -> Iterator[tuple[Path, Path]]:
    """Yield ``(scratch, staging)`` next to ``path``; on success ``staging`` replaces ``path``.

    ``scratch`` is a temporary folder on the same file system (removed afterwards) and
    ``staging`` a path inside it to write the result to, so ``path`` is never half-written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        staging = Path(tmp) / "model"
        yield Path(tmp), staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)


def copy_tokenizer_files(source: Path, folder: Path) -> None:
    """Put the tokenizer's ``vocab.json``/``merges.txt`` next to what ``save_pretrained`` wrote."""
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(source / name, folder / name)
