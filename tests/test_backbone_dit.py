"""FLUX and SD3 backbones end to end on ``tiny-flux`` / ``tiny-sd3`` (80×144: 5×9 patches).

Stock equivalence (one full-canvas region, no base), the naive per-query reference through the
whole pipeline, packing, options, errors, PNG metadata and the CLI.
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

import rpg.backbones.dit as dit_module
from joint_helpers import NaiveJointProcessor
from rpg.attention.joint import JointRegions, joint_attention_names
from rpg.attention.joint import regional_joint as real_regional_joint
from rpg.cli import main
from rpg.errors import ConfigurationError, SplitRatioError
from rpg.layout import check_cell_sizes
from rpg.metadata import load_request, read_metadata
from rpg.models import GenerationRequest, RegionPlan
from rpg.orchestrator import RPG
from tiny_helpers import torch_threads, write_tiny_models

W, H = 80, 144
PROMPT = "A red cat on the left and a blue dog on the right"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def dit_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both tiny DiT models written once, where ``--model tiny-flux``/``tiny-sd3`` find them."""
    root = tmp_path_factory.mktemp("rpg-dit-cache")
    write_tiny_models(root, ("tiny-flux", "tiny-sd3"))
    return root


def _load(dit_cache: Path, name: str) -> RPG:
    pipe = RPG.from_pretrained(dit_cache / name, device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def flux(dit_cache: Path) -> RPG:
    return _load(dit_cache, "tiny-flux")


@pytest.fixture(scope="module")
def sd3(dit_cache: Path) -> RPG:
    return _load(dit_cache, "tiny-sd3")


def _stock(pipe: RPG, prompt: str, output_type: str, **call: Any) -> Any:
    generator = torch.Generator().manual_seed(3)
    out = pipe.pipe(prompt, height=H, width=W, num_inference_steps=2, generator=generator,
                    output_type=output_type, **call)  # fmt: skip
    return out.images[0]


def _request(prompt: str, plan: RegionPlan, **fields: Any) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, plan=plan, steps=2, seed=3, width=W, height=H,
                             **fields)  # fmt: skip


@pytest.mark.parametrize("cfg", [1.0, 4.0])
def test_one_full_region_equals_stock_flux(flux: RPG, cfg: float) -> None:
    plan = RegionPlan.single("a red cat")
    req = _request("a red cat", plan, negative_prompt="blurry", true_cfg_scale=cfg)
    call = {"negative_prompt": "blurry", "true_cfg_scale": cfg}  # the stock guidance default
    ours = flux.generate(req, output_type="latent").images[0]
    assert (ours - _stock(flux, "a red cat", "latent", **call)).abs().max().item() <= 1e-5
    pixels = np.asarray(flux.generate(req).images[0])
    assert np.array_equal(pixels, np.asarray(_stock(flux, "a red cat", "pil", **call)))


@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_one_full_region_equals_stock_sd3(sd3: RPG, cfg: float) -> None:
    plan = RegionPlan.single("a red cat")
    req = _request("a red cat", plan, negative_prompt="blurry", guidance_scale=cfg)
    call = {"negative_prompt": "blurry", "guidance_scale": cfg}
    ours = sd3.generate(req, output_type="latent").images[0]
    assert (ours - _stock(sd3, "a red cat", "latent", **call)).abs().max().item() <= 1e-5
    pixels = np.asarray(sd3.generate(req).images[0])
    assert np.array_equal(pixels, np.asarray(_stock(sd3, "a red cat", "pil", **call)))


def _random_plan(rng: random.Random, base: bool) -> RegionPlan:
    """A random plan in which every region covers at least one patch at W x H."""
    while True:
        plan = _any_plan(rng, base)
        try:
            check_cell_sizes(plan.split_rows(), H, W, factor=16)
        except SplitRatioError:
            continue
        return plan


