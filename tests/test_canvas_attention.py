"""Canvas plans in the regional attention: the UNet processor and the joint (MM-DiT) processors
against naive references of DESIGN.md's compositing formula, and grids equal to their canvases.

The naive UNet reference runs the stock attention over the whole canvas once per layer (and
once for the background) with only that layer's tokens, blends in the base prompt by the layer's
base weight, and sums the results weighted by what each layer paints (``w_r(p)``, ``w_bg(p)``).
The joint reference is ``joint_helpers.naive_joint``: a per-query list of weighted key sets.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from canvas_helpers import random_canvas
from joint_helpers import (
    FLUX2_TEXT_DIM,
    POOLED_DIM,
    TEXT_DIM,
    naive_flux2_processors,
    run_naive,
    run_regional,
    tiny_flux2_transformer,
    tiny_flux_transformer,
    tiny_sd3_transformer,
)
from rpg.attention import RegionalAttnProcessor, RegionalConditioning, RegionalLayout, Span
from rpg.attention.joint import (
    JointAttentionOptions,
    JointRegions,
)
from rpg.attention.joint_flux2 import packed_text_ids, regional_flux2
from rpg.attention.regions import region_index
from rpg.models import RegionPlan

STOCK = AttnProcessor2_0()


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """The naive references run many tiny ops; thread hand-offs would dominate them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------ packing
def _spans(
    rng: random.Random, plan: RegionPlan
) -> tuple[tuple[Span, ...], Span | None, Span | None, int]:
    """Region spans (repeats share one), base span, whole-prompt span, total tokens."""
    start = 0
    base_span = None
    if plan.base_prompt is not None:
        base_span = (0, rng.randint(2, 5))
        start = base_span[1]
    spans: list[Span] = []
    for _ in plan.layers:
        if spans and rng.random() < 0.2:
            spans.append(rng.choice(spans))
            continue
        length = rng.randint(1, 5)
        spans.append((start, start + length))
        start += length
    global_span = None
    if base_span is None and plan.has_background:
        global_span = (start, start + rng.randint(2, 5))
        start = global_span[1]
    return tuple(spans), base_span, global_span, start


# ------------------------------------------------------------------------------- UNet (cross)
def _naive_unet(attn, x, ctx, plan: RegionPlan, grid, spans, base_span, background_span, mask):
    h, w = grid
    weights, background = plan.layer_weights(h, w)
    betas = plan.base_weights()

    def stock(span: Span) -> torch.Tensor:
        m = None if mask is None else mask[..., span[0] : span[1]]
        return STOCK(attn, x, ctx[:, span[0] : span[1]], attention_mask=m)

    base = None if base_span is None else stock(base_span)
    out = torch.zeros_like(x)
    for r, span in enumerate(spans):
        term = stock(span)
        if betas[r] > 0:
            assert base is not None
            term = (1 - betas[r]) * term + betas[r] * base
        out += torch.from_numpy(weights[r]).float().reshape(1, h * w, 1) * term
    if background.any():
        bg = torch.from_numpy(background).float().reshape(1, h * w, 1)
        out += bg * stock(background_span)
    return out


