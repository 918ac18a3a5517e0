"""Tiny FLUX.2 [klein] (``tiny-flux2-klein``) with random weights, written offline.

The same architecture as FLUX.2 [klein] at toy size: a ``Flux2TransformerModel`` with double-
and single-stream blocks (the single-stream ones fuse the QKV projection with the MLP input) and
4-axis RoPE over text and image ids; an ``AutoencoderKLFlux2`` (2×2 patchified latents,
batch-norm statistics); a ``Qwen3ForCausalLM`` text encoder deep enough for the three hidden
layers the pipeline reads (9, 18, 27); and a byte-level BPE ``Qwen2Tokenizer`` with a chat
template of Qwen3's format, built with the ``tokenizers`` library instead of fetched. Renders
64×64 in about a second on two CPU cores; the images are noise.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rpg.backbones.tiny.components import staged_folder

__all__ = [
    "QWEN_CHAT_TEMPLATE",
    "qwen_tokenizer",
    "tiny_flux2_transformer",
    "write_tiny_flux2_klein",
]

#: Qwen3's prompt format as the klein pipeline asks for it (one user turn, generation prompt,
#: thinking disabled).
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)
_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
#: Width of the tiny Qwen3; the transformer reads three of its layers side by side.
_QWEN_WIDTH = 16
#: Qwen3-4B has 36 layers; the pipeline reads layers 9, 18 and 27, so 28 keep all three inside.
_QWEN_LAYERS = 28


def qwen_tokenizer() -> Any:
    """A byte-level BPE ``Qwen2Tokenizer``: one token per byte, Qwen's special tokens, right
    padding with ``<|endoftext|>``, and :data:`QWEN_CHAT_TEMPLATE`."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2TokenizerFast  # type: ignore[attr-defined]

    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    for token in _SPECIALS:
        vocab[token] = len(vocab)
    return Qwen2TokenizerFast(
        vocab=vocab,
        merges=[],
        chat_template=QWEN_CHAT_TEMPLATE,
        model_max_length=512,
        additional_special_tokens=list(_SPECIALS[1:]),
    )


def _qwen3_encoder(tokenizer: Any) -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=_QWEN_WIDTH,
        intermediate_size=2 * _QWEN_WIDTH,
        num_hidden_layers=_QWEN_LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    return Qwen3ForCausalLM(config)


def tiny_flux2_transformer(*, text_width: int = 3 * _QWEN_WIDTH) -> Any:
    """FLUX.2's transformer at toy size: two double- and two single-stream blocks of width 16,
    RoPE axes 2/2/2/2 over (time, height, width, text position), no guidance embedding (klein)."""
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=text_width,
        timestep_guidance_channels=32,
        axes_dims_rope=(2, 2, 2, 2),
        guidance_embeds=False,
    )


def _vae() -> Any:
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def write_tiny_flux2_klein(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a tiny FLUX.2 [klein]-architecture ``Flux2KleinPipeline`` folder and return it.

    Not step-distilled (``is_distilled=False``, like klein *base*), so ``guidance_scale > 1``
    runs classifier-free guidance; the flow-matching Euler scheduler with dynamic shifting, as
    klein ships it (the pipeline computes the shift from the image size and step count).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline

    with staged_folder(path) as (_tmp, staging):
        tokenizer = qwen_tokenizer()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            transformer = tiny_flux2_transformer()
            vae = _vae()
            text_encoder = _qwen3_encoder(tokenizer)
        scheduler = FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        )
        pipe: Any = Flux2KleinPipeline(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
            is_distilled=False,
        )
        pipe.save_pretrained(staging)
    return Path(path)
