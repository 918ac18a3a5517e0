"""FLUX.2 [klein]: its regional processors against the naive per-query reference, and the
``flux2-klein`` backbone end to end on ``tiny-flux2-klein`` (80×144: 5×9 patches).

Block level: one ``Flux2Transformer2DModel`` forward with rpg's processors (installed by
``regional_flux2``) and with the naive reference of ``joint_helpers`` on the same layers, double-
and single-stream blocks alike. Pipeline level: stock equivalence of one full-canvas region, the
naive reference through the whole klein pipeline with CFG, packing and text ids, the CLI.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import rpg.attention.joint_flux2 as joint_flux2
from joint_helpers import (
    FLUX2_TEXT_DIM,
    Case,
    naive_flux2_processors,
    random_case,
    tiny_flux2_transformer,
)
from rpg.attention.joint import JointAttentionOptions, JointRegions, joint_attention_names
from rpg.attention.joint_flux2 import (
    Flux2RegionalAttnProcessor,
    Flux2SingleRegionalAttnProcessor,
    packed_text_ids,
    regional_flux2,
)
from rpg.cli import main
from rpg.errors import ConfigurationError
from rpg.metadata import read_metadata
from rpg.models import GenerationRequest, RegionPlan
from rpg.orchestrator import RPG
from tiny_helpers import torch_threads

H, W = 80, 144  # 5 × 9 patches: odd on both axes
NAME = "tiny-flux2-klein"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


# ------------------------------------------------------------------------------ block level


@pytest.fixture(scope="module")
def model() -> Any:
    return tiny_flux2_transformer()


def _inputs(n_text: int, seed: int, batch: int = 1, *, condition: bool = False) -> dict[str, Any]:
    """One forward's inputs; ``condition``: the grid's condition tokens follow the noisy ones,
    with the ids ``Flux2KleinInpaintPipeline`` gives them (time coordinate 10)."""
    g = torch.Generator().manual_seed(seed)
    h, w = H // 16, W // 16
    img_ids = torch.zeros(h, w, 4)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None]
    img_ids = img_ids.reshape(-1, 4)
    if condition:
        img_ids = torch.cat([img_ids, img_ids + torch.tensor([10.0, 0, 0, 0])])
    txt_ids = torch.zeros(n_text, 4)
    txt_ids[:, 3] = torch.arange(n_text)  # the stock pipeline's numbering
    return {
        "hidden_states": torch.randn(batch, img_ids.shape[0], 16, generator=g),
        "encoder_hidden_states": torch.randn(batch, n_text, FLUX2_TEXT_DIM, generator=g),
        "timestep": torch.full((batch,), 0.7),
        "img_ids": img_ids,
        "txt_ids": txt_ids,
    }


def _regions(case: Case, scope: str, **kwargs: Any) -> JointRegions:
    return JointRegions(
        region_spans=case.spans, layout=case.layout, base_span=case.base_span,
        global_span=case.global_span, text_length=case.text_length,
        options=JointAttentionOptions(image_attention=scope),  # type: ignore[arg-type]
        **kwargs,
    )  # fmt: skip


def _naive(model: Any, regions: JointRegions, inputs: dict[str, Any]) -> torch.Tensor:
    """The naive reference with the text ids regional_flux2 gives: each prompt from 0."""
    previous = dict(model.attn_processors)
    spans = [s for s in (regions.base_span, regions.global_span) if s is not None]
    ids = packed_text_ids(inputs["txt_ids"].shape[0], [*spans, *regions.region_spans])
    model.set_attn_processor(naive_flux2_processors(model, regions))
    try:
        with torch.no_grad():
            out: torch.Tensor = model(**{**inputs, "txt_ids": ids.float()}).sample
    finally:
        model.set_attn_processor(previous)
    return out


CASES = [(seed, scope, base) for seed in range(3) for scope in ("global", "region")
         for base in (True, False)]  # fmt: skip


@pytest.mark.parametrize(("seed", "scope", "base"), CASES)
def test_processors_match_naive_reference(model: Any, seed: int, scope: str, base: bool) -> None:
    case = random_case(random.Random(200 + seed), H, W, base=base)
    inputs = _inputs(case.text_length, seed)
    naive = _naive(model, _regions(case, scope), inputs)
    other = torch.randn(1, case.text_length, FLUX2_TEXT_DIM)  # a negative that is not this call
    regions = _regions(case, scope)
    with regional_flux2(model, regions, negative_prompt_embeds=other), torch.no_grad():
        ours = model(**inputs).sample
    assert (ours - naive).abs().max().item() < 1e-5


@pytest.mark.parametrize(("seed", "scope", "base"), CASES)
def test_condition_tokens_match_naive_reference(
    model: Any, seed: int, scope: str, base: bool
) -> None:
    """klein inpainting's sequence ``[text | noisy | condition]``: the condition tokens are a
    second copy of the grid, each in its cell's region, as queries and as keys."""
    case = random_case(random.Random(300 + seed), H, W, base=base)
    inputs = _inputs(case.text_length, seed, condition=True)
    naive = _naive(model, _regions(case, scope, grid_copies=2), inputs)
    regions = _regions(case, scope, grid_copies=2)
    with regional_flux2(model, regions), torch.no_grad():
        ours = model(**inputs).sample
    assert (ours - naive).abs().max().item() < 1e-5
    # the condition tokens are keys: changing them changes the noisy tokens' output
    n = inputs["hidden_states"].shape[1] // 2
    other = inputs["hidden_states"].clone()
    other[:, n:] += 1
    with regional_flux2(model, _regions(case, scope, grid_copies=2)), torch.no_grad():
        moved = model(**{**inputs, "hidden_states": other}).sample
    assert (moved[:, :n] - ours[:, :n]).abs().max().item() > 1e-4


