"""Per-region LoRA on MM-DiT models (FLUX.1, SD3, FLUX.2 klein): a region's adapters act on its
own text rows only. Against a naive reference (peft's own forward with the region's adapters
switched on, its rows copied over), stock equivalences on one full-canvas region, refusals."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from joint_helpers import (
    FLUX2_TEXT_DIM,
    random_case,
    run_regional,
    tiny_flux2_transformer,
    tiny_flux_transformer,
    tiny_sd3_transformer,
)
from lora_helpers import ATTENTION, write_lora
from rpg import RPG, GenerationRequest, RegionPlan
from rpg.attention.joint import JointAttentionOptions, JointRegions
from rpg.attention.joint_flux2 import regional_flux2
from rpg.cli import main
from rpg.errors import ConfigurationError
from rpg.lora import file_sha256
from rpg.metadata import load_request
from rpg.models import Region, Row
from test_joint_attention import HEIGHT, WIDTH, _flux_inputs, _sd3_inputs

ADAPTERS = ("a", "b")
#: The text-stream layers, written out by name (independently of rpg.attention.joint_lora).
_ATTN = r"attn\.(add_[qkv]_proj|to_add_out)"
CONTEXT = rf"transformer_blocks\.\d+\.({_ATTN}|ff_context\..*(proj|net\.2|linear_in|linear_out))"
SINGLE = (
    r"single_transformer_blocks\.\d+\.(attn\.(to_[qkv]|to_qkv_mlp_proj|to_out)|proj_mlp|proj_out)"
)
TEXT_LAYERS = f"^({CONTEXT}|{SINGLE})$"
#: What a region LoRA file holds for the pipeline tests: context-stream layers only (what stock
#: FLUX/SD3 with the LoRA global also applies to text rows only), and single-stream layers too.
CONTEXT_TARGETS = (
    rf".*transformer_blocks\.\d+\.({_ATTN}|ff_context\.(net\.(0\.proj|2)|linear_(in|out)))"
)
SINGLE_TARGETS = f".*{SINGLE}"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------- naive reference


def _with_adapters(model: Any, seed: int, *, zero: bool = False) -> Any:
    """Two random LoRA adapters on every text-stream layer, switched off (as rpg leaves them)."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    torch.manual_seed(seed)
    for name in ADAPTERS:
        config = LoraConfig(r=2, lora_alpha=3, init_lora_weights=False, target_modules=TEXT_LAYERS)
        inject_adapter_in_model(config, model, adapter_name=name)
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert layers
    for layer in layers:
        for name in ADAPTERS:
            weight = layer.lora_B[name].weight.data
            weight.zero_() if zero else weight.normal_(0.0, 0.5)
        layer.enable_adapters(False)
    return model


@contextmanager
def _active(layer: Any, pairs: tuple[tuple[str, float], ...]) -> Iterator[None]:
    """peft's own layer API: the adapters ``pairs`` on at their scales."""
    layer.enable_adapters(True)
    layer.set_adapter([n for n, _ in pairs])
    for name, scale in pairs:
        layer.set_scale(name, scale)
    try:
        yield
    finally:
        for name in ADAPTERS:
            layer.set_scale(name, 1.0)
        layer.enable_adapters(False)