@pytest.mark.parametrize("seed", range(30))
def test_unet_processor_matches_naive_canvas_reference(seed: int) -> None:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    base = seed % 2 == 0
    plan = random_canvas(rng, base=base, soft=None if seed % 3 else bool(seed % 2))
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval()
    spans, base_span, global_span, total = _spans(rng, plan)
    height, width = 8 * rng.randint(2, 12), 8 * rng.randint(2, 12)
    layout = RegionalLayout(
        rows=(), base_weights=tuple(plan.base_weights()), height=height, width=width, canvas=plan
    )
    guidance = rng.random() < 0.5
    batch = 2 if guidance else 1
    embeds = torch.randn(batch, total, 12)
    cond = RegionalConditioning(
        prompt_embeds=embeds[:1],
        region_spans=spans,
        base_span=base_span,
        negative_span=(0, 1) if guidance else None,
        global_span=global_span,
    )
    h, w = height // 8, width // 8
    x = torch.randn(batch, h * w, 16)
    mask = None
    if seed % 4 == 1:  # an additive key mask as UNets pass encoder_attention_mask
        mask = torch.where(torch.rand(batch, 1, total) < 0.7, 0.0, -10000.0)
    proc = RegionalAttnProcessor(cond, layout, guidance=guidance)
    bg = base_span or global_span or (0, 0)
    with torch.no_grad():
        got = proc(attn, x, embeds, attention_mask=mask)
        if guidance:
            neg = STOCK(
                attn,
                x[:1],
                embeds[:1, 0:1],
                attention_mask=mask[:1, :, 0:1] if mask is not None else None,
            )
            pos_mask = None if mask is None else mask[1:]
            pos = _naive_unet(attn, x[1:], embeds[1:], plan, (h, w), spans, base_span, bg, pos_mask)
            want = torch.cat([neg, pos])
        else:
            want = _naive_unet(attn, x, embeds, plan, (h, w), spans, base_span, bg, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ MM-DiT (joint)
HEIGHT, WIDTH = 80, 144  # 5 × 9 patches of 16 pixels


@pytest.fixture(scope="module")
def flux() -> Any:
    return tiny_flux_transformer()


@pytest.fixture(scope="module")
def sd3() -> Any:
    return tiny_sd3_transformer()


def _joint_regions(seed: int, scope: str, base: bool, **kwargs: Any) -> JointRegions:
    rng = random.Random(1000 + seed)
    plan = random_canvas(rng, base=base, soft=None if seed % 3 else bool(seed % 2))
    spans, base_span, global_span, total = _spans(rng, plan)
    layout = RegionalLayout(
        rows=(),
        base_weights=tuple(plan.base_weights()),
        height=HEIGHT,
        width=WIDTH,
        latent_factor=16,
        canvas=plan,
    )
    return JointRegions(
        region_spans=spans,
        layout=layout,
        base_span=base_span,
        global_span=global_span,
        text_length=total,
        options=JointAttentionOptions(image_attention=scope),  # type: ignore[arg-type]
        **kwargs,
    )


def _flux_inputs(n_text: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    h, w = HEIGHT // 16, WIDTH // 16
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None]
    return {
        "hidden_states": torch.randn(1, h * w, 16, generator=g),
        "encoder_hidden_states": torch.randn(1, n_text, TEXT_DIM, generator=g),
        "pooled_projections": torch.randn(1, POOLED_DIM, generator=g),
        "timestep": torch.full((1,), 0.7),
        "img_ids": ids.reshape(-1, 3),
        "txt_ids": torch.zeros(n_text, 3),
    }


def _sd3_inputs(n_text: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(2, 16, HEIGHT // 8, WIDTH // 8, generator=g),
        "encoder_hidden_states": torch.randn(2, n_text, TEXT_DIM, generator=g),
        "pooled_projections": torch.randn(2, POOLED_DIM, generator=g),
        "timestep": torch.full((2,), 700.0),
    }


#: 24 random canvases per family (FLUX.1, SD3, klein): 6 seeds × both image-attention scopes ×
#: with and without base.
JOINT_CASES = [(seed, scope, base) for seed in range(6) for scope in ("global", "region")
               for base in (True, False)]  # fmt: skip


@pytest.mark.parametrize(("seed", "scope", "base"), JOINT_CASES)
def test_flux_canvas_matches_naive_reference(flux: Any, seed: int, scope: str, base: bool) -> None:
    regions = _joint_regions(seed, scope, base)
    inputs = _flux_inputs(regions.text_length or 0, seed)
    naive = run_naive(flux, _joint_regions(seed, scope, base), True, inputs)
    ours = run_regional(flux, regions, inputs)
    assert (ours - naive).abs().max().item() < 1e-5


@pytest.mark.parametrize(("seed", "scope", "base"), JOINT_CASES)
def test_sd3_canvas_matches_naive_reference_with_guidance(
    sd3: Any, seed: int, scope: str, base: bool
) -> None:
    regions = _joint_regions(50 + seed, scope, base, negative_span=(0, 1))
    inputs = _sd3_inputs(regions.text_length or 0, seed)
    naive_regions = _joint_regions(50 + seed, scope, base, negative_span=(0, 1))
    naive_regions.state.rows = "negative+positive"
    naive = run_naive(sd3, naive_regions, False, inputs)
    ours = run_regional(sd3, regions, inputs, guidance_batch=1)
    assert (ours - naive).abs().max().item() < 1e-5


@pytest.fixture(scope="module")
def klein() -> Any:
    return tiny_flux2_transformer()


def _klein_inputs(n_text: int, seed: int, *, copies: int = 1) -> dict[str, Any]:
    """``copies=2``: klein inpainting's condition tokens (the grid again, time id 10) follow."""
    g = torch.Generator().manual_seed(seed)
    h, w = HEIGHT // 16, WIDTH // 16
    img_ids = torch.zeros(copies, h, w, 4)
    img_ids[..., 0] = 10 * torch.arange(copies)[:, None, None]
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None]
    return {
        "hidden_states": torch.randn(1, copies * h * w, 16, generator=g),
        "encoder_hidden_states": torch.randn(1, n_text, FLUX2_TEXT_DIM, generator=g),
        "timestep": torch.full((1,), 0.7),
        "img_ids": img_ids.reshape(-1, 4),
        "txt_ids": torch.zeros(n_text, 4),
    }


@pytest.mark.parametrize("copies", [1, 2])
@pytest.mark.parametrize(("seed", "scope", "base"), JOINT_CASES)
def test_klein_canvas_matches_naive_reference(
    klein: Any, seed: int, scope: str, base: bool, copies: int
) -> None:
    """FLUX.2 [klein]'s own processors (fused single-stream blocks) on the same canvases;
    ``copies=2``: with inpainting's condition tokens, a second copy of the canvas."""
    regions = _joint_regions(100 + seed, scope, base, grid_copies=copies)
    inputs = _klein_inputs(regions.text_length or 0, seed, copies=copies)
    naive_regions = _joint_regions(100 + seed, scope, base)
    spans = [s for s in (naive_regions.base_span, naive_regions.global_span) if s is not None]
    ids = packed_text_ids(inputs["txt_ids"].shape[0], [*spans, *naive_regions.region_spans])
    previous = dict(klein.attn_processors)
    klein.set_attn_processor(naive_flux2_processors(klein, naive_regions))
    try:
        with torch.no_grad():
            naive = klein(**{**inputs, "txt_ids": ids.float()}).sample
    finally:
        klein.set_attn_processor(previous)
    other = torch.randn(1, regions.text_length or 0, FLUX2_TEXT_DIM)  # a negative, not this call
    with regional_flux2(klein, regions, negative_prompt_embeds=other), torch.no_grad():
        ours = klein(**inputs).sample
    assert (ours - naive).abs().max().item() < 1e-5


def test_random_canvases_cover_soft_hard_background_and_covered_layers() -> None:
    """The seeds above reach both index kinds, background, base weights and unpainted layers."""
    kinds = set()
    for seed in [*range(30), *(1000 + s for s in range(6)), *(1050 + s for s in range(6))]:
        for base in (True, False):
            regions = _joint_regions(seed - 1000, "global", base) if seed >= 1000 else None
            if regions is None:
                rng = random.Random(seed)
                plan = random_canvas(rng, base=base, soft=None if seed % 3 else bool(seed % 2))
                layout = RegionalLayout(
                    rows=(), base_weights=tuple(plan.base_weights()), height=64, width=64,
                    canvas=plan,
                )  # fmt: skip
            else:
                layout = regions.layout
            assert layout.canvas is not None
            h, w = layout.height // layout.latent_factor, layout.width // layout.latent_factor
            index = region_index(layout, h, w)
            _, background = layout.canvas.layer_weights(h, w)
            kinds.add("soft" if index.soft else "hard")
            kinds.add("background" if background.any() else "covered canvas")
            if layout.canvas.unpainted_layers(h, w):
                kinds.add("unpainted layer")
            if any(0 < b < 1 for b in layout.base_weights):
                kinds.add("base weights")
    assert kinds == {
        "soft", "hard", "background", "covered canvas", "unpainted layer", "base weights"
    }  # fmt: skip


@pytest.mark.parametrize("base", [True, False])
def test_flux_soft_canvas_attends_the_image_once_and_matches_the_per_painter_path(
    flux: Any, base: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Soft grids with global image attention merge every painter's text with one image pass
    (``joint_soft``); the per-painter path (each painter re-attending the whole image) is what
    runs without log-sum-exps, and both give the same outputs."""
    from rpg.attention import joint_core, joint_soft

    calls: list[int] = []
    merged = joint_soft.painted_image_merged

    def spy(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(len(args[5].painters))
        return merged(*args, **kwargs)

    monkeypatch.setattr(joint_core, "painted_image_merged", spy)
    seed = next(
        s
        for s in range(3, 60, 6)  # soft canvases (see _joint_regions)
        if region_index(_joint_regions(s, "global", base).layout, HEIGHT // 16, WIDTH // 16).soft
    )
    inputs = _flux_inputs(_joint_regions(seed, "global", base).text_length or 0, seed)
    ours = run_regional(flux, _joint_regions(seed, "global", base), inputs)
    assert calls and max(calls) >= 2  # the merged path ran, with shared positions
    monkeypatch.setattr(joint_core._JointAttention, "_merges_base", lambda self, q: False)
    calls.clear()
    per_painter = run_regional(flux, _joint_regions(seed, "global", base), inputs)
    assert not calls
    assert (ours - per_painter).abs().max().item() < 1e-5
    naive = run_naive(flux, _joint_regions(seed, "global", base), True, inputs)
    assert (ours - naive).abs().max().item() < 1e-5