def test_region_index_copies_each_cell() -> None:
    """Two copies of a 2×3 grid with columns 1:2: each region's rows are its cells in the first
    copy, then the same cells in the second, with the same base weight."""
    from rpg.attention.regions import region_index
    from rpg.attention.spec import RegionalLayout

    layout = RegionalLayout(rows=((1.0, (1.0, 2.0)),), base_weights=(0.2, 0.5), height=32,
                            width=48, latent_factor=16)  # fmt: skip
    index = region_index(layout, 2, 3, copies=2)
    assert index.copies == 2 and index.bounds == ((0, 4), (4, 12))
    assert index.perm is not None and index.base_weights is not None
    assert index.perm.tolist() == [0, 3, 6, 9, 1, 2, 4, 5, 7, 8, 10, 11]
    assert index.base_weights.reshape(-1).tolist() == pytest.approx([0.2] * 4 + [0.5] * 8)
    with pytest.raises(ValueError, match="copies must be at least 1"):
        region_index(layout, 2, 3, copies=0)


def test_condition_tokens_need_grid_copies(model: Any) -> None:
    """A sequence with condition tokens and regions made for one grid is a clear error."""
    case = random_case(random.Random(5), H, W, base=True)
    inputs = _inputs(case.text_length, 5, condition=True)
    with (
        pytest.raises(ValueError, match="90 image tokens but a 144x80 image has 5x9 patches"),
        regional_flux2(model, _regions(case, "global")),
        torch.no_grad(),
    ):
        model(**inputs)


def test_negative_forward_is_stock_over_the_negative_prompt(model: Any) -> None:
    """klein's CFG: the second forward of a step (the pipeline runs the negative after the
    positive) attends stock, over the negative prompt's own tokens only (its padding to the
    packed length is never a key)."""
    case = random_case(random.Random(7), H, W, base=True)
    n_neg = 5
    inputs = _inputs(case.text_length, 7)
    negative = inputs["encoder_hidden_states"].clone()
    negative[:, n_neg:] = 0
    inputs["encoder_hidden_states"] = negative.clone()  # a copy, as the pipeline makes one
    regions = _regions(case, "global", negative_span=(0, n_neg))
    with regional_flux2(model, regions, negative_prompt_embeds=negative), torch.no_grad():
        model(**inputs)  # the positive forward of the step comes first
        assert regions.state.rows == "positive"
        ours = model(**inputs).sample
        assert regions.state.rows == "negative"
        model(**inputs)  # the next step's positive forward
        assert regions.state.rows == "positive"
    stock_inputs = {**inputs, "encoder_hidden_states": negative[:, :n_neg],
                    "txt_ids": inputs["txt_ids"][:n_neg]}  # fmt: skip
    with torch.no_grad():
        stock = model(**stock_inputs).sample
    assert (ours - stock).abs().max().item() < 1e-5


