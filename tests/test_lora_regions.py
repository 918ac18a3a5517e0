"""Per-region LoRA: against a naive reference, stock equivalence on one full-canvas region, and
the refusals (layers every region shares, a model without UNet or text stream)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from lora_helpers import CROSS_KV, write_lora
from rpg import RPG, GenerationRequest, RegionPlan
from rpg.attention import RegionalAttnProcessor, RegionalConditioning, region_index
from rpg.backbones.schedulers import make_scheduler
from rpg.errors import ConfigurationError
from rpg.lora import applied_loras, file_sha256
from rpg.models import Layer, LayerMask, Region, Row
from test_attention import _cell_mask, _stock, random_case

ADAPTERS = ("a", "b")


# ----------------------------------------------------------------- naive reference


def _inject(attn: Any, seed: int) -> None:
    """Two random LoRA adapters on ``attn.to_k``/``to_v``, both switched off (as rpg leaves
    region adapters: they act through the processor only)."""
    from peft import LoraConfig, inject_adapter_in_model

    torch.manual_seed(seed)
    for name in ADAPTERS:
        config = LoraConfig(
            r=2, lora_alpha=3, init_lora_weights=False, target_modules=["to_k", "to_v"]
        )
        inject_adapter_in_model(config, attn, adapter_name=name)
    for layer in (attn.to_k, attn.to_v):
        for name in ADAPTERS:
            layer.lora_B[name].weight.data.normal_(0.0, 0.5)
        layer.enable_adapters(False)


@contextmanager
def _active(attn: Any, pairs: tuple[tuple[str, float], ...]) -> Iterator[None]:
    """Switch the adapters ``pairs`` on at their scales through peft's own layer API."""
    if not pairs:
        yield
        return
    layers = (attn.to_k, attn.to_v)
    for layer in layers:
        layer.enable_adapters(True)
        layer.set_adapter([n for n, _ in pairs])
        for name, scale in pairs:
            layer.set_scale(name, scale)
    try:
        yield
    finally:
        for layer in layers:
            for name in ADAPTERS:
                layer.set_scale(name, 1.0)
            layer.enable_adapters(False)


def _naive_regional(attn, x, ctx, layout, grid, spans, base_span, loras, mask=None):
    """The definition the slow way: region r's term over the whole canvas with r's adapters on
    (stock processor, peft's forward), cropped to r's cell; the base term without adapters."""
    h, w = grid
    four_d = x.ndim == 4
    base = None if base_span is None else _stock(attn, x, ctx, base_span, mask)
    out = None
    for r, span in enumerate(spans):
        with _active(attn, loras[r]):
            a = _stock(attn, x, ctx, span, mask)
        beta = layout.base_weights[r]
        if beta > 0:
            assert base is not None
            a = (1 - beta) * a + beta * base
        out = a if out is None else torch.where(_cell_mask(layout, h, w, r, four_d), a, out)
    assert out is not None
    return out


def _naive(attn, x, ctx, cond: RegionalConditioning, layout, grid, guidance, loras, mask=None):
    if not guidance:
        return _naive_regional(
            attn, x, ctx, layout, grid, cond.region_spans, cond.base_span, loras, mask
        )
    half = x.shape[0] // 2
    mneg = None if mask is None else mask[:half]
    mpos = None if mask is None else mask[half:]
    if cond.negative_region_spans is None:
        span = cond.negative_span or (0, ctx.shape[1])
        spans, nbase = (span,) * len(cond.region_spans), span
    else:
        spans, nbase = cond.negative_region_spans, cond.negative_base_span or cond.negative_span
    neg = _naive_regional(attn, x[:half], ctx[:half], layout, grid, spans, nbase, loras, mneg)
    pos = _naive_regional(
        attn, x[half:], ctx[half:], layout, grid, cond.region_spans, cond.base_span, loras, mpos
    )
    return torch.cat([neg, pos])


def _random_loras(seed: int, regions: int) -> tuple[tuple[tuple[str, float], ...], ...]:
    rng = random.Random(1000 + seed)
    picks = []
    for r in range(regions):
        names = [n for n in ADAPTERS if rng.random() < 0.5]
        if r == 0 and not names:
            names = ["a"]  # every case has at least one region LoRA
        picks.append(tuple((n, rng.choice([-0.5, 0.3, 1.0, 1.7])) for n in names))
    return tuple(picks)


