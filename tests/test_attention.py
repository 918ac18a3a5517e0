"""RegionalAttnProcessor against a naive reference, isolation, stock equivalence and errors.

The naive reference is the definition in DESIGN.md written the slow way: run the stock attention
processor over the whole canvas once per region with only that region's tokens, crop the
region's cell, and blend with a full-canvas stock attention over the base tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from rpg.attention import (
    RegionalAttnProcessor,
    RegionalConditioning,
    RegionalLayout,
    Span,
    region_index,
    region_labels,
)
from rpg.layout import grid_cells, latent_grids

STOCK = AttnProcessor2_0()


# --------------------------------------------------------------------------- naive reference
def _cell_mask(layout: RegionalLayout, h: int, w: int, r: int, four_d: bool) -> torch.Tensor:
    y0, y1, x0, x1 = grid_cells(layout.rows, h, w)[r]
    m = torch.zeros(h, w, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m.view(1, 1, h, w) if four_d else m.reshape(1, h * w, 1)


def _stock(attn: Attention, x: torch.Tensor, ctx: torch.Tensor, span: Span, mask=None):
    m = None if mask is None else mask[..., span[0] : span[1]]
    return STOCK(attn, x, ctx[:, span[0] : span[1]], attention_mask=m)


def naive_regional(attn, x, ctx, layout, grid, spans, base_span, mask=None):
    """``out[R_r] = (1-β_r)·Attn(x, ctx[S_r]) + β_r·Attn(x, ctx[S_base])`` cropped to ``R_r``."""
    h, w = grid
    four_d = x.ndim == 4
    base = None if base_span is None else _stock(attn, x, ctx, base_span, mask)
    out = None
    for r, span in enumerate(spans):
        a = _stock(attn, x, ctx, span, mask)
        beta = layout.base_weights[r]
        if beta > 0:
            assert base is not None
            a = (1 - beta) * a + beta * base
        out = a if out is None else torch.where(_cell_mask(layout, h, w, r, four_d), a, out)
    assert out is not None
    return out


def naive(attn, x, ctx, cond: RegionalConditioning, layout, grid, guidance, mask=None):
    if not guidance:
        return naive_regional(attn, x, ctx, layout, grid, cond.region_spans, cond.base_span, mask)
    half = x.shape[0] // 2
    mneg = None if mask is None else mask[:half]
    mpos = None if mask is None else mask[half:]
    if cond.negative_region_spans is None:
        span = cond.negative_span or (0, ctx.shape[1])
        neg = _stock(attn, x[:half], ctx[:half], span, mneg)
    else:
        nbase = cond.negative_base_span or cond.negative_span
        neg = naive_regional(
            attn, x[:half], ctx[:half], layout, grid, cond.negative_region_spans, nbase, mneg
        )
    pos = naive_regional(
        attn, x[half:], ctx[half:], layout, grid, cond.region_spans, cond.base_span, mpos
    )
    return torch.cat([neg, pos])


# --------------------------------------------------------------------------- random cases
@dataclass
class Case:
    attn: Attention
    x: torch.Tensor
    ctx: torch.Tensor
    mask: torch.Tensor | None
    cond: RegionalConditioning
    layout: RegionalLayout
    grid: tuple[int, int]
    guidance: bool


def _span(rng: random.Random, total: int) -> Span:
    a = rng.randrange(total)
    return a, rng.randint(a + 1, total)


def random_case(seed: int) -> Case:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    heads = rng.choice([1, 2, 4])
    dim_head = 8
    query_dim = rng.choice([16, 32])
    cross_dim = 12
    four_d = rng.random() < 0.3
    attn = Attention(
        query_dim=query_dim,
        cross_attention_dim=cross_dim,
        heads=heads,
        dim_head=dim_head,
        residual_connection=rng.random() < 0.3,
        rescale_output_factor=rng.choice([1.0, 2.0]),
        cross_attention_norm=rng.choice([None, "layer_norm"]),
        norm_num_groups=rng.choice([None, 4]),
        bias=rng.random() < 0.5,
    ).eval()

    rows = tuple(
        (rng.uniform(0.3, 3.0), tuple(rng.uniform(0.3, 3.0) for _ in range(rng.randint(1, 4))))
        for _ in range(rng.randint(1, 3))
    )
    n_regions = sum(len(ws) for _, ws in rows)
    use_base = rng.random() < 0.6
    betas = tuple((rng.choice([0.0, rng.random()]) if use_base else 0.0) for _ in range(n_regions))
    if use_base and rng.random() < 0.5:
        betas = (rng.uniform(0.1, 0.9),) * n_regions
    height, width = 8 * rng.randint(1, 24), 8 * rng.randint(1, 24)
    layout = RegionalLayout(rows=rows, base_weights=betas, height=height, width=width)
    grid = rng.choice(latent_grids(height, width, levels=3))

    lengths = [rng.randint(1, 5) for _ in range(n_regions + 1)]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    total = sum(lengths) + rng.randint(0, 3)
    base_span = (starts[0], starts[0] + lengths[0]) if use_base else None
    region_spans = tuple((starts[i], starts[i] + lengths[i]) for i in range(1, n_regions + 1))
    guidance = rng.random() < 0.6
    per_region_neg = guidance and rng.random() < 0.5
    batch = rng.randint(1, 3) * (2 if guidance else 1)
    embeds = torch.randn(batch, total, cross_dim)
    cond = RegionalConditioning(
        prompt_embeds=embeds,
        region_spans=region_spans,
        base_span=base_span,
        negative_span=_span(rng, total) if guidance and rng.random() < 0.8 else None,
        negative_region_spans=(
            tuple(_span(rng, total) for _ in range(n_regions)) if per_region_neg else None
        ),
        negative_base_span=_span(rng, total) if per_region_neg and rng.random() < 0.5 else None,
    )
    if per_region_neg and use_base and cond.negative_span is None and not cond.negative_base_span:
        cond = RegionalConditioning(
            prompt_embeds=embeds,
            region_spans=region_spans,
            base_span=base_span,
            negative_region_spans=cond.negative_region_spans,
            negative_base_span=_span(rng, total),
        )
    h, w = grid
    x = torch.randn(batch, query_dim, h, w) if four_d else torch.randn(batch, h * w, query_dim)
    mask = None
    if rng.random() < 0.25:  # an additive key mask as UNets pass encoder_attention_mask
        keep = torch.rand(batch, 1, total) < 0.7
        mask = torch.where(keep, 0.0, -10000.0)
    return Case(attn, x, embeds, mask, cond, layout, grid, guidance)


@pytest.mark.parametrize("seed", range(60))
def test_processor_matches_naive_reference(seed: int) -> None:
    case = random_case(seed)
    proc = RegionalAttnProcessor(case.cond, case.layout, guidance=case.guidance)
    with torch.no_grad():
        got = proc(case.attn, case.x, case.ctx, attention_mask=case.mask)
        want = naive(
            case.attn,
            case.x,
            case.ctx,
            case.cond,
            case.layout,
            case.grid,
            case.guidance,
            case.mask,
        )
    assert got.shape == case.x.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_random_cases_cover_every_branch() -> None:
    """The seeds above exercise CFG on/off, both negative modes, base, masks and 4-D inputs."""
    cases = [random_case(s) for s in range(60)]
    assert any(c.guidance and c.cond.negative_region_spans is None for c in cases)
    assert any(c.cond.negative_region_spans is not None for c in cases)
    assert any(not c.guidance for c in cases)
    assert any(c.cond.base_span is not None for c in cases)
    assert any(c.mask is not None for c in cases)
    assert any(c.x.ndim == 4 for c in cases)
    assert {c.x.shape[0] // (2 if c.guidance else 1) for c in cases} == {1, 2, 3}
    assert any(len(set(c.layout.base_weights)) > 1 for c in cases)


# --------------------------------------------------------------------------- isolation
def _grid_layout(n_rows: int, n_cols: int, height: int, width: int) -> RegionalLayout:
    rows = tuple((1.0, (1.0,) * n_cols) for _ in range(n_rows))
    return RegionalLayout(
        rows=rows, base_weights=(0.0,) * (n_rows * n_cols), height=height, width=width
    )


@pytest.mark.parametrize("guidance", [False, True])
@pytest.mark.parametrize("n_rows", [1, 2, 3, 4])
@pytest.mark.parametrize("n_cols", [1, 2, 3, 4])
def test_isolation_other_regions_exactly_unchanged(
    n_rows: int, n_cols: int, guidance: bool
) -> None:
    torch.manual_seed(n_rows * 10 + n_cols)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval()
    layout = _grid_layout(n_rows, n_cols, 72, 136)  # latent 9×17, then 5×9, 3×5
    n = n_rows * n_cols
    spans = tuple((3 * i, 3 * i + 3) for i in range(n))
    cond = RegionalConditioning(
        prompt_embeds=torch.zeros(1, 3 * n, 12),
        region_spans=spans,
        negative_span=(0, 3) if guidance else None,
        negative_region_spans=spans if guidance and n % 2 else None,
    )
    proc = RegionalAttnProcessor(cond, layout, guidance=guidance)
    batch = 2 if guidance else 1
    for h, w in latent_grids(72, 136, levels=3):
        x = torch.randn(batch, h * w, 16)
        ctx = torch.randn(batch, 3 * n, 12)
        labels = region_labels(layout, h, w).reshape(-1)
        with torch.no_grad():
            before = proc(attn, x, ctx)
            for j in range(n):
                changed = ctx.clone()  # a region prompt lives in the positive half only
                changed[-1:, spans[j][0] : spans[j][1]] += torch.randn(1, 3, 12)
                after = proc(attn, x, changed)
                others = labels != j
                assert torch.equal(after[:, others], before[:, others]), (h, w, j)
                if bool((labels == j).any()):
                    assert not torch.equal(after[-1, labels == j], before[-1, labels == j])


# --------------------------------------------------------------------------- stock equivalence
@pytest.mark.parametrize("guidance", [False, True])
@pytest.mark.parametrize("pad", [0, 5])
def test_single_full_region_equals_stock(guidance: bool, pad: int) -> None:
    torch.manual_seed(1)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8).eval()
    layout = RegionalLayout(rows=((1.0, (1.0,)),), base_weights=(0.0,), height=72, width=136)
    batch = 4 if guidance else 2
    ctx = torch.randn(batch, 7 + pad, 24)
    cond = RegionalConditioning(
        prompt_embeds=ctx, region_spans=((0, 7),), negative_span=(0, 7) if guidance else None
    )
    proc = RegionalAttnProcessor(cond, layout, guidance=guidance)
    x = torch.randn(batch, 9 * 17, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            proc(attn, x, ctx), STOCK(attn, x, ctx[:, :7]), atol=1e-6, rtol=1e-6
        )


# --------------------------------------------------------------------------- economy
def test_projections_run_once_and_attention_reads_each_query_once(monkeypatch) -> None:
    """No per-region to_q/to_out, no full-canvas attention per region (the paper's cost)."""
    torch.manual_seed(2)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval()
    layout = RegionalLayout(
        rows=((1.0, (1.0, 2.0)), (1.0, (1.0, 1.0, 1.0))),
        base_weights=(0.3,) * 5,
        height=64,
        width=96,
    )
    spans = tuple((5 * i, 5 * i + 5) for i in range(1, 6))
    cond = RegionalConditioning(
        prompt_embeds=torch.zeros(1, 30, 12),
        region_spans=spans,
        base_span=(0, 5),
        negative_span=(0, 5),
    )
    proc = RegionalAttnProcessor(cond, layout, guidance=True)
    calls = {"to_q": 0, "to_out": 0, "to_k": 0}
    for name in calls:
        module = attn.to_out[0] if name == "to_out" else getattr(attn, name)
        module.register_forward_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    query_rows = []
    real_sdpa = F.scaled_dot_product_attention

    def counting_sdpa(q, k, v, **kw):
        query_rows.append(q.shape[0] * q.shape[2])
        return real_sdpa(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting_sdpa)
    with torch.no_grad():
        proc(attn, torch.randn(2, 8 * 12, 16), torch.randn(2, 30, 12))
    assert calls == {"to_q": 1, "to_out": 1, "to_k": 2}
    # negative half once + every region's rows once + the base term over the positive half once
    assert sum(query_rows) == 96 + 96 + 96


# --------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_keeps_dtype(dtype: torch.dtype) -> None:
    torch.manual_seed(3)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval()
    layout = RegionalLayout(
        rows=((1.0, (1.0, 1.0)),), base_weights=(0.25, 0.5), height=64, width=64
    )
    cond = RegionalConditioning(
        prompt_embeds=torch.zeros(1, 9, 12),
        region_spans=((3, 6), (6, 9)),
        base_span=(0, 3),
        negative_span=(0, 3),
    )
    proc = RegionalAttnProcessor(cond, layout, guidance=True)
    x, ctx = torch.randn(2, 64, 16), torch.randn(2, 9, 12)
    with torch.no_grad():
        ref = proc(attn, x, ctx)
        low = proc(attn.to(dtype), x.to(dtype), ctx.to(dtype))
    assert low.dtype == dtype
    torch.testing.assert_close(low.float(), ref, atol=5e-2, rtol=5e-2)


# --------------------------------------------------------------------------- errors, indices
def test_token_count_matching_no_grid_is_a_clear_error() -> None:
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval()
    layout = RegionalLayout(rows=((1.0, (1.0,)),), base_weights=(0.0,), height=64, width=64)
    cond = RegionalConditioning(prompt_embeds=torch.zeros(1, 4, 12), region_spans=((0, 4),))
    proc = RegionalAttnProcessor(cond, layout, guidance=False)
    with pytest.raises(ValueError, match=r"50 query tokens.*64x64"):
        proc(attn, torch.randn(1, 50, 16), torch.randn(1, 4, 12))


def test_mismatched_inputs_are_rejected() -> None:
    layout = RegionalLayout(rows=((1.0, (1.0, 1.0)),), base_weights=(0.3, 0.3), height=64, width=64)
    one = RegionalConditioning(prompt_embeds=torch.zeros(1, 4, 12), region_spans=((0, 4),))
    with pytest.raises(ValueError, match="1 region spans but the layout has 2"):
        RegionalAttnProcessor(one, layout, guidance=False)
    no_base = RegionalConditioning(
        prompt_embeds=torch.zeros(1, 4, 12), region_spans=((0, 2), (2, 4))
    )
    with pytest.raises(ValueError, match="base_span"):
        RegionalAttnProcessor(no_base, layout, guidance=False)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).eval()
    ok = RegionalConditioning(
        prompt_embeds=torch.zeros(1, 6, 12), region_spans=((2, 4), (4, 6)), base_span=(0, 2)
    )
    proc = RegionalAttnProcessor(ok, layout, guidance=True)
    with pytest.raises(ValueError, match="even size"):
        proc(attn, torch.randn(3, 64, 16), torch.randn(3, 6, 12))


