"""Tiny MM-DiT models (``tiny-flux``, ``tiny-sd3``) with random weights, written offline.

The same architectures as FLUX.1 and SD3.5 at toy size: a ``FluxTransformer2DModel`` with
double- and single-stream blocks, guidance embedding and RoPE over text and image ids; an
``SD3Transformer2DModel`` with QK norms, one SD3.5 dual-attention block and the
``context_pre_only`` last block; four-level VAEs with FLUX's/SD3's shift and scaling factors; CLIP
and T5 text encoders; and tokenizers built without the hub — the byte-level CLIP tokenizer of
:mod:`~rpg.backbones.tiny.components` and a character-level Unigram T5 tokenizer made with the
``tokenizers`` library and saved as a ``T5TokenizerFast``. Both render 64×64 in about a second on
two CPU cores; the images are noise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rpg.backbones.tiny.components import (
    clip_text_config,
    copy_tokenizer_files,
    four_level_vae,
    staged_folder,
    write_tokenizer,
)

__all__ = [
    "T5_MAX_LENGTH",
    "t5_tokenizer",
    "tiny_flux_transformer",
    "tiny_sd3_transformer",
    "write_tiny_flux",
    "write_tiny_sd3",
]

#: ``model_max_length`` of the tiny T5 tokenizer (FLUX pads to 512, SD3 to 256 by default).
T5_MAX_LENGTH = 512
_T5_WIDTH = 32
_CLIP_WIDTH = 32


def t5_tokenizer() -> Any:
    """A character-level T5 tokenizer (Unigram model, ``</s>`` appended, ``<pad>`` id 0).

    Every printable ASCII character is a piece, with and without the word-start marker ``▁``,
    so any prompt tokenizes; other characters become ``<unk>``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast  # type: ignore[attr-defined]

    chars = [chr(c) for c in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [(c, -2.0) for c in chars] + [("▁" + c, -1.5) for c in chars]
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_ids=0,
        model_max_length=T5_MAX_LENGTH,
    )


def tiny_flux_transformer(*, text_width: int, pooled_width: int, guidance_embeds: bool) -> Any:
    """FLUX's transformer at toy size: two double- and two single-stream blocks of width 16."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=text_width,
        pooled_projection_dim=pooled_width,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(2, 2, 4),
    )


def tiny_sd3_transformer(*, text_width: int, pooled_width: int) -> Any:
    """SD3.5's transformer at toy size: three joint blocks of width 16, QK norms, block 0 with
    the image-only ``attn2``, the last ``context_pre_only``; native 64×64; SD3's 16 latent
    channels (its inpainting pipeline takes no other width)."""
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        num_layers=3,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=text_width,
        caption_projection_dim=16,
        pooled_projection_dim=pooled_width,
        out_channels=16,
        pos_embed_max_size=32,
        dual_attention_layers=(0,),
        qk_norm="rms_norm",
    )


def _t5_encoder(vocab_size: int, width: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=vocab_size,
            d_model=width,
            d_kv=8,
            d_ff=2 * width,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
            is_encoder_decoder=False,
            use_cache=False,
        )
    )


def _clip_tokenizer(folder: Path) -> Any:
    from transformers import CLIPTokenizer

    write_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder)


def write_tiny_flux(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a tiny FLUX.1-dev-architecture ``FluxPipeline`` folder to ``path`` and return it.

    Two double- and two single-stream blocks of width 16 (two heads of 8, RoPE axes 2/2/4),
    guidance-distilled (``guidance_embeds=True``, like FLUX.1-dev); a CLIP text encoder for the
    pooled embedding and a T5 encoder of width 32 for the tokens; a four-level VAE with FLUX's
    scaling/shift factors and no quant convs; the flow-matching Euler scheduler with dynamic
    shifting, as FLUX ships it.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextModel

    with staged_folder(path) as (tmp, staging):
        tokenizer = _clip_tokenizer(tmp / "tokenizer")
        tokenizer_2 = t5_tokenizer()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformer = tiny_flux_transformer(
                text_width=_T5_WIDTH, pooled_width=_CLIP_WIDTH, guidance_embeds=True
            )
            vae = four_level_vae(
                (16, 16, 32, 32),
                layers_per_block=1,
                sample_size=64,
                norm_num_groups=16,
                scaling_factor=0.3611,
                shift_factor=0.1159,
                use_quant_conv=False,
                use_post_quant_conv=False,
            )
            text_encoder = CLIPTextModel(clip_text_config(tokenizer, _CLIP_WIDTH, 2))
            text_encoder_2 = _t5_encoder(len(tokenizer_2), _T5_WIDTH)
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
        pipe: Any = FluxPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
            transformer=transformer,
        )
        pipe.save_pretrained(staging)
        copy_tokenizer_files(tmp / "tokenizer", staging / "tokenizer")
    return Path(path)


def write_tiny_sd3(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a tiny SD3.5-architecture ``StableDiffusion3Pipeline`` folder and return it.

    Three joint blocks of width 16 (QK RMS norms, block 0 with SD3.5's extra image-only
    ``attn2``, the last ``context_pre_only``), native 64×64; two CLIP encoders with projection
    (CLIP-L and CLIP-G roles) and a T5 encoder of width 64; a four-level VAE with SD3's 16
    latent channels and scaling/shift factors; SD3's flow-matching Euler scheduler (shift 3).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    with staged_folder(path) as (tmp, staging):
        tokenizer = _clip_tokenizer(tmp / "tokenizer")
        tokenizer_3 = t5_tokenizer()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformer = tiny_sd3_transformer(
                text_width=2 * _CLIP_WIDTH, pooled_width=2 * _CLIP_WIDTH
            )
            vae = four_level_vae(
                (16, 16, 32, 32),
                layers_per_block=1,
                sample_size=64,
                norm_num_groups=16,
                latent_channels=16,
                scaling_factor=1.5305,
                shift_factor=0.0609,
                use_quant_conv=False,
                use_post_quant_conv=False,
            )
            config = clip_text_config(tokenizer, _CLIP_WIDTH, 2)
            text_encoder = CLIPTextModelWithProjection(config)
            text_encoder_2 = CLIPTextModelWithProjection(config)
            text_encoder_3 = _t5_encoder(len(tokenizer_3), 2 * _CLIP_WIDTH)
        pipe: Any = StableDiffusion3Pipeline(
            transformer=transformer,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer,
            text_encoder_3=text_encoder_3,
            tokenizer_3=tokenizer_3,
        )
        pipe.save_pretrained(staging)
        for sub in ("tokenizer", "tokenizer_2"):
            copy_tokenizer_files(tmp / "tokenizer", staging / sub)
    return Path(path)
