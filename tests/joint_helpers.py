"""Tiny MM-DiT transformers and a naive regional joint-attention reference for the DiT tests.

The naive reference is DESIGN.md's definition written the slow way: it projects the joint
sequence as the stock processor does, then, for every query token separately, lists the keys that
token may see (by the rules for image tokens, region text and base text), runs a softmax over
exactly those keys, and blends an image token's two results by its region's base weight.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.embeddings import apply_rotary_emb

import rpg.backbones.tiny.dit as dit
from rpg.attention.joint import JointRegions
from rpg.attention.spec import RegionalLayout, Span
from rpg.layout import grid_cells

TEXT_DIM = 32
POOLED_DIM = 24
FLUX2_TEXT_DIM = 48


def tiny_flux_transformer(seed: int = 0, *, guidance_embeds: bool = False) -> Any:
    torch.manual_seed(seed)
    model = dit.tiny_flux_transformer(
        text_width=TEXT_DIM, pooled_width=POOLED_DIM, guidance_embeds=guidance_embeds
    )
    return model.eval()


def tiny_flux2_transformer(seed: int = 0) -> Any:
    """FLUX.2 [klein]-style: double-stream blocks and fused QKV+MLP single-stream blocks."""
    from rpg.backbones.tiny.flux2 import tiny_flux2_transformer as build

    torch.manual_seed(seed)
    return build(text_width=FLUX2_TEXT_DIM).eval()


def tiny_sd3_transformer(seed: int = 0) -> Any:
    """SD3.5-style: QK norms and one dual-attention block (its ``attn2`` stays stock)."""
    torch.manual_seed(seed)
    return dit.tiny_sd3_transformer(text_width=TEXT_DIM, pooled_width=POOLED_DIM).eval()


# ------------------------------------------------------------------------------ random layouts


@dataclass(frozen=True)
class Case:
    """A random plan geometry with spans: what a backbone would pack."""

    layout: RegionalLayout
    spans: tuple[Span, ...]
    base_span: Span | None
    global_span: Span | None
    text_length: int


def random_case(rng: random.Random, height: int, width: int, *, base: bool) -> Case:
    rows = tuple(
        (rng.uniform(0.5, 2.0), tuple(rng.uniform(0.5, 2.0) for _ in range(rng.randint(1, 3))))
        for _ in range(rng.randint(1, 3))
    )
    n = sum(len(ws) for _, ws in rows)
    start = 0
    base_span = None
    if base:
        base_span = (0, rng.randint(2, 6))
        start = base_span[1]
    spans: list[Span] = []
    for _ in range(n):
        if spans and rng.random() < 0.2:  # repeated prompts share one span
            spans.append(rng.choice(spans))
            continue
        length = rng.randint(1, 5)
        spans.append((start, start + length))
        start += length
    if base and rng.random() < 0.5:
        betas = tuple(round(rng.uniform(0.1, 0.8), 2) for _ in range(n))
    else:
        betas = (round(rng.uniform(0.1, 0.8), 2),) * n if base else (0.0,) * n
    global_span = base_span
    if not base:  # the whole prompt, packed for non-regional calls
        global_span = (start, start + rng.randint(2, 5))
        start = global_span[1]
    layout = RegionalLayout(
        rows=rows, base_weights=betas, height=height, width=width, latent_factor=16
    )
    return Case(layout, tuple(spans), base_span, global_span, start)


def labels(layout: RegionalLayout) -> list[int]:
    """Region number of every patch, row-major (from the project's one cell rule)."""
    h, w = layout.height // 16, layout.width // 16
    out = [-1] * (h * w)
    for r, (y0, y1, x0, x1) in enumerate(grid_cells(layout.rows, h, w)):
        for y in range(y0, y1):
            for x in range(x0, x1):
                out[y * w + x] = r
    assert -1 not in out
    return out


def painters(layout: RegionalLayout) -> list[list[tuple[int, float]]]:
    """Per patch (row-major), every ``(painter, weight)`` with weight > 0: a grid's one region,
    or a canvas's layers and background (numbered last) from the plan's composited weights."""
    if layout.canvas is None:
        return [[(r, 1.0)] for r in labels(layout)]
    h, w = layout.height // layout.latent_factor, layout.width // layout.latent_factor
    weights, background = layout.canvas.layer_weights(h, w)
    stack = [*weights, background]
    return [
        [(r, float(m[y, x])) for r, m in enumerate(stack) if m[y, x] > 0]
        for y in range(h)
        for x in range(w)
    ]


def painter_betas(layout: RegionalLayout) -> tuple[float, ...]:
    """Base weight per painter (a canvas's background: 0)."""
    return (*layout.base_weights, 0.0) if layout.canvas is not None else layout.base_weights


# ------------------------------------------------------------------------------ naive reference


def naive_joint(
    q_t: torch.Tensor,
    k_t: torch.Tensor,
    v_t: torch.Tensor,
    q_i: torch.Tensor,
    k_i: torch.Tensor,
    v_i: torch.Tensor,
    regions: JointRegions,
    *,
    regional: bool,
    negative: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-query loop over the joint sequence of one set of batch rows (``[B, S, H, D]``).

    Every query gets its own explicit key list(s) and blend weight by the rules; queries with
    identical lists are then evaluated together (the same softmax, just batched, so the long
    padded base prompts of real pipelines stay fast).
    """
    n_text, n_img = q_t.shape[1], q_i.shape[1]
    paint = painters(regions.layout)
    # klein inpainting's condition tokens: the grid again after the noisy tokens, each token of
    # a copy painted as its cell is
    copies, rest = divmod(n_img, len(paint))
    assert rest == 0 and copies >= 1, (n_img, len(paint))
    paint = paint * copies
    spans = regions.painter_spans
    betas = painter_betas(regions.layout)
    scope = regions.options.image_attention
    # (is_text, position) -> [(weight, text keys, image keys), ...]
    plan: dict[tuple[bool, int], list[tuple[float, tuple[int, ...], tuple[int, ...]]]] = {}
    every_image = tuple(range(n_img))

    def cell(owners: set[int]) -> tuple[int, ...]:
        return tuple(x for x in every_image if any(r in owners for r, _ in paint[x]))

    if negative:
        s0, s1 = regions.negative_span or (0, n_text)
        for j in range(n_text):
            plan[(True, j)] = [(1.0, tuple(range(s0, s1)), every_image)]
        for p in range(n_img):
            plan[(False, p)] = [(1.0, tuple(range(s0, s1)), every_image)]
    else:
        for p in range(n_img):
            if not regional:
                g0, g1 = regions.global_span or (0, 0)
                plan[(False, p)] = [(1.0, tuple(range(g0, g1)), every_image)]
                continue
            terms = []
            for r, weight in paint[p]:
                images = cell({r}) if scope == "region" else every_image
                s0, s1 = spans[r]
                beta = betas[r]
                terms.append((weight * (1.0 - beta), tuple(range(s0, s1)), images))
                if beta > 0:
                    assert regions.base_span is not None
                    terms.append((weight * beta, tuple(range(*regions.base_span)), images))
            plan[(False, p)] = terms
        wide = {s for s in (regions.base_span, regions.global_span) if s is not None}
        for j in range(n_text):
            span = next((s for s in wide if s[0] <= j < s[1]), None)
            owners = [
                r for r, (s0, s1) in enumerate(spans) if s0 <= j < s1 and (s0, s1) not in wide
            ]
            if span is not None:
                plan[(True, j)] = [(1.0, tuple(range(*span)), every_image)]
            elif owners:
                plan[(True, j)] = [(1.0, tuple(range(*spans[owners[0]])), cell(set(owners)))]
    out_t, out_i = torch.zeros_like(q_t), torch.zeros_like(q_i)
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[tuple[bool, int, float]]] = {}
    for (is_text, pos), terms in plan.items():
        for weight, texts, images in terms:
            groups.setdefault((texts, images), []).append((is_text, pos, weight))
    for (texts, images), members in groups.items():
        k = torch.cat([k_t[:, list(texts)], k_i[:, list(images)]], dim=1)
        v = torch.cat([v_t[:, list(texts)], v_i[:, list(images)]], dim=1)
        q = torch.stack([(q_t if t else q_i)[:, pos] for t, pos, _ in members], dim=1)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
        result = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(dim=-1), v)
        for m, (is_text, pos, weight) in enumerate(members):
            target = out_t if is_text else out_i
            target[:, pos] += weight * result[:, m]
    return out_t, out_i


class NaiveJointProcessor:
    """Test-only processor: stock projections, then :func:`naive_joint` per batch half."""

    def __init__(self, regions: JointRegions, *, flux: bool, regional_block: bool = True):
        self.regions = regions
        self.flux = flux
        self.regional_block = regional_block

    def _split(self, tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        state = self.regions.state
        regional = self.regional_block and self.regions.step_is_regional()
        if state.rows == "negative":
            return naive_joint(*tensors, self.regions, regional=regional, negative=True)
        if state.rows == "positive":
            return naive_joint(*tensors, self.regions, regional=regional, negative=False)
        half = tensors[0].shape[0] // 2
        neg = naive_joint(
            *(x[:half] for x in tensors), self.regions, regional=regional, negative=True
        )
        pos = naive_joint(
            *(x[half:] for x in tensors), self.regions, regional=regional, negative=False
        )
        return torch.cat([neg[0], pos[0]]), torch.cat([neg[1], pos[1]])

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None, *args, **kwargs):  # fmt: skip
        heads = attn.heads

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.view(x.shape[0], x.shape[1], heads, -1)

        def norm(module: Any, x: torch.Tensor) -> torch.Tensor:
            return x if module is None else module(x)

        q = norm(attn.norm_q, split(attn.to_q(hidden_states)))
        k = norm(attn.norm_k, split(attn.to_k(hidden_states)))
        v = split(attn.to_v(hidden_states))
        if encoder_hidden_states is None:  # FLUX single-stream: the input is [text | image]
            n_text = self.regions.text_length
            assert n_text is not None
            if image_rotary_emb is not None:
                q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
                k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
            parts = (q[:, :n_text], k[:, :n_text], v[:, :n_text], q[:, n_text:], k[:, n_text:],
                     v[:, n_text:])  # fmt: skip
            out_t, out_i = self._split(parts)
            return torch.cat([out_t, out_i], dim=1).flatten(2, 3)
        eq = norm(attn.norm_added_q, split(attn.add_q_proj(encoder_hidden_states)))
        ek = norm(attn.norm_added_k, split(attn.add_k_proj(encoder_hidden_states)))
        ev = split(attn.add_v_proj(encoder_hidden_states))
        if self.flux and image_rotary_emb is not None:
            n_text = eq.shape[1]
            jq = apply_rotary_emb(torch.cat([eq, q], 1), image_rotary_emb, sequence_dim=1)
            jk = apply_rotary_emb(torch.cat([ek, k], 1), image_rotary_emb, sequence_dim=1)
            eq, q, ek, k = jq[:, :n_text], jq[:, n_text:], jk[:, :n_text], jk[:, n_text:]
        out_t, out_i = self._split((eq, ek, ev, q, k, v))
        out_i = attn.to_out[1](attn.to_out[0](out_i.flatten(2, 3)))
        out_t = out_t.flatten(2, 3)
        if self.flux or not attn.context_pre_only:
            out_t = attn.to_add_out(out_t)
        return out_i, out_t


class NaiveFlux2SingleProcessor(NaiveJointProcessor):
    """Test-only processor for FLUX.2's single-stream (parallel) blocks: the stock fused
    QKV + MLP projection, :func:`naive_joint` for the attention, the stock fused output layer."""

    def __init__(self, regions: JointRegions, *, regional_block: bool = True):
        super().__init__(regions, flux=True, regional_block=regional_block)

    def __call__(self, attn, hidden_states, attention_mask=None, image_rotary_emb=None,
                 *args, **kwargs):  # fmt: skip
        projected = attn.to_qkv_mlp_proj(hidden_states)
        inner = attn.inner_dim
        q, k, v = (projected[..., i * inner : (i + 1) * inner] for i in range(3))
        mlp = projected[..., 3 * inner :]
        heads = attn.heads
        q = attn.norm_q(q.view(q.shape[0], q.shape[1], heads, -1))
        k = attn.norm_k(k.view(k.shape[0], k.shape[1], heads, -1))
        v = v.view(v.shape[0], v.shape[1], heads, -1)
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        n_text = self.regions.text_length
        assert n_text is not None
        parts = (q[:, :n_text], k[:, :n_text], v[:, :n_text], q[:, n_text:], k[:, n_text:],
                 v[:, n_text:])  # fmt: skip
        out_t, out_i = self._split(parts)
        out = torch.cat([out_t, out_i], dim=1).flatten(2, 3)
        half = mlp.shape[-1] // 2
        gated = torch.nn.functional.silu(mlp[..., :half]) * mlp[..., half:]
        return attn.to_out(torch.cat([out, gated], dim=-1))


def naive_flux2_processors(model: Any, regions: JointRegions, every: int = 1) -> dict[str, Any]:
    """The naive reference for every joint layer of a FLUX.2 ``model`` (others unchanged)."""
    from rpg.attention.joint import joint_attention_names

    names = joint_attention_names(model)
    modules = dict(model.named_modules())
    out = dict(model.attn_processors)
    for i, key in enumerate(names):
        regional = i % every == 0
        if hasattr(modules[key.removesuffix(".processor")], "to_qkv_mlp_proj"):
            out[key] = NaiveFlux2SingleProcessor(regions, regional_block=regional)
        else:
            out[key] = NaiveJointProcessor(regions, flux=True, regional_block=regional)
    return out


def run_naive(
    model: Any, regions: JointRegions, flux: bool, inputs: dict[str, Any]
) -> torch.Tensor:
    """``model``'s output with :class:`NaiveJointProcessor` on every joint-attention layer."""
    from rpg.attention.joint import joint_attention_names

    previous = dict(model.attn_processors)
    names = set(joint_attention_names(model))
    naive = {
        k: NaiveJointProcessor(regions, flux=flux) if k in names else v for k, v in previous.items()
    }
    model.set_attn_processor(naive)
    try:
        with torch.no_grad():
            out: torch.Tensor = model(**inputs).sample
    finally:
        model.set_attn_processor(previous)
    return out


def run_regional(
    model: Any, regions: JointRegions, inputs: dict[str, Any], **kw: Any
) -> torch.Tensor:
    """``model``'s output with rpg's regional joint attention installed."""
    from rpg.attention.joint import regional_joint

    with regional_joint(model, regions, **kw), torch.no_grad():
        out: torch.Tensor = model(**inputs).sample
    return out