def test_self_attention_call_is_plain_attention() -> None:
    torch.manual_seed(4)
    attn = Attention(query_dim=16, heads=2, dim_head=8).eval()
    layout = RegionalLayout(rows=((1.0, (1.0, 1.0)),), base_weights=(0.0, 0.0), height=64, width=64)
    cond = RegionalConditioning(prompt_embeds=torch.zeros(1, 4, 12), region_spans=((0, 2), (2, 4)))
    x = torch.randn(1, 64, 16)
    with torch.no_grad():
        got = RegionalAttnProcessor(cond, layout, guidance=False)(attn, x)
    torch.testing.assert_close(got, STOCK(attn, x))


def test_region_index_permutation_and_cache() -> None:
    layout = RegionalLayout(
        rows=((1.0, (1.0, 1.0)), (2.0, (1.0,))), base_weights=(0.0, 0.5, 0.0), height=72, width=136
    )
    idx = region_index(layout, 9, 17, "cpu")
    labels = region_labels(layout, 9, 17).reshape(-1)
    assert idx.perm is not None and idx.inverse is not None
    assert torch.equal(idx.perm[idx.inverse], torch.arange(9 * 17))
    for r, (s, e) in enumerate(idx.bounds):
        assert bool((labels[idx.perm[s:e]] == r).all())
    assert idx.bounds[-1][1] == 9 * 17
    assert idx.base_weights is not None and idx.uniform_base_weight is None
    # rows only: regions are already contiguous in row-major order
    rows_only = RegionalLayout(
        rows=((1.0, (1.0,)), (1.0, (1.0,))), base_weights=(0.0, 0.0), height=72, width=136
    )
    flat = region_index(rows_only, 9, 17)
    assert flat.perm is None and flat.base_weights is None
    cond = RegionalConditioning(
        prompt_embeds=torch.zeros(1, 6, 4), region_spans=((2, 4), (4, 6)), base_span=(0, 2)
    )
    proc = RegionalAttnProcessor(cond, rows_only, guidance=False)
    assert proc.index_for(9, 17, torch.device("cpu")) is proc.index_for(9, 17, torch.device("cpu"))


