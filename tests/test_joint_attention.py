"""Regional joint attention (FLUX, SD3) against the naive per-query reference, and its installer.

Every case runs one transformer forward twice: with rpg's processors (installed by
``regional_joint``) and with the naive reference of ``joint_helpers`` on the same layers; all
block kinds take part (FLUX double- and single-stream, SD3 joint blocks including the
``context_pre_only`` last one, SD3.5's stock ``attn2``).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from joint_helpers import (
    POOLED_DIM,
    TEXT_DIM,
    Case,
    NaiveJointProcessor,
    random_case,
    run_naive,
    run_regional,
    tiny_flux_transformer,
    tiny_sd3_transformer,
)
from rpg.attention.joint import (
    FluxRegionalAttnProcessor,
    JointAttentionOptions,
    JointRegions,
    SD3RegionalAttnProcessor,
    joint_attention_names,
    regional_joint,
)
from rpg.attention.lse import attention_with_lse
from rpg.attention.spec import RegionalLayout

HEIGHT, WIDTH = 80, 144  # 5 × 9 patches: odd on both axes


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """The naive reference runs thousands of tiny ops; thread hand-offs would dominate them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def flux() -> Any:
    return tiny_flux_transformer()


@pytest.fixture(scope="module")
def sd3() -> Any:
    return tiny_sd3_transformer()


def _flux_inputs(batch: int, n_text: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    h, w = HEIGHT // 16, WIDTH // 16
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None]
    return {
        "hidden_states": torch.randn(batch, h * w, 16, generator=g),
        "encoder_hidden_states": torch.randn(batch, n_text, TEXT_DIM, generator=g),
        "pooled_projections": torch.randn(batch, POOLED_DIM, generator=g),
        "timestep": torch.full((batch,), 0.7),
        "img_ids": ids.reshape(-1, 3),
        "txt_ids": torch.zeros(n_text, 3),
    }