def test_fused_double_stream_projections_match_unfused(model: Any) -> None:
    case = random_case(random.Random(3), H, W, base=True)
    inputs = _inputs(case.text_length, 3)
    with regional_flux2(model, _regions(case, "region")), torch.no_grad():
        plain = model(**inputs).sample
    fused = tiny_flux2_transformer()
    fused.fuse_qkv_projections()
    assert fused.transformer_blocks[0].attn.fused_projections
    with regional_flux2(fused, _regions(case, "region")), torch.no_grad():
        ours = fused(**inputs).sample
    assert (ours - plain).abs().max().item() < 1e-5


def test_packed_text_ids_number_each_prompt_from_zero() -> None:
    ids = packed_text_ids(10, [(0, 3), (3, 5), (5, 8), (3, 5)])
    assert ids[:, 3].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 8, 9]
    assert not ids[:, :3].any()


def test_processors_restored_and_hooks_removed(model: Any) -> None:
    case = random_case(random.Random(1), H, W, base=True)
    before = dict(model.attn_processors)
    names = joint_attention_names(model)
    assert len(names) == 4  # two double-stream and two single-stream layers
    with regional_flux2(model, _regions(case, "global")):
        now = model.attn_processors
        kinds = [type(now[k]) for k in names]
        assert kinds == [Flux2RegionalAttnProcessor] * 2 + [Flux2SingleRegionalAttnProcessor] * 2
    assert model.attn_processors == before
    with pytest.raises(RuntimeError, match="boom"), regional_flux2(model, _regions(case, "global")):
        raise RuntimeError("boom")
    assert model.attn_processors == before
    assert not model._forward_pre_hooks


def test_regional_joint_alone_refuses_flux2_and_names_regional_flux2(model: Any) -> None:
    """FLUX.2 needs its own processors and text ids: regional_joint says where they are."""
    from rpg.attention.joint import regional_joint

    case = random_case(random.Random(2), H, W, base=False)
    before = dict(model.attn_processors)
    with (
        pytest.raises(TypeError, match="regional_flux2"),
        regional_joint(model, _regions(case, "global")),
    ):
        pass
    assert model.attn_processors == before


# ------------------------------------------------------------------------------ pipeline level


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny-flux2-klein`` written once, where ``--model tiny-flux2-klein`` finds it."""
    from rpg.backbones.tiny import tiny_model

    root = tmp_path_factory.mktemp("rpg-klein-cache")
    found = tiny_model(NAME)
    assert found is not None
    found.write(root / NAME)
    return root


@pytest.fixture(scope="module")
def klein(cache: Path) -> RPG:
    pipe = RPG.from_pretrained(cache / NAME, device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    return pipe


def _request(prompt: str, plan: RegionPlan, **fields: Any) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, plan=plan, steps=2, seed=3, width=W, height=H,
                             **fields)  # fmt: skip


def _stock(pipe: RPG, prompt: str, output_type: str, guidance_scale: float) -> Any:
    generator = torch.Generator().manual_seed(3)
    out = pipe.pipe(prompt=prompt, height=H, width=W, num_inference_steps=2, generator=generator,
                    guidance_scale=guidance_scale, output_type=output_type)  # fmt: skip
    return out.images[0]


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_one_full_region_equals_stock(klein: RPG, cfg: float) -> None:
    """klein's CFG negative is the empty prompt, rpg's default negative prompt."""
    req = _request("a red cat", RegionPlan.single("a red cat"), guidance_scale=cfg)
    ours = klein.generate(req, output_type="latent").images[0]
    assert (ours - _stock(klein, "a red cat", "latent", cfg)).abs().max().item() <= 1e-5
    pixels = np.asarray(klein.generate(req).images[0])
    assert np.array_equal(pixels, np.asarray(_stock(klein, "a red cat", "pil", cfg)))


@contextmanager
def _naive_regional_flux2(transformer: Any, regions: JointRegions, **kwargs: Any) -> Iterator[Any]:
    """regional_flux2's hooks (rows, text ids) and restore, with the naive reference installed."""
    with real_regional_flux2(transformer, regions, **kwargs) as procs:
        every = regions.options.regional_blocks
        transformer.set_attn_processor(naive_flux2_processors(transformer, regions, every))
        yield procs


real_regional_flux2 = joint_flux2.regional_flux2