# --------------------------------------------------------------------------- through a UNet
class NaiveProcessor:
    """The naive reference as a diffusers processor, for a whole-UNet comparison."""

    def __init__(self, cond, layout, guidance):
        self.cond, self.layout, self.guidance = cond, layout, guidance

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        temb=None,
        **kwargs,
    ):
        from rpg.layout import latent_grid_for_tokens

        grid = latent_grid_for_tokens(hidden_states.shape[1], self.layout.height, self.layout.width)
        return naive(
            attn,
            hidden_states,
            encoder_hidden_states,
            self.cond,
            self.layout,
            grid,
            self.guidance,
            attention_mask,
        )


@pytest.mark.parametrize("per_region_negative", [False, True])
def test_unet_forward_matches_naive_reference(tiny_unet, per_region_negative: bool) -> None:
    from rpg.attention import cross_attention_names, regional

    torch.manual_seed(5)
    layout = RegionalLayout(
        rows=((2.0, (1.0, 3.0)), (1.0, (1.0, 1.0, 1.0))),
        base_weights=(0.2, 0.2, 0.0, 0.6, 0.2),
        height=72,
        width=136,
    )
    spans = tuple((4 * i, 4 * i + 4) for i in range(1, 6))
    ctx = torch.randn(2, 24, 32)
    cond = RegionalConditioning(
        prompt_embeds=ctx[1:],
        negative_prompt_embeds=ctx[:1],
        region_spans=spans,
        base_span=(0, 4),
        negative_span=(0, 4),
        negative_region_spans=tuple(reversed(spans)) if per_region_negative else None,
    )
    sample = torch.randn(2, 4, 9, 17)
    with torch.no_grad():
        with regional(tiny_unet, cond, layout, guidance=True):
            got = tiny_unet(sample, 10, ctx).sample
        ref = NaiveProcessor(cond, layout, True)
        cross = set(cross_attention_names(tiny_unet))
        tiny_unet.set_attn_processor(
            {k: ref if k in cross else v for k, v in tiny_unet.attn_processors.items()}
        )
        want = tiny_unet(sample, 10, ctx).sample
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