@pytest.mark.parametrize("seed", range(40))
def test_region_loras_match_the_naive_reference(seed: int) -> None:
    case = random_case(seed)
    _inject(case.attn, seed)
    loras = _random_loras(seed, case.cond.num_regions)
    cond = RegionalConditioning(**{**case.cond.__dict__, "region_loras": loras})
    proc = RegionalAttnProcessor(cond, case.layout, guidance=case.guidance)
    with torch.no_grad():
        got = proc(case.attn, case.x, case.ctx, attention_mask=case.mask)
        want = _naive(
            case.attn, case.x, case.ctx, cond, case.layout, case.grid, case.guidance, loras,
            case.mask,
        )  # fmt: skip
        without = RegionalAttnProcessor(case.cond, case.layout, guidance=case.guidance)(
            case.attn, case.x, case.ctx, attention_mask=case.mask
        )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    bounds = region_index(case.layout, *case.grid, torch.device("cpu")).bounds
    acting = [
        r
        for r, (start, end) in enumerate(bounds)
        if loras[r] and end > start and case.layout.base_weights[r] < 1
    ]
    if acting:  # a region with adapters has queries at this grid: they did act
        assert not torch.allclose(got, without, atol=1e-4)


# ----------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def kv_lora(tiny_rpg: RPG, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA on cross-attention keys and values only: what a region may take."""
    path = tmp_path_factory.mktemp("lora-kv") / "kv.safetensors"
    return write_lora(tiny_rpg.pipe, path, targets=CROSS_KV, seed=4)


def _lora_free(pipe: Any) -> bool:
    return not getattr(pipe.unet, "peft_config", None) and not getattr(
        pipe.text_encoder, "peft_config", None
    )


def _one_region(lora: Path | None, scale: float) -> RegionPlan:
    loras = [(str(lora), scale)] if lora else []
    return RegionPlan(rows=(Row(regions=(Region(prompt="a red cat", loras=loras),)),))


def test_one_full_canvas_region_lora_equals_the_stock_pipeline(
    tiny_rpg: RPG, kv_lora: Path
) -> None:
    request = GenerationRequest(
        prompt="a red cat", plan=_one_region(kv_lora, 0.8), steps=3, seed=5, width=64, height=64,
        negative_prompt="blurry",
    )  # fmt: skip
    result = tiny_rpg.generate(request, output_type="np")
    components = dict(tiny_rpg.pipe.components)
    components["scheduler"] = make_scheduler(
        result.request.scheduler, tiny_rpg.backbone.scheduler_config
    )
    stock = StableDiffusionPipeline(**components)
    stock.set_progress_bar_config(disable=True)
    stock.load_lora_weights(str(kv_lora), adapter_name="s")
    stock.set_adapters(["s"], [0.8])
    try:
        want = stock(
            "a red cat", negative_prompt="blurry", num_inference_steps=3, output_type="np",
            guidance_scale=result.request.guidance_scale, height=64, width=64,
            generator=torch.Generator().manual_seed(5),
        ).images[0]  # fmt: skip
    finally:
        stock.unload_lora_weights()
    plain = tiny_rpg.generate(
        request.model_copy(update={"plan": _one_region(None, 0)}), output_type="np"
    ).images[0]
    assert np.abs(result.images[0] - want).max() <= 1e-6
    assert np.abs(result.images[0] - plain).max() > 0.01
    (recorded,) = result.request.plan.regions[0].loras  # type: ignore[union-attr]
    assert recorded.sha256 == file_sha256(kv_lora) and recorded.scale == 0.8
    assert _lora_free(tiny_rpg.pipe)


def test_a_region_lora_with_global_layers_is_refused_naming_them(
    tiny_rpg: RPG, tmp_path: Path
) -> None:
    everywhere = write_lora(tiny_rpg.pipe, tmp_path / "all.safetensors", seed=5)
    plan = RegionPlan(
        rows=(
            Row(regions=(Region(prompt="a cat", loras=[str(everywhere)]), Region(prompt="a dog"))),
        )
    )
    request = GenerationRequest(prompt="pets", plan=plan, steps=1, seed=1, width=64, height=64)
    with pytest.raises(ConfigurationError) as err:
        tiny_rpg.generate(request, output_type="latent")
    message = str(err.value)
    for layer in ("attn1.to_k", "attn1.to_q", "attn2.to_q", "attn2.to_out"):
        assert f"unet: {layer}" in message
    assert "every region shares" in message and "--lora" in message
    assert _lora_free(tiny_rpg.pipe)