@pytest.mark.parametrize(
    ("seed", "scope", "base", "fields"),
    [
        (0, "global", True, {}),
        (1, "region", False, {"regional_steps": 0.5}),
        (2, "region", True, {"regional_blocks": 2}),
    ],
)
def test_end_to_end_with_guidance_matches_naive_reference(
    klein: RPG, monkeypatch: pytest.MonkeyPatch, seed: int, scope: str, base: bool,
    fields: dict[str, Any],
) -> None:  # fmt: skip
    rng = random.Random(seed)
    words = ["a red cat", "a blue dog", "a green tree", "an old house"]
    plan = RegionPlan.from_split_ratio(
        "1,1,2", [rng.choice(words) for _ in range(3)],
        base_prompt="a sunny scene" if base else None, base_ratio=0.3 if base else 0.0,
    )  # fmt: skip
    req = _request("a sunny scene", plan, image_attention=scope, negative_prompt="dark",
                   guidance_scale=4.0, **fields)  # fmt: skip
    ours = klein.generate(req, output_type="latent").images[0]
    monkeypatch.setattr(joint_flux2, "regional_flux2", _naive_regional_flux2)
    naive = klein.generate(req, output_type="latent").images[0]
    monkeypatch.undo()
    assert (ours - naive).abs().max().item() < 1e-4
    stock = _stock(klein, "a sunny scene", "latent", 4.0)
    assert (ours - stock).abs().max().item() > 1e-4  # the regions do change the image


def test_packing_and_processors_restored(klein: RPG) -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"], base_prompt="pets",
                                       base_ratio=0.3)  # fmt: skip
    backbone: Any = klein.backbone
    cond = backbone.encode(plan, guidance=True, prompt="pets")
    assert cond.base_span == (0, 512) and cond.pooled_prompt_embeds is None
    lengths = [b - a for a, b in cond.region_spans]
    assert all(0 < n < 60 for n in lengths)
    stock, _ = backbone.encode_stock("pets")
    assert torch.equal(cond.prompt_embeds[:, :512], stock)
    # Qwen3 is causal: a region's real-length tokens equal the padded stock encoding's.
    a, b = cond.region_spans[0]
    cat, _ = backbone.encode_stock("a red cat")
    assert torch.allclose(cond.prompt_embeds[:, a:b], cat[:, : b - a], atol=1e-5)
    assert cond.negative_span == (0, 512)
    assert cond.negative_prompt_embeds is not None
    assert cond.negative_prompt_embeds.shape == cond.prompt_embeds.shape

    transformer = klein.pipe.transformer
    before = dict(transformer.attn_processors)

    def boom(*args: Any) -> Any:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        klein.generate(_request("pets", plan, guidance_scale=4.0), callback_on_step_end=boom)
    assert transformer.attn_processors == before
    assert not transformer._forward_pre_hooks


def test_detection_guidance_and_errors(
    klein: RPG, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rpg.backbones.flux2 import Flux2KleinBackbone
    from rpg.backbones.loading import ModelInfo, resolve_model

    assert klein.backbone.name == "flux2-klein"
    assert klein.backbone.native_size == (1024, 1024)  # a klein folder: the pipeline's default
    monkeypatch.setenv("RPG_CACHE_DIR", str(cache))
    info = resolve_model(NAME)
    assert Flux2KleinBackbone.detect(info)
    assert Flux2KleinBackbone(klein.pipe, info=info).native_size == (64, 64)
    backbone: Any = klein.backbone
    assert backbone.uses_guidance(4.0) and not backbone.uses_guidance(1.0)
    klein.pipe.register_to_config(is_distilled=True)
    try:
        assert not backbone.uses_guidance(4.0)  # step-distilled klein ignores guidance
    finally:
        klein.pipe.register_to_config(is_distilled=False)
    plan = RegionPlan.single("a cat")
    with pytest.raises(ConfigurationError, match="true_cfg_scale"):
        klein.generate(_request("a cat", plan, true_cfg_scale=2.0))
    with pytest.raises(ConfigurationError, match="reference images"):
        klein.generate(_request("a cat", plan), image=Image.new("RGB", (64, 64)))
    single = ModelInfo(reference="klein.safetensors", kind="file", path=cache / "x.safetensors")
    with pytest.raises(ConfigurationError, match="single file"):
        Flux2KleinBackbone.load_pipeline(single, dtype=torch.float32)


def test_cli_generate(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RPG_CACHE_DIR", str(cache))
    out = tmp_path / "x.png"
    args = ["generate", "A red cat on the left and a blue dog on the right", "--model", NAME,
            "--seed", "2", "--steps", "2", "--guidance", "3", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    data = read_metadata(out)
    assert data["request"]["model"] == NAME and data["request"]["scheduler"] == "default"
    assert len(data["plan"]["rows"][0]["regions"]) == 2
    with Image.open(out) as image:
        assert image.size == (64, 64)