def _sd3_inputs(batch: int, n_text: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(batch, 16, HEIGHT // 8, WIDTH // 8, generator=g),
        "encoder_hidden_states": torch.randn(batch, n_text, TEXT_DIM, generator=g),
        "pooled_projections": torch.randn(batch, POOLED_DIM, generator=g),
        "timestep": torch.full((batch,), 700.0),
    }


def _regions(case: Case, scope: str, **kwargs: Any) -> JointRegions:
    return JointRegions(
        region_spans=case.spans,
        layout=case.layout,
        base_span=case.base_span,
        global_span=case.global_span,
        text_length=case.text_length,
        options=JointAttentionOptions(image_attention=scope),  # type: ignore[arg-type]
        **kwargs,
    )


#: 20 random layouts per family: 5 seeds × both image-attention scopes × with and without base.
CASES = [(seed, scope, base) for seed in range(5) for scope in ("global", "region")
         for base in (True, False)]  # fmt: skip


@pytest.mark.parametrize(("seed", "scope", "base"), CASES)
def test_flux_matches_naive_reference(flux: Any, seed: int, scope: str, base: bool) -> None:
    case = random_case(random.Random(seed), HEIGHT, WIDTH, base=base)
    inputs = _flux_inputs(1, case.text_length, seed)
    naive = run_naive(flux, _regions(case, scope), True, inputs)
    ours = run_regional(flux, _regions(case, scope), inputs)
    assert (ours - naive).abs().max().item() < 1e-5


@pytest.mark.parametrize(("seed", "scope", "base"), CASES)
def test_sd3_matches_naive_reference_with_guidance(
    sd3: Any, seed: int, scope: str, base: bool
) -> None:
    """A ``[negative, positive]`` batch: the negative half is stock attention over its span."""
    case = random_case(random.Random(100 + seed), HEIGHT, WIDTH, base=base)
    inputs = _sd3_inputs(2, case.text_length, seed)
    negative = (0, max(1, case.text_length - 3))
    naive_regions = _regions(case, scope, negative_span=negative)
    naive_regions.state.rows = "negative+positive"
    naive = run_naive(sd3, naive_regions, False, inputs)
    ours = run_regional(
        sd3, _regions(case, scope, negative_span=negative), inputs, guidance_batch=1
    )
    assert (ours - naive).abs().max().item() < 1e-5


@pytest.mark.parametrize("every", [2, 3])
def test_regional_blocks_match_naive_reference(flux: Any, sd3: Any, every: int) -> None:
    """Only every k-th joint layer is regional; the others read the base (or whole) prompt."""
    for model, is_flux, inputs_of in ((flux, True, _flux_inputs), (sd3, False, _sd3_inputs)):
        case = random_case(random.Random(every), HEIGHT, WIDTH, base=every == 2)
        inputs = inputs_of(1, case.text_length, every)
        options = JointAttentionOptions(regional_blocks=every)
        regions = JointRegions(
            region_spans=case.spans, layout=case.layout, base_span=case.base_span,
            global_span=case.global_span, text_length=case.text_length, options=options,
        )  # fmt: skip
        previous = dict(model.attn_processors)
        names = joint_attention_names(model)
        model.set_attn_processor({
            k: NaiveJointProcessor(regions, flux=is_flux, regional_block=names.index(k) % every < 1)
            if k in names else v
            for k, v in previous.items()
        })  # fmt: skip
        try:
            with torch.no_grad():
                naive = model(**inputs).sample
        finally:
            model.set_attn_processor(previous)
        ours = run_regional(model, regions, inputs)
        assert (ours - naive).abs().max().item() < 1e-5
        full = run_regional(model, _regions(case, "global"), inputs)
        assert (full - ours).abs().max().item() > 1e-4  # the skipped blocks did change something


def test_one_full_region_without_base_is_stock(flux: Any, sd3: Any) -> None:
    layout = RegionalLayout(((1.0, (1.0,)),), (0.0,), HEIGHT, WIDTH, latent_factor=16)
    for scope in ("global", "region"):
        regions = JointRegions(
            region_spans=((0, 9),), layout=layout, text_length=9, negative_span=(0, 9),
            options=JointAttentionOptions(image_attention=scope),  # type: ignore[arg-type]
        )  # fmt: skip
        inputs = _flux_inputs(1, 9, 0)
        with torch.no_grad():
            stock = flux(**inputs).sample
        assert (run_regional(flux, regions, inputs) - stock).abs().max().item() < 1e-5
        inputs = _sd3_inputs(2, 9, 0)
        with torch.no_grad():
            stock = sd3(**inputs).sample
        ours = run_regional(sd3, regions, inputs, guidance_batch=1)
        assert (ours - stock).abs().max().item() < 1e-5


def test_after_regional_steps_image_follows_stock_with_base(flux: Any) -> None:
    """Past the regional steps, image tokens see only the base prompt and the image: the image
    output equals the stock model given the base prompt alone."""
    case = random_case(random.Random(5), HEIGHT, WIDTH, base=True)
    assert case.base_span == (0, case.base_span[1])  # type: ignore[index]
    regions = JointRegions(
        region_spans=case.spans, layout=case.layout, base_span=case.base_span,
        text_length=case.text_length, steps=4,
        options=JointAttentionOptions(regional_steps=0.5),
    )  # fmt: skip
    inputs = _flux_inputs(1, case.text_length, 5)
    base_only = dict(inputs)
    b1 = case.base_span[1]  # type: ignore[index]
    base_only["encoder_hidden_states"] = inputs["encoder_hidden_states"][:, :b1]
    base_only["txt_ids"] = inputs["txt_ids"][:b1]
    with regional_joint(flux, regions), torch.no_grad():
        outs = []
        for t in (0.9, 0.7, 0.5, 0.3):  # four steps: two regional, two not
            inputs["timestep"] = base_only["timestep"] = torch.tensor([t])
            outs.append(flux(**inputs).sample)
        assert regions.state.step == 3
    with torch.no_grad():
        stock = [flux(**{**base_only, "timestep": torch.tensor([t])}).sample for t in (0.5, 0.3)]
    assert (outs[2] - stock[0]).abs().max().item() < 1e-5
    assert (outs[3] - stock[1]).abs().max().item() < 1e-5
    with torch.no_grad():
        stock_first = flux(**{**base_only, "timestep": torch.tensor([0.9])}).sample
    assert (outs[0] - stock_first).abs().max().item() > 1e-4


def test_processors_restored_on_exit_and_error(flux: Any, sd3: Any) -> None:
    case = random_case(random.Random(1), HEIGHT, WIDTH, base=True)
    for model, cls in ((flux, FluxRegionalAttnProcessor), (sd3, SD3RegionalAttnProcessor)):
        before = dict(model.attn_processors)
        with regional_joint(model, _regions(case, "global")):
            now = model.attn_processors
            joint = set(joint_attention_names(model))
            assert all(isinstance(now[k], cls) for k in joint)
            assert all(now[k] is before[k] for k in now if k not in joint)
        assert model.attn_processors == before
        with (
            pytest.raises(RuntimeError, match="boom"),
            regional_joint(model, _regions(case, "global")),
        ):
            raise RuntimeError("boom")
        assert model.attn_processors == before
        assert not model._forward_pre_hooks


def test_sd35_attn2_stays_stock(sd3: Any) -> None:
    names = joint_attention_names(sd3)
    assert "transformer_blocks.0.attn2.processor" not in names
    assert "transformer_blocks.0.attn.processor" in names
    assert len(names) == 3


def test_fused_projections_match_unfused(flux: Any) -> None:
    case = random_case(random.Random(3), HEIGHT, WIDTH, base=True)
    inputs = _flux_inputs(1, case.text_length, 3)
    plain = run_regional(flux, _regions(case, "region"), inputs)
    fused = tiny_flux_transformer()
    fused.fuse_qkv_projections()
    assert fused.transformer_blocks[0].attn.fused_projections
    assert (run_regional(fused, _regions(case, "region"), inputs) - plain).abs().max().item() < 1e-5


def test_bad_configurations_are_clear_errors() -> None:
    layout = RegionalLayout(((1.0, (1.0, 1.0)),), (0.2, 0.2), HEIGHT, WIDTH, latent_factor=16)
    with pytest.raises(ValueError, match="base_span"):
        JointRegions(region_spans=((0, 2), (2, 4)), layout=layout)
    flat = RegionalLayout(((1.0, (1.0, 1.0)),), (0.0, 0.0), HEIGHT, WIDTH, latent_factor=16)
    with pytest.raises(ValueError, match="2 region spans"):
        JointRegions(region_spans=((0, 2), (2, 4)), layout=layout.__class__(
            ((1.0, (1.0,)),), (0.0,), HEIGHT, WIDTH, latent_factor=16))  # fmt: skip
    with pytest.raises(ValueError, match="global_span"):
        JointRegions(region_spans=((0, 2), (2, 4)), layout=flat,
                     options=JointAttentionOptions(regional_blocks=2))  # fmt: skip
    with pytest.raises(ValueError, match="number of denoising steps"):
        JointRegions(region_spans=((0, 2), (2, 4)), layout=flat, global_span=(4, 6),
                     options=JointAttentionOptions(regional_steps=0.5))  # fmt: skip
    with pytest.raises(ValueError, match="image_attention"):
        JointAttentionOptions(image_attention="local")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="regional_steps"):
        JointAttentionOptions(regional_steps=0)
    regions = JointRegions(region_spans=((0, 2), (2, 4)), layout=flat, text_length=4)
    with pytest.raises(ValueError, match="image tokens"):
        regions.index_for(7, torch.device("cpu"))