@contextmanager
def naive_region_loras(
    model: Any, spans: tuple, loras: tuple, *, positive_from: int = 0, negative: bool = False
) -> Iterator[None]:
    """Each text-stream layer's rows of region r replaced by the layer's output with r's adapters
    on (the whole input run again through peft's forward); rows before ``positive_from`` in the
    batch (the negative half) and a negative call untouched."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    def hook(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
        if negative:
            return output
        out = output.clone()
        for (s0, s1), pairs in zip(spans, loras, strict=True):
            if pairs:
                with _active(module, pairs):
                    full = module.forward(args[0])
                out[positive_from:, s0:s1] = full[positive_from:, s0:s1]
        return out

    handles = [
        m.register_forward_hook(hook)
        for name, m in model.named_modules()
        if isinstance(m, BaseTunerLayer) and re.match(TEXT_LAYERS, name)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _random_loras(rng: random.Random, spans: tuple) -> tuple:
    """Adapters per region, the same for regions sharing a span; at least one region has some."""
    by_span: dict = {}
    for span in spans:
        if span not in by_span:
            k = rng.randint(0, 2)
            by_span[span] = tuple((a, round(rng.uniform(0.3, 1.5), 2)) for a in ADAPTERS[:k])
    if not any(by_span.values()):
        by_span[spans[0]] = (("b", 0.7),)
    return tuple(by_span[s] for s in spans)


def _regions(case: Any, loras: Any, **kw: Any) -> JointRegions:
    return JointRegions(
        region_spans=case.spans, layout=case.layout, base_span=case.base_span,
        global_span=case.global_span, text_length=case.text_length, region_loras=loras,
        options=JointAttentionOptions(image_attention=kw.pop("scope", "global")), **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def flux() -> Any:
    return _with_adapters(tiny_flux_transformer(), 1)


@pytest.fixture(scope="module")
def sd3() -> Any:
    return _with_adapters(tiny_sd3_transformer(), 2)


@pytest.fixture(scope="module")
def klein() -> Any:
    return _with_adapters(tiny_flux2_transformer(), 3)


@pytest.mark.parametrize(("seed", "base"), [(0, True), (1, False), (2, True), (3, False)])
def test_flux_region_loras_match_the_naive_reference(flux: Any, seed: int, base: bool) -> None:
    rng = random.Random(seed)
    case = random_case(rng, HEIGHT, WIDTH, base=base)
    loras = _random_loras(rng, case.spans)
    inputs = _flux_inputs(2, case.text_length, seed)
    with naive_region_loras(flux, case.spans, loras):
        naive = run_regional(flux, _regions(case, None), inputs)
    ours = run_regional(flux, _regions(case, loras), inputs)
    plain = run_regional(flux, _regions(case, None), inputs)
    assert (ours - naive).abs().max().item() < 2e-5
    assert (ours - plain).abs().max().item() > 1e-3
    # FLUX true CFG: the negative forward (recognised by identity) gets no region LoRA
    negative = inputs["encoder_hidden_states"]
    neg_ours = run_regional(
        flux, _regions(case, loras, negative_span=(0, 3)), inputs, negative_prompt_embeds=negative
    )
    neg_plain = run_regional(
        flux, _regions(case, None, negative_span=(0, 3)), inputs, negative_prompt_embeds=negative
    )
    assert torch.equal(neg_ours, neg_plain)


@pytest.mark.parametrize(("seed", "base"), [(0, False), (1, True), (2, False)])
def test_sd3_region_loras_match_the_naive_reference_in_a_guided_batch(
    sd3: Any, seed: int, base: bool
) -> None:
    """SD3's CFG batch ``[negative, positive]``: only the positive half's region rows change."""
    rng = random.Random(seed)
    case = random_case(rng, HEIGHT, WIDTH, base=base)
    loras = _random_loras(rng, case.spans)
    inputs = _sd3_inputs(2, case.text_length, seed)
    kw = {"guidance_batch": 1}
    with naive_region_loras(sd3, case.spans, loras, positive_from=1):
        naive = run_regional(sd3, _regions(case, None, negative_span=(0, 2)), inputs, **kw)
    ours = run_regional(sd3, _regions(case, loras, negative_span=(0, 2)), inputs, **kw)
    plain = run_regional(sd3, _regions(case, None, negative_span=(0, 2)), inputs, **kw)
    assert (ours - naive).abs().max().item() < 2e-5
    assert torch.equal(ours[:1], plain[:1])  # the negative half is the stock one
    assert (ours[1:] - plain[1:]).abs().max().item() > 1e-3
    # a positive-only call (SD3.5 skip-layer guidance's extra forward) gets them on every row
    single = {k: v[1:] for k, v in inputs.items()}
    with naive_region_loras(sd3, case.spans, loras):
        naive = run_regional(sd3, _regions(case, None), single, **kw)
    assert (run_regional(sd3, _regions(case, loras), single, **kw) - naive).abs().max() < 2e-5


def _klein_inputs(n_text: int, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    h, w = HEIGHT // 16, WIDTH // 16
    img_ids = torch.zeros(h, w, 4)
    img_ids[..., 1], img_ids[..., 2] = torch.arange(h)[:, None], torch.arange(w)[None]
    txt_ids = torch.zeros(n_text, 4)
    txt_ids[:, 3] = torch.arange(n_text)
    return {
        "hidden_states": torch.randn(1, h * w, 16, generator=g),
        "encoder_hidden_states": torch.randn(1, n_text, FLUX2_TEXT_DIM, generator=g),
        "timestep": torch.full((1,), 0.7), "img_ids": img_ids.reshape(-1, 4), "txt_ids": txt_ids,
    }  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1])
def test_klein_region_loras_match_the_naive_reference(klein: Any, seed: int) -> None:
    rng = random.Random(seed)
    case = random_case(rng, HEIGHT, WIDTH, base=bool(seed))
    loras = _random_loras(rng, case.spans)
    inputs = _klein_inputs(case.text_length, seed)

    def run(regions: JointRegions) -> torch.Tensor:
        with regional_flux2(klein, regions), torch.no_grad():
            return klein(**inputs).sample

    with naive_region_loras(klein, case.spans, loras):
        naive = run(_regions(case, None))
    ours = run(_regions(case, loras))
    assert (ours - naive).abs().max().item() < 2e-5
    assert (ours - run(_regions(case, None))).abs().max().item() > 1e-3


def test_zero_lora_equals_no_lora_and_hooks_are_removed() -> None:
    model = _with_adapters(tiny_flux_transformer(), 4, zero=True)
    case = random_case(random.Random(5), HEIGHT, WIDTH, base=True)
    loras = tuple((("a", 1.0), ("b", 0.5)) for _ in case.spans)
    inputs = _flux_inputs(1, case.text_length, 5)
    ours = run_regional(model, _regions(case, loras), inputs)
    assert torch.equal(ours, run_regional(model, _regions(case, None), inputs))
    assert not any(m._forward_hooks for m in model.modules())


def test_fused_projections_are_refused() -> None:
    """Fused QKV projections never call add_q_proj …, where region LoRAs act: refused."""
    model = _with_adapters(tiny_flux_transformer(), 6)
    model.transformer_blocks[0].attn.fused_projections = True  # as fuse_qkv_projections sets it
    case = random_case(random.Random(1), HEIGHT, WIDTH, base=False)
    loras = _random_loras(random.Random(1), case.spans)
    with pytest.raises(ConfigurationError, match="unfuse_qkv_projections"):
        run_regional(model, _regions(case, loras), _flux_inputs(1, case.text_length, 1))
    assert not any(m._forward_hooks for m in model.modules())


def test_regions_sharing_a_prompt_must_share_their_loras(flux: Any) -> None:
    case = random_case(random.Random(0), HEIGHT, WIDTH, base=True)
    spans = (case.spans[0], case.spans[0])
    layout = case.layout.__class__(
        rows=((1.0, (1.0, 1.0)),), base_weights=(0.2, 0.2), height=HEIGHT, width=WIDTH,
        latent_factor=16,
    )  # fmt: skip
    regions = JointRegions(
        region_spans=spans, layout=layout, base_span=case.base_span,
        text_length=case.text_length, region_loras=((("a", 1.0),), ()),
    )  # fmt: skip
    inputs = _flux_inputs(1, case.text_length, 0)
    with pytest.raises(ConfigurationError, match="same prompt as an earlier region"):
        run_regional(flux, regions, inputs)
    assert not any(m._forward_hooks for m in flux.modules())
    # a region whose prompt is the base prompt's text reads the base tokens: no LoRA of its own
    assert case.base_span is not None
    on_base = JointRegions(
        region_spans=(case.base_span, case.spans[0]), layout=layout, base_span=case.base_span,
        text_length=case.text_length, region_loras=((("a", 1.0),), ()),
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match="the base prompt's text"):
        run_regional(flux, on_base, inputs)
    assert not any(m._forward_hooks for m in flux.modules())


# ----------------------------------------------------------------- pipelines


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tiny_helpers import write_tiny_models

    root = tmp_path_factory.mktemp("rpg-mmlora")
    return write_tiny_models(root, ("tiny-flux", "tiny-sd3", "tiny-flux2-klein"))


_LOADED: dict[str, RPG] = {}


def _load(models: dict[str, Path], name: str) -> RPG:
    if name not in _LOADED:
        pipe = RPG.from_pretrained(models[name], device="cpu", dtype="float32")
        pipe.pipe.set_progress_bar_config(disable=True)
        _LOADED[name] = pipe
    return _LOADED[name]


def _lora_free(pipe: Any) -> bool:
    return not any(
        getattr(getattr(pipe, n, None), "peft_config", None) for n in pipe._lora_loadable_modules
    ) and not any(m._forward_hooks for m in pipe.transformer.modules())


def _plan(lora: Path | None, scale: float = 1.0, prompt: str = "a red cat") -> RegionPlan:
    loras = [(str(lora), scale)] if lora else []
    return RegionPlan(rows=(Row(regions=(Region(prompt=prompt, loras=loras),)),))


def _zeroed(src: Path, dst: Path) -> Path:
    from safetensors.torch import load_file, save_file

    state = load_file(str(src))
    save_file({k: v.zero_() if "lora_B" in k else v for k, v in state.items()}, str(dst))
    return dst


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3"])
def test_one_full_canvas_region_lora_equals_the_stock_pipeline(
    models: dict[str, Path], tmp_path: Path, name: str
) -> None:
    """A LoRA on the context stream only: stock, with it for the whole image, changes text rows
    only, so one full-canvas region with it is the stock render (without CFG, whose negative
    prompt the stock pipeline would give it too)."""
    rpg = _load(models, name)
    pipe = rpg.pipe
    lora = write_lora(pipe, tmp_path / "ctx.safetensors", targets=CONTEXT_TARGETS, seed=7)
    request = GenerationRequest(
        prompt="a red cat", plan=_plan(lora, 0.8), steps=2, seed=5, width=48, height=32,
        guidance_scale=1.0,
    )  # fmt: skip
    ours = rpg.generate(request, output_type="latent").images[0]
    plain = rpg.generate(request.model_copy(update={"plan": _plan(None)}), output_type="latent")
    zero = _zeroed(lora, tmp_path / "zero.safetensors")
    zeroed = rpg.generate(request.model_copy(update={"plan": _plan(zero)}), output_type="latent")
    assert _lora_free(pipe)
    pipe.load_lora_weights(str(lora), adapter_name="stock")
    pipe.set_adapters(["stock"], [0.8])
    try:
        stock = pipe(
            "a red cat", height=32, width=48, num_inference_steps=2, output_type="latent",
            guidance_scale=1.0, generator=torch.Generator().manual_seed(5),
        ).images[0]  # fmt: skip
    finally:
        pipe.unload_lora_weights()
    assert (ours - stock).abs().max().item() <= 1e-5
    assert (ours - plain.images[0]).abs().max().item() > 1e-3
    assert torch.equal(zeroed.images[0], plain.images[0])  # all-zero B: no LoRA at all
    assert _lora_free(pipe)


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3", "tiny-flux2-klein"])
def test_a_region_lora_on_image_layers_is_refused_naming_them(
    models: dict[str, Path], tmp_path: Path, name: str
) -> None:
    rpg = _load(models, name)
    everywhere = write_lora(rpg.pipe, tmp_path / "all.safetensors", targets=ATTENTION, seed=5)
    regions = (Region(prompt="a cat", loras=[str(everywhere)]), Region(prompt="a dog"))
    plan = RegionPlan(rows=(Row(regions=regions),))
    request = GenerationRequest(prompt="pets", plan=plan, steps=1, seed=1, width=32, height=32)
    with pytest.raises(ConfigurationError) as err:
        rpg.generate(request, output_type="latent")
    message = str(err.value)
    assert "transformer: transformer_blocks.attn.to_q" in message
    assert "transformer: transformer_blocks.attn.to_out" in message
    assert "every region shares" in message and "--lora" in message
    assert "attn.add_q_proj" in message  # what a region LoRA may hold
    assert _lora_free(rpg.pipe)


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3", "tiny-flux2-klein"])
def test_two_regions_one_with_a_text_lora_re_render_identically(
    models: dict[str, Path], tmp_path: Path, name: str
) -> None:
    """Context and single-stream layers, SD3 with its CFG batch, klein with its CFG forwards."""
    rpg = _load(models, name)
    targets = f"{CONTEXT_TARGETS}|{SINGLE_TARGETS}"
    lora = write_lora(rpg.pipe, tmp_path / "text.safetensors", targets=targets, seed=8)
    regions = (Region(prompt="a red cat", loras=[(str(lora), 0.9)]), Region(prompt="a dog"))
    plan = RegionPlan(rows=(Row(regions=regions),), base_prompt="pets", base_ratio=0.3)
    request = GenerationRequest(
        prompt="pets", plan=plan, steps=2, seed=2, width=48, height=32, negative_prompt="blurry",
        guidance_scale=3.0,
    )  # fmt: skip
    result = rpg.generate(request, output_type="latent")
    plain = plan.model_copy(update={"rows": (Row(regions=(Region(prompt="a red cat"),
                                                          Region(prompt="a dog"))),)})  # fmt: skip
    without = rpg.generate(request.model_copy(update={"plan": plain}), output_type="latent")
    assert (result.images[0] - without.images[0]).abs().max().item() > 1e-4
    (recorded,) = result.request.plan.regions[0].loras  # type: ignore[union-attr]
    assert recorded.sha256 == file_sha256(lora) and recorded.scale == 0.9
    again = rpg.generate(result.request, output_type="latent")
    assert torch.equal(again.images[0], result.images[0])
    assert _lora_free(rpg.pipe)


def test_cli_generate_with_a_flux_region_lora_and_from_re_renders(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPG_CACHE_DIR", str(models["tiny-flux"].parent))
    monkeypatch.chdir(tmp_path)
    lora = write_lora(
        _load(models, "tiny-flux").pipe, tmp_path / "r.safetensors",
        targets=f"{CONTEXT_TARGETS}|{SINGLE_TARGETS}", seed=9,
    )  # fmt: skip
    regions = (Region(prompt="a red cat", loras=[(str(lora), 0.7)]), Region(prompt="a blue dog"))
    Path("plan.json").write_text(RegionPlan(rows=(Row(regions=regions),)).model_dump_json())
    args = ["generate", "a red cat and a blue dog", "--model", "tiny-flux", "--plan", "plan.json",
            "--seed", "3", "--steps", "2", "--size", "48x32", "--no-progress"]  # fmt: skip
    assert main([*args, "--out", "a.png"]) == 0
    recorded = load_request("a.png").plan.regions[0].loras  # type: ignore[union-attr]
    assert recorded[0].sha256 == file_sha256(lora) and recorded[0].scale == 0.7
    assert main(["generate", "--from", "a.png", "--out", "b.png", "--no-progress"]) == 0
    a, b = (np.asarray(Image.open(p).convert("RGB")) for p in ("a.png", "b.png"))
    assert np.array_equal(a, b)
    plan = json.loads(Path("plan.json").read_text())
    plan["rows"][0]["regions"][0].pop("loras")
    Path("plain.json").write_text(json.dumps(plan))
    assert main([*args[:5], "plain.json", *args[6:], "--out", "c.png"]) == 0
    assert not np.array_equal(a, np.asarray(Image.open("c.png").convert("RGB")))


def test_a_compiled_flux_transformer_takes_region_loras_in_one_graph(
    models: dict[str, Path], tmp_path: Path
) -> None:
    """``fullgraph=True`` (a graph break raises): the hooks read no tensor value, and nothing is
    compiled again from one step to the next; the latents are the eager render's."""
    from torch._dynamo.utils import counters

    from rpg.attention.diagnostics import CompileCounter, graph_breaks

    torch._dynamo.reset()
    counters.clear()
    rpg = RPG.from_pretrained(models["tiny-flux"], device="cpu", dtype="float32")
    rpg.pipe.set_progress_bar_config(disable=True)
    targets = f"{CONTEXT_TARGETS}|{SINGLE_TARGETS}"
    lora = write_lora(rpg.pipe, tmp_path / "c.safetensors", targets=targets, seed=10)
    regions = (Region(prompt="a red cat", loras=[(str(lora), 0.9)]), Region(prompt="a dog"))
    plan = RegionPlan(rows=(Row(regions=regions),), base_prompt="pets", base_ratio=0.3)
    req = GenerationRequest(prompt="pets", plan=plan, steps=3, seed=1, width=48, height=32)
    eager = rpg.generate(req, output_type="latent").images[0]
    counter = CompileCounter()
    rpg.pipe.transformer.compile(backend=counter, fullgraph=True)
    counter.mark("s0")

    def on_step(pipe: Any, i: int, t: Any, kw: dict[str, Any]) -> dict:
        counter.mark(f"s{i + 1}")
        return {}

    try:
        got = rpg.generate(req, output_type="latent", callback_on_step_end=on_step).images[0]
    finally:
        torch._dynamo.reset()
    assert not graph_breaks()
    assert counter.graphs and set(counter.graphs) == {"s0"}
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
    assert _lora_free(rpg.pipe)