def test_two_regions_and_a_global_lora_together(
    tiny_rpg: RPG, kv_lora: Path, tmp_path: Path
) -> None:
    style = write_lora(tiny_rpg.pipe, tmp_path / "style.safetensors", seed=6)
    regions = (Region(prompt="a red cat", loras=[(str(kv_lora), 1.0)]), Region(prompt="a dog"))
    plan = RegionPlan(rows=(Row(regions=regions),), base_prompt="pets", base_ratio=0.3)
    request = GenerationRequest(
        prompt="pets", plan=plan, steps=2, seed=2, width=64, height=64, loras=[(str(style), 0.5)]
    )
    result = tiny_rpg.generate(request, output_type="np")
    no_region = tiny_rpg.generate(
        request.model_copy(update={"plan": plan.model_copy(update={"rows": (Row(
            regions=(Region(prompt="a red cat"), Region(prompt="a dog"))),)})}),
        output_type="np",
    )  # fmt: skip
    assert np.abs(result.images[0] - no_region.images[0]).max() > 1e-3
    # the recorded request re-renders the same pixels
    again = tiny_rpg.generate(result.request, output_type="np")
    assert np.array_equal(again.images[0], result.images[0])
    assert _lora_free(tiny_rpg.pipe)


def test_region_loras_without_unet_or_text_stream_are_refused_before_loading(
    tmp_path: Path,
) -> None:
    """MM-DiT models take region LoRAs (tests/test_region_lora_mmdit.py); a pipeline with
    neither a UNet nor a transformer with a text stream is refused before anything loads."""

    class _Pipe:
        def load_lora_weights(self, *args: Any, **kw: Any) -> None:
            raise AssertionError("nothing may be loaded")

    backbone: Any = SimpleNamespace(pipe=_Pipe(), name="flux")
    plan = RegionPlan(rows=(Row(regions=(Region(prompt="a cat", loras=["x.safetensors"]),)),))
    request = GenerationRequest(prompt="a cat", plan=plan)
    with (
        pytest.raises(ConfigurationError, match="per-region LoRA needs a UNet model"),
        applied_loras(backbone, request),
    ):
        pass


def test_layer_loras_act_like_region_loras_on_a_canvas(tiny_rpg: RPG, kv_lora: Path) -> None:
    """A grid with region LoRAs and its to_canvas() are the same picture; a soft mask works too."""
    regions = (Region(prompt="a red cat", loras=[(str(kv_lora), 1.0)]), Region(prompt="a dog"))
    grid = RegionPlan(rows=(Row(regions=regions),))
    canvas = grid.to_canvas()
    assert canvas.layers[0].loras and not canvas.layers[1].loras
    request = GenerationRequest(prompt="pets", plan=grid, steps=2, seed=3, width=64, height=64)
    by_grid = tiny_rpg.generate(request, output_type="np").images[0]
    on_canvas = tiny_rpg.generate(request.model_copy(update={"plan": canvas}), output_type="np")
    assert np.array_equal(on_canvas.images[0], by_grid)
    recorded = on_canvas.request.plan.layers[0].loras  # type: ignore[union-attr]
    assert recorded[0].sha256 == file_sha256(kv_lora)
    # a soft-edged mask layer with a LoRA over a background (the weighted, scatter-add path)
    mask = np.zeros((64, 64), dtype=np.float32)
    mask[8:40, 8:40] = 1.0
    soft = RegionPlan(
        layers=(
            Layer(prompt="a red cat", mask=LayerMask.from_image(mask).model_copy(
                update={"soft_edge": 0.05}), loras=[(str(kv_lora), 1.0)]),
        )
    )  # fmt: skip
    with_lora = tiny_rpg.generate(request.model_copy(update={"plan": soft}), output_type="np")
    without = soft.model_copy(update={"layers": (soft.layers[0].model_copy(update={"loras": ()}),)})
    plain = tiny_rpg.generate(request.model_copy(update={"plan": without}), output_type="np")
    assert np.abs(with_lora.images[0] - plain.images[0]).max() > 1e-3
    assert _lora_free(tiny_rpg.pipe)