@pytest.mark.parametrize("scope", ["global", "region"])
def test_base_term_shares_the_image_attention(
    flux: Any, sd3: Any, scope: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a base prompt the image keys are attended once and merged by log-sum-exp; the result
    equals the two separate attentions (the path taken with autograd or another backend)."""
    import rpg.attention.joint as joint
    import rpg.attention.joint_core as joint_core

    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return attention_with_lse(*args, **kwargs)

    monkeypatch.setattr(joint_core, "attention_with_lse", counted)
    for model, inputs_of, kw in (
        (flux, _flux_inputs, {}),
        (sd3, _sd3_inputs, {"guidance_batch": 1}),
    ):
        case = random_case(random.Random(11), HEIGHT, WIDTH, base=True)
        inputs = inputs_of(2 if kw else 1, case.text_length, 11)
        calls.clear()
        merged = run_regional(model, _regions(case, scope, negative_span=(0, 2)), inputs, **kw)
        assert calls, "the merged path was not taken"
        with monkeypatch.context() as m:
            m.setattr(joint._JointAttention, "_merges_base", lambda self, q: False)
            calls.clear()
            separate = run_regional(
                model, _regions(case, scope, negative_span=(0, 2)), inputs, **kw
            )
            assert not calls
        assert (merged - separate).abs().max().item() < 1e-5


def test_base_term_stays_separate_where_it_cannot_merge(flux: Any) -> None:
    from diffusers.models.attention_dispatch import attention_backend

    case = random_case(random.Random(2), HEIGHT, WIDTH, base=True)
    proc = FluxRegionalAttnProcessor(_regions(case, "global"))
    q = torch.zeros(1, 4, 2, 8)
    with torch.no_grad():
        assert proc._merges_base(q)
        with attention_backend("_native_math"):  # a backend chosen for every call
            assert not proc._merges_base(q)
        proc._attention_backend = "_native_math"  # a backend chosen for this layer
        assert not proc._merges_base(q)
        proc._attention_backend = None
    assert not proc._merges_base(q)  # autograd on: no gradient flows through a log-sum-exp
