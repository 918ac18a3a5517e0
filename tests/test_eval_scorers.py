"""Scorers for ``rpg eval``: the plugin hook, the shapes scorer and CLIP scores (tiny CLIP)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

import rpg
from rpg import plugins
from rpg.errors import ConfigurationError, ModelNotFoundError, RegistryError
from rpg.eval.prompts import EvalPrompt
from rpg.eval.scorers import ClipScorer, RegionClipScorer, ShapesScorer
from rpg.eval.shapes import Scene, ShapeObject, render
from rpg.eval.shapes_score import read_image
from rpg.models import RegionPlan


@pytest.fixture
def fresh_registry() -> Iterator[None]:
    plugins.reset()
    yield
    plugins.reset()


def test_builtin_scorers_are_registered_through_the_hook(fresh_registry: None) -> None:
    registry = plugins.scorer_registry()
    assert {"shapes", "clip", "region-clip"} <= set(registry.names())
    assert registry.get("shapes").builtin
    assert isinstance(registry.get("shapes").target(), ShapesScorer)


def test_a_plugin_registers_a_scorer_and_duplicates_are_errors(fresh_registry: None) -> None:
    class Brightness:
        name = "brightness"

        def score(self, image, item, plan):  # type: ignore[no-untyped-def]
            return {"brightness": min(image.convert("L").getextrema()) / 255}

    class Plugin:
        @rpg.hookimpl
        def rpg_register_scorers(self, registry):  # type: ignore[no-untyped-def]
            registry.register("brightness", Brightness, description="mean brightness")

    plugins.get_plugin_manager().register(Plugin(), name="bright-plugin")
    entry = plugins.scorer_registry().get("brightness")
    assert entry.plugin == "bright-plugin" and not entry.builtin
    white = Image.new("RGB", (64, 64), "white")
    assert entry.target().score(white, EvalPrompt(prompt="x"), None) == {"brightness": 1.0}

    class Clash:
        @rpg.hookimpl
        def rpg_register_scorers(self, registry):  # type: ignore[no-untyped-def]
            registry.register("shapes", Brightness)

    plugins.reset()
    plugins.get_plugin_manager().register(Clash(), name="clash")
    with pytest.raises(RegistryError, match="scorer 'shapes' is registered twice"):
        plugins.scorer_registry()


def test_shapes_scorer_binding_and_placement() -> None:
    scene = Scene(
        objects=(
            ShapeObject(shape="circle", colour="red", size="large", x=0.25, y=0.5),
            ShapeObject(shape="square", colour="blue", size="large", x=0.75, y=0.5),
        )
    )
    plan = RegionPlan.from_split_ratio("1,1", ["a red circle", "a blue square"])
    swapped = RegionPlan.from_split_ratio("1,1", ["a blue square", "a red circle"])
    scorer = ShapesScorer()
    right = EvalPrompt(prompt="p", objects=("red circle", "blue square"), plan=plan)
    wrong = EvalPrompt(prompt="p", objects=("blue square", "red circle"), plan=swapped)
    missing = EvalPrompt(prompt="p", objects=("red circle", "green star"), plan=plan)
    image = render(scene)
    assert scorer.score(image, right, None) == {
        "binding": 1.0,
        "placement": 1.0,
        "correct": 1.0,
        "extra_objects": 0.0,
        "precision": 1.0,
    }
    assert scorer.score(image, wrong, None)["placement"] == 0.0
    assert scorer.score(image, missing, None)["binding"] == 0.5
    assert scorer.score(image, EvalPrompt(prompt="a cat"), None) == {}
    with pytest.raises(ConfigurationError, match="takes only the option scale"):
        ShapesScorer(model="x")
    for bad in ("0", "-1", "wide"):
        with pytest.raises(ConfigurationError, match="scale must be a positive number"):
            ShapesScorer(scale=bad)


def test_precision_counts_strays_that_placement_cannot_see() -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a red circle", "a blue square"])
    item = EvalPrompt(prompt="p", objects=("red circle", "blue square"), plan=plan)
    objects = [
        ShapeObject(shape="circle", colour="red", size="large", x=0.25, y=0.3),
        ShapeObject(shape="square", colour="blue", size="large", x=0.75, y=0.3),
    ]
    scorer = ShapesScorer()
    # a second red circle in its own half is still right; one in the wrong half and a stray
    # green star are not, and placement stays 1 all along
    copy = ShapeObject(shape="circle", colour="red", size="small", x=0.25, y=0.8)
    wrong_half = ShapeObject(shape="circle", colour="red", size="small", x=0.75, y=0.8)
    stray = ShapeObject(shape="star", colour="green", size="small", x=0.25, y=0.8)
    for extra, precision in ((copy, 1.0), (wrong_half, 2 / 3), (stray, 2 / 3)):
        scores = scorer.score(render(Scene(objects=(*objects, extra))), item, None)
        assert scores["placement"] == 1.0
        assert scores["precision"] == pytest.approx(precision)
    blank = Image.new("RGB", (64, 64), (255, 255, 255))
    assert "precision" not in scorer.score(blank, item, None)  # nothing found: undefined


def test_the_shapes_scorer_reads_a_wide_canvas_at_the_worlds_scale() -> None:
    left = render(
        Scene(objects=(ShapeObject(shape="circle", colour="red", size="large", x=0.5, y=0.5),))
    )
    right = render(
        Scene(objects=(ShapeObject(shape="star", colour="blue", size="large", x=0.5, y=0.5),))
    )
    wide = Image.new("RGB", (128, 64))
    wide.paste(left, (0, 0))
    wide.paste(right, (64, 0))
    plan = RegionPlan.from_split_ratio("1,1", ["a red circle", "a blue star"])
    item = EvalPrompt(prompt="p", objects=("red circle", "blue star"), plan=plan)
    expected = {"binding": 1.0, "placement": 1.0, "correct": 1.0, "precision": 1.0}
    # 128×64: the shorter side is the world's 64 pixels, read as drawn
    assert ShapesScorer().score(wide, item, None).items() >= expected.items()
    # twice as large, scale 2: the same reading
    doubled = wide.resize((256, 128), Image.Resampling.NEAREST)
    assert ShapesScorer(scale="2").score(doubled, item, None).items() >= expected.items()


def test_a_two_by_two_canvas_of_native_regions_needs_scale_1() -> None:
    quad = Image.new("RGB", (128, 128), (255, 255, 255))
    large = ShapeObject(shape="square", colour="green", size="large", x=0.5, y=0.5)
    quad.paste(render(Scene(objects=(large,))), (64, 64))
    at_scale_1 = read_image(quad, 1.0).objects
    assert [(d.name, d.size) for d in at_scale_1] == [("green square", "large")]
    assert (at_scale_1[0].x, at_scale_1[0].y) == pytest.approx((0.75, 0.75), abs=0.02)
    # the default reads the 128×128 canvas as a 64×64 world: the square comes out smaller
    assert [d.size for d in read_image(quad).objects] != ["large"]
    with pytest.raises(ValueError, match="scale must be positive"):
        read_image(quad, 0)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight CLIP model with its processor, written the way a hub snapshot is."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    from rpg.backbones.tiny.components import byte_level_tokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ).to_dict(),
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ).to_dict(),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(folder)
    return folder


def test_clip_scores_with_a_local_clip_model(tiny_clip: Path) -> None:
    scene = Scene(objects=(ShapeObject(shape="circle", colour="red", size="large", x=0.5, y=0.5),))
    image = render(scene)
    item = EvalPrompt(prompt="a red circle", plan=RegionPlan.single("a red circle"))
    clip = ClipScorer(model=tiny_clip)
    first = clip.score(image, item, None)["clip"]
    assert 0.0 <= first <= 100.0
    assert clip.score(image, item, None)["clip"] == first  # deterministic
    other = clip.score(image, EvalPrompt(prompt="a zebra on a sofa"), None)["clip"]
    assert other != first  # the text matters

    region = RegionClipScorer(model=tiny_clip)
    plan = RegionPlan.from_split_ratio("1,1", ["a red circle", "a blue square"])
    both = region.score(image, item, plan)["region_clip"]
    left, right = region.similarity(
        [image.crop((0, 0, 32, 64)), image.crop((32, 0, 64, 64))], ["a red circle", "a blue square"]
    )
    assert both == pytest.approx((left + right) / 2)
    # the stock pipeline has no plan: the item's exact plan gives the regions
    assert region.score(image, item, None)["region_clip"] == pytest.approx(
        region.similarity([image], ["a red circle"])[0]
    )
    assert region.score(image, EvalPrompt(prompt="x"), None) == {}


def test_a_missing_clip_model_says_how_to_give_one(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="--scorer-option model="):
        ClipScorer(model=str(tmp_path / "nope"))