def _any_plan(rng: random.Random, base: bool) -> RegionPlan:
    rows = rng.randint(1, 2)
    widths = [rng.randint(1, 3) for _ in range(rows)]
    if rows == 1:
        ratio = ",".join(str(rng.randint(1, 3)) for _ in range(widths[0]))
    else:
        ratio = ";".join(
            ",".join([str(rng.randint(1, 3))] + [str(rng.randint(1, 3)) for _ in range(n)])
            for n in widths
        )
    words = ["red cat", "blue dog", "green tree", "old house", "tall tower", "calm lake"]
    prompts = [f"a {rng.choice(words)}" for _ in range(sum(widths))]
    return RegionPlan.from_split_ratio(
        ratio, prompts, base_prompt="a sunny scene" if base else None,
        base_ratio=rng.choice([0.2, 0.5]) if base else 0.0,
    )  # fmt: skip


@contextmanager
def _naive_regional_joint(transformer: Any, regions: JointRegions, **kwargs: Any) -> Iterator[Any]:
    """regional_joint's hook and restore, with the naive reference as the processors."""
    flux = type(transformer).__name__.startswith("Flux")
    every = regions.options.regional_blocks
    with real_regional_joint(transformer, regions, **kwargs) as procs:
        names = joint_attention_names(transformer)
        current = dict(transformer.attn_processors)
        transformer.set_attn_processor({
            k: NaiveJointProcessor(regions, flux=flux, regional_block=names.index(k) % every < 1)
            if k in names else v
            for k, v in current.items()
        })  # fmt: skip
        yield procs


@pytest.mark.parametrize(
    ("seed", "scope", "base"),
    [(0, "global", True), (1, "region", False), (2, "region", True), (3, "global", False)],
)
def test_end_to_end_matches_naive_reference(
    flux: RPG, sd3: RPG, monkeypatch: pytest.MonkeyPatch, seed: int, scope: str, base: bool
) -> None:
    plan = _random_plan(random.Random(seed), base)
    for pipe, fields in ((flux, {"true_cfg_scale": 3.0}), (sd3, {"guidance_scale": 4.0})):
        req = _request("a sunny scene", plan, image_attention=scope, negative_prompt="dark",
                       regional_steps=0.5, **fields)  # fmt: skip
        ours = pipe.generate(req, output_type="latent").images[0]
        monkeypatch.setattr(dit_module, "regional_joint", _naive_regional_joint)
        naive = pipe.generate(req, output_type="latent").images[0]
        monkeypatch.undo()
        assert (ours - naive).abs().max().item() < 1e-4


def test_packing_keeps_stock_padding_for_base_and_real_length_for_regions(
    flux: RPG, sd3: RPG
) -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"], base_prompt="pets")
    for pipe, stock_length in ((flux, 512), (sd3, 77 + 256)):
        cond = pipe.backbone.encode(plan, guidance=False, prompt="pets")
        assert cond.base_span == (0, stock_length)
        lengths = [b - a for a, b in cond.region_spans]
        assert all(0 < n < 40 for n in lengths)
        assert cond.prompt_embeds.shape[1] == stock_length + sum(lengths)
        stock, pooled = pipe.backbone.encode_stock("pets")  # type: ignore[attr-defined]
        assert torch.equal(cond.prompt_embeds[:, :stock_length], stock)
        assert torch.equal(cond.pooled_prompt_embeds, pooled)  # type: ignore[arg-type]
    # SD3's CLIP part of a region equals the stock CLIP tokens (CLIP is causal).
    cond = sd3.backbone.encode(RegionPlan.from_split_ratio("1,1", ["a red cat", "a"]),
                               guidance=False)  # fmt: skip
    stock, _ = sd3.backbone.encode_stock("a red cat")  # type: ignore[attr-defined]
    n_clip = len(sd3.pipe.tokenizer("a red cat").input_ids)
    a, _ = cond.region_spans[0]
    assert torch.allclose(cond.prompt_embeds[:, a : a + n_clip], stock[:, :n_clip], atol=1e-6)


def test_no_base_packs_the_whole_prompt_only_when_needed(flux: RPG) -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"])
    backbone: Any = flux.backbone
    cond = backbone.encode(plan, guidance=False, prompt=PROMPT)
    assert cond.global_span is None
    longer = backbone.encode(plan, guidance=False, prompt=PROMPT, options={"regional_steps": 0.5})
    total = cond.prompt_embeds.shape[1]
    assert longer.global_span == (total, total + 512)
    assert torch.equal(longer.prompt_embeds[:, :total], cond.prompt_embeds)
    whole, _ = backbone.encode_stock(PROMPT)
    assert torch.equal(longer.prompt_embeds[:, total:], whole)


