"""Texts → packed embeddings and spans: the token arithmetic every backbone shares.

A prompt longer than the text encoder's window is cut into windows (:func:`token_windows`);
the texts of a plan are encoded once each and packed along the token axis with their spans
(:func:`pack_segments`); the two halves of a CFG batch are padded to one length
(:func:`pad_tokens`). Spans are computed here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from rpg.attention.spec import Span
from rpg.errors import ConfigurationError

__all__ = ["pack_segments", "pad_tokens", "token_windows"]


def token_windows(tokenizer: Any, text: str) -> list[list[int]]:
    """Token ids of ``text`` as full-length windows ``[BOS, ≤75 tokens, EOS, pad...]``.

    CLIP text encoders see at most ``model_max_length`` (77) positions, so a long prompt is cut
    into consecutive chunks of 75 content tokens, each wrapped in BOS/EOS and padded like the
    stock pipeline pads, and encoded as its own window: nothing is truncated. An empty text is
    one window, exactly what the stock pipeline encodes for ``""``. For a prompt of at most 75
    tokens the ids equal ``tokenizer(text, padding="max_length", truncation=True)``.
    """
    max_length = int(tokenizer.model_max_length)
    if max_length < 3 or max_length > 100_000:
        raise ConfigurationError(f"tokenizer has no usable model_max_length ({max_length})")
    # Long prompts are intended here; mark transformers' once-only "sequence too long" warning
    # as already shown, since it would claim the windows cause indexing errors.
    shown = getattr(tokenizer, "deprecation_warnings", None)
    if isinstance(shown, dict):
        shown["sequence-length-is-longer-than-the-specified-maximum"] = True
    content = list(tokenizer(text, add_special_tokens=False).input_ids)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    size = max_length - 2
    chunks = [content[i : i + size] for i in range(0, len(content), size)] or [[]]
    return [[bos, *chunk, eos] + [pad] * (size - len(chunk)) for chunk in chunks]


def pack_segments(
    texts: Sequence[str], encode: Callable[[list[str]], list[torch.Tensor]]
) -> tuple[torch.Tensor, list[Span]]:
    """Encode ``texts`` and pack them along the token axis; return the tensor and their spans.

    Each distinct text is encoded once (``encode`` returns one ``[1, T_i, D]`` tensor per text)
    and repeated texts share one span — a span is only an index range, so two regions may read
    the same tokens. This is the single place where spans are computed from encodings.
    """
    unique = list(dict.fromkeys(texts))
    tensors = encode(unique)
    if len(tensors) != len(unique):
        raise RuntimeError(f"encoder returned {len(tensors)} tensors for {len(unique)} texts")
    spans: dict[str, Span] = {}
    start = 0
    for text, tensor in zip(unique, tensors, strict=True):
        spans[text] = (start, start + int(tensor.shape[1]))
        start += int(tensor.shape[1])
    return torch.cat(tensors, dim=1), [spans[t] for t in texts]


def pad_tokens(embeds: torch.Tensor, length: int) -> torch.Tensor:
    """Lengthen ``embeds`` ``[B, T, D]`` to ``length`` tokens by repeating its own tokens.

    The padding is never read by the regional processor (it lies outside every span); it exists
    because diffusers concatenates positive and negative embeddings into one batch, which needs
    one token length. Copies rather than zeros keep the tensor a plausible CLIP sequence for any
    code that does look at it.
    """
    current = embeds.shape[1]
    if current >= length:
        return embeds
    repeats = -(-length // current)
    return embeds.repeat(1, repeats, 1)[:, :length]
