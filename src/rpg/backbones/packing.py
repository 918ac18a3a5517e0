"""Texts → packed embeddings and spans: the token arithmetic every backbone shares.

A prompt longer than the text encoder's window is cut into windows (:func:`token_windows`);
the texts of a plan are encoded once each and packed along the token axis with their spans
(:func:`pack_segments`); the two halves of a CFG batch are padded to one length
(:func:`pad_tokens`). Spans are computed here and nowhere else, and so is the plan logic on top
of them (:func:`pack_plan`: which texts, shared or per-region negatives, de-duplication, the
canvas background's text, padding the two halves to one length).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from rpg.attention.spec import RegionalConditioning, Span
from rpg.errors import ConfigurationError

if TYPE_CHECKING:
    from rpg.models import RegionPlan

__all__ = ["PackedPlan", "pack_plan", "pack_segments", "pad_tokens", "token_windows"]

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class PackedPlan:
    """A plan's texts encoded and packed: everything of a
    :class:`~rpg.attention.spec.RegionalConditioning` but the pooled embeddings."""

    prompt_embeds: torch.Tensor
    region_spans: tuple[Span, ...]
    base_span: Span | None
    negative_prompt_embeds: torch.Tensor | None
    negative_span: Span | None
    negative_region_spans: tuple[Span, ...] | None
    negative_base_span: Span | None
    global_span: Span | None

    def conditioning(
        self, pooled: torch.Tensor | None, negative_pooled: torch.Tensor | None
    ) -> RegionalConditioning:
        """The conditioning, with the pooled embeddings of models that take them (SDXL)."""
        return RegionalConditioning(
            prompt_embeds=self.prompt_embeds,
            region_spans=self.region_spans,
            base_span=self.base_span,
            negative_prompt_embeds=self.negative_prompt_embeds,
            negative_span=self.negative_span,
            negative_region_spans=self.negative_region_spans,
            negative_base_span=self.negative_base_span,
            pooled_prompt_embeds=pooled,
            negative_pooled_prompt_embeds=negative_pooled,
            global_span=self.global_span,
        )


def pack_plan(
    plan: RegionPlan,
    negative_prompt: str,
    encode: Callable[[list[str]], list[torch.Tensor]],
    *,
    guidance: bool,
    prompt: str | None,
    tokenizer: Any,
    noted: set[str],
    whole_prompt: bool = False,
) -> PackedPlan:
    """Encode ``plan``'s texts with ``encode`` and pack them (see
    :meth:`rpg.backbones.base.Backbone.encode` for the layout of both halves).

    ``whole_prompt``: some calls are not regional (``regional_steps < 1``), so without a base
    prompt the whole prompt is packed last (``global_span``) for them to read, as a canvas's
    background is.

    ``tokenizer`` (the pipeline's, or ``None``) tells how long the encoder's window is; a prompt
    longer than it is noted once (``noted`` holds the prompts already noted).
    """
    has_base = plan.base_prompt is not None
    texts = ([plan.base_prompt] if plan.base_prompt is not None else []) + plan.prompts
    # A canvas's background paints with the base prompt, else with the whole prompt,
    # packed last for it.
    background = plan.has_background and not has_base
    whole = []
    if background or (whole_prompt and not has_base):
        from rpg.models import whole_image_text

        whole = [whole_image_text(plan, prompt)]
    embeds, spans = pack_segments(texts + whole, encode)
    global_span = spans.pop() if whole else None
    note_long_prompts(tokenizer, noted, texts, spans, has_base)
    base_span = spans[0] if has_base else None
    region_spans = tuple(spans[1:] if has_base else spans)

    negative = None
    negative_span: Span | None = None
    negative_region_spans: tuple[Span, ...] | None = None
    negative_base_span: Span | None = None
    if guidance:
        regions = plan.regions
        if all(r.negative_prompt is None for r in regions):
            negative, (negative_span,) = pack_segments([negative_prompt], encode)
        else:
            own = [
                negative_prompt if r.negative_prompt is None else r.negative_prompt for r in regions
            ]
            lead = has_base or background  # the background's negative half reads it too
            negative, neg_spans = pack_segments([negative_prompt, *own] if lead else own, encode)
            negative_base_span = neg_spans[0] if lead else None
            negative_region_spans = tuple(neg_spans[1:] if lead else neg_spans)
        length = max(embeds.shape[1], negative.shape[1])
        embeds, negative = pad_tokens(embeds, length), pad_tokens(negative, length)
    return PackedPlan(
        prompt_embeds=embeds,
        region_spans=region_spans,
        base_span=base_span,
        negative_prompt_embeds=negative,
        negative_span=negative_span,
        negative_region_spans=negative_region_spans,
        negative_base_span=negative_base_span,
        global_span=global_span,
    )


def note_long_prompts(
    tokenizer: Any, noted: set[str], texts: list[str], spans: list[Span], has_base: bool
) -> None:
    """Say once per prompt (and loaded model) that it is encoded as several windows.

    Nothing is truncated (see :func:`token_windows`), but the windows are encoded apart, so
    words in different windows do not see each other: worth one line, not silence.
    """
    window = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if not 2 < window < 100_000:
        return
    for i, (text, (start, end)) in enumerate(zip(texts, spans, strict=True)):
        windows = (end - start) // window
        if windows < 2 or text in noted:
            continue
        noted.add(text)
        what = "the base prompt" if has_base and i == 0 else f"region {i + (not has_base)}"
        shown = text if len(text) <= 40 else text[:37] + "..."
        log.warning(
            "%s (%r) is longer than the text encoder's %d-token window; it is encoded as %d "
            "windows of up to %d tokens, and words in different windows do not see each "
            "other (shorten it to keep it in one)",
            what,
            shown,
            window,
            windows,
            window - 2,
        )