def test_options_change_the_image_and_processors_are_restored(flux: RPG) -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"], base_prompt="pets",
                                       base_ratio=0.3)  # fmt: skip
    transformer = flux.pipe.transformer
    before = dict(transformer.attn_processors)
    outs = [
        flux.generate(_request("pets", plan, **fields), output_type="latent").images[0]
        for fields in ({}, {"image_attention": "region"}, {"regional_steps": 0.5},
                       {"regional_blocks": 2})
    ]  # fmt: skip
    for other in outs[1:]:
        assert (outs[0] - other).abs().max().item() > 1e-6
    assert transformer.attn_processors == before

    def boom(*args: Any) -> Any:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        flux.generate(_request("pets", plan), callback_on_step_end=boom)
    assert transformer.attn_processors == before
    assert not transformer._forward_pre_hooks


def test_clear_errors(flux: RPG, sd3: RPG, tiny_rpg: Any) -> None:
    plan = RegionPlan.single("a cat")
    with pytest.raises(ConfigurationError, match="flow-matching"):
        flux.generate(_request("a cat", plan, scheduler="euler"))
    with pytest.raises(ConfigurationError, match="multiples of 16"):
        sd3.generate(GenerationRequest(prompt="a cat", plan=plan, steps=1, width=72, height=64))
    with pytest.raises(ConfigurationError, match="true_cfg_scale"):
        sd3.generate(_request("a cat", plan, true_cfg_scale=2.0))
    with pytest.raises(ConfigurationError, match="regional_blocks does not apply to 'sd'"):
        tiny_rpg.generate(GenerationRequest(prompt="a cat", plan=plan, steps=1,
                                            regional_blocks=2))  # fmt: skip


def test_detected_from_the_config(
    flux: RPG, sd3: RPG, dit_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rpg.backbones.flux import FluxBackbone
    from rpg.backbones.loading import resolve_model

    assert flux.backbone.name == "flux" and sd3.backbone.name == "sd3"
    assert flux.backbone.native_size == (1024, 1024)  # a FLUX folder: the pipeline's default
    assert sd3.backbone.native_size == (64, 64)  # SD3 reads it from the transformer config
    monkeypatch.setenv("RPG_CACHE_DIR", str(dit_cache))
    tiny = FluxBackbone(flux.pipe, info=resolve_model("tiny-flux"))
    assert tiny.native_size == (64, 64)


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3"])
def test_cli_generate_and_rerender_from_png(
    dit_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("RPG_CACHE_DIR", str(dit_cache))
    x, y = tmp_path / "x.png", tmp_path / "y.png"
    args = ["generate", PROMPT, "--model", name, "--seed", "2", "--steps", "2", "--size", "80x144"]
    options = ["--image-attention", "region", "--regional-steps", "0.5", "--regional-blocks", "2"]
    assert main([*args, *options, "--out", str(x)]) == 0
    data = read_metadata(x)
    assert data["request"]["model"] == name and data["request"]["scheduler"] == "default"
    assert data["request"]["options"] == {
        "image_attention": "region",
        "regional_steps": 0.5,
        "regional_blocks": 2,
    }
    assert len(data["plan"]["rows"][0]["regions"]) == 2
    assert main(["generate", "--from", str(x), "--out", str(y)]) == 0
    with Image.open(x) as a, Image.open(y) as b:
        assert a.size == (80, 144)
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert load_request(y) == load_request(x)
    assert main([*args, "--scheduler", "euler", "--out", str(tmp_path / "z.png")]) != 0


def test_guidance_defaults_to_the_stock_pipelines_own(flux: RPG, sd3: RPG) -> None:
    """A request without a guidance scale gets what the stock pipeline would use, recorded."""
    import inspect

    plan = RegionPlan.single("a red cat")
    for pipe in (flux, sd3):
        stock = inspect.signature(pipe.pipe.__call__).parameters["guidance_scale"].default
        result = pipe.generate(_request("a red cat", plan), output_type="latent")
        assert result.request.guidance_scale == stock == pipe.backbone.default_guidance
        explicit = pipe.generate(
            _request("a red cat", plan, guidance_scale=2.5), output_type="latent"
        )
        assert explicit.request.guidance_scale == 2.5
