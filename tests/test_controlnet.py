"""ControlNet backbones on tiny models: stock equivalence, the regional ControlNet choice,
processor restore, control-image checks, detection, and the canny helper."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel
from PIL import Image, ImageDraw

from rpg.attention import RegionalAttnProcessor, region_labels
from rpg.backbones.controlnet import (
    StableDiffusionControlNetBackbone,
    StableDiffusionXLControlNetBackbone,
    controlnet_backbone_for,
    load_controlnet,
)
from rpg.backbones.loading import resolve_model
from rpg.backbones.schedulers import make_scheduler
from rpg.backbones.sd import StableDiffusionBackbone
from rpg.backbones.sdxl import StableDiffusionXLBackbone
from rpg.backbones.tiny.controlnet import write_tiny_controlnet
from rpg.backbones.tiny.sdxl import write_tiny_sdxl
from rpg.canny import canny_edges
from rpg.cli import main
from rpg.errors import ConfigurationError, ModelNotFoundError
from rpg.metadata import load_request
from rpg.models import GenerationRequest, RegionPlan
from rpg.orchestrator import RPG

PROMPT = "a red cat sitting on a blue mat"


@pytest.fixture(scope="session")
def xl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rpg-cn")
    write_tiny_sdxl(root / "sdxl")
    write_tiny_controlnet(root / "cn-sd", sdxl=False, seed=0)
    write_tiny_controlnet(root / "cn-sd-2", sdxl=False, seed=1)
    write_tiny_controlnet(root / "cn-sdxl", sdxl=True, seed=0)
    return root


@pytest.fixture(scope="session")
def control_image() -> Image.Image:
    image = Image.new("RGB", (64, 64))
    ImageDraw.Draw(image).rectangle((12, 20, 50, 44), outline=(255, 255, 255), width=2)
    return image


def _load(model: Path, controlnet: Any) -> RPG:
    rpg = RPG.from_pretrained(model, device="cpu", dtype="float32", controlnet=controlnet)
    rpg.pipe.set_progress_bar_config(disable=True)
    return rpg


@pytest.fixture(scope="session")
def sd_cn(tiny_sd_path: Path, xl_dir: Path) -> RPG:
    return _load(tiny_sd_path, xl_dir / "cn-sd")


@pytest.fixture(scope="session")
def sdxl_cn(xl_dir: Path) -> RPG:
    return _load(xl_dir / "sdxl", xl_dir / "cn-sdxl")


def _request(**kw: Any) -> GenerationRequest:
    fields: dict[str, Any] = {"prompt": PROMPT, "plan": RegionPlan.single(PROMPT), "steps": 3}
    fields.update({"seed": 5, "scheduler": "euler", **kw})
    return GenerationRequest(**fields)


def _stock(rpg: RPG, **call: Any) -> np.ndarray:
    components = dict(rpg.pipe.components)
    components["scheduler"] = make_scheduler("euler", rpg.backbone.scheduler_config)
    stock = type(rpg.pipe)(**components)
    stock.set_progress_bar_config(disable=True)
    images: np.ndarray = stock(
        PROMPT,
        output_type="np",
        height=64,
        width=64,
        num_inference_steps=3,
        generator=torch.Generator().manual_seed(5),
        **call,
    ).images
    return images


@pytest.mark.parametrize(
    ("which", "guidance", "guess_mode"),
    [("sd", 6.0, False), ("sd", 6.0, True), ("sdxl", 6.0, False), ("sdxl", 0.0, False)],
)
def test_one_full_canvas_region_equals_the_stock_pipeline(
    request: pytest.FixtureRequest,
    control_image: Image.Image,
    which: str,
    guidance: float,
    guess_mode: bool,
) -> None:
    rpg: RPG = request.getfixturevalue(f"{which}_cn")
    control = {"image": control_image, "controlnet_conditioning_scale": 0.7}
    ours = rpg.generate(
        _request(guidance_scale=guidance), output_type="np", guess_mode=guess_mode, **control
    ).images[0]
    stock = _stock(rpg, guidance_scale=guidance, guess_mode=guess_mode, **control)[0]
    assert stock.std() > 0.01
    assert np.abs(ours - stock).max() <= 1e-4


def test_the_control_image_is_used(sd_cn: RPG, control_image: Image.Image) -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"])
    images = [
        sd_cn.generate(
            _request(plan=plan, steps=2),
            output_type="np",
            image=control_image,
            controlnet_conditioning_scale=scale,
        ).images[0]
        for scale in (0.0, 1.0)
    ]
    assert np.abs(images[0] - images[1]).max() > 1e-3


def test_several_controlnets_equal_the_stock_multi_controlnet(
    tiny_sd_path: Path, xl_dir: Path, control_image: Image.Image
) -> None:
    rpg = _load(tiny_sd_path, [xl_dir / "cn-sd", xl_dir / "cn-sd-2"])
    assert len(rpg.backbone.controlnets) == 2
    other = control_image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    control = {"image": [control_image, other], "controlnet_conditioning_scale": [0.5, 1.0]}
    ours = rpg.generate(_request(guidance_scale=5.0), output_type="np", **control).images[0]
    stock = _stock(rpg, guidance_scale=5.0, **control)[0]
    assert np.abs(ours - stock).max() <= 1e-4


def test_controlnet_cross_attention_is_regional(sd_cn: RPG, control_image: Image.Image) -> None:
    """The choice: ControlNet's cross-attention reads each region's own prompt.

    At the first denoising step, the ControlNet's first cross-attention sees inputs that do not
    depend on the text, so with no base prompt its output over the left region must not change
    when only the right region's prompt does (it would if the ControlNet attended to the base
    or the whole prompt), and it must change over the right region.
    """
    layer = sd_cn.pipe.controlnet.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda mod, args, out: captured.append(out.detach()))
    try:
        outputs = []
        for right in ("a blue dog", "a green frog"):
            captured.clear()
            plan = RegionPlan.from_split_ratio("1,1", ["a red cat", right])
            sd_cn.generate(_request(plan=plan, steps=1, guidance_scale=5.0), image=control_image)
            outputs.append(captured[0][1])  # the conditional half of the first call
    finally:
        handle.remove()
    layout = sd_cn.backbone.layout(RegionPlan.from_split_ratio("1,1", ["a", "b"]), 64, 64)
    left = region_labels(layout, 8, 8).reshape(-1) == 0
    assert torch.equal(outputs[0][left], outputs[1][left])
    assert not torch.allclose(outputs[0][~left], outputs[1][~left])


def _processors(rpg: RPG) -> list[dict[str, Any]]:
    return [dict(m.attn_processors) for m in (rpg.pipe.unet, *rpg.backbone.controlnets)]


def test_processors_are_used_and_restored(sd_cn: RPG, control_image: Image.Image) -> None:
    before = _processors(sd_cn)
    seen: list[int] = []

    def count(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        seen.append(
            sum(
                isinstance(p, RegionalAttnProcessor)
                for p in pipe.controlnet.attn_processors.values()
            )
        )
        return kwargs

    plan = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"], base_prompt="pets")
    sd_cn.generate(_request(plan=plan, steps=2), image=control_image, callback_on_step_end=count)
    assert seen and all(n > 0 for n in seen)

    def explode(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    for guess_mode in (False, True):
        with pytest.raises(RuntimeError, match="boom"):
            sd_cn.generate(
                _request(plan=plan, steps=2),
                image=control_image,
                guess_mode=guess_mode,
                callback_on_step_end=explode,
            )
    after = _processors(sd_cn)
    for old, new in zip(before, after, strict=True):
        assert all(new[k] is old[k] for k in old)


@pytest.mark.parametrize("guess_mode", [False, True])
def test_region_isolation_reaches_the_controlnet_and_is_undone(
    sd_cn: RPG, control_image: Image.Image, guess_mode: bool
) -> None:
    """The UNet and the ControlNet both get the isolation options, also in guess mode, where
    they see different batches and get one installation each."""
    from rpg.attention.region_isolation import RegionGroupNorm, RegionSelfAttnProcessor

    before = _processors(sd_cn)
    seen: list[tuple[bool, bool]] = []

    def look(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        for model in (pipe.unet, pipe.controlnet):
            selfs = [p for k, p in model.attn_processors.items() if ".attn1." in k]
            norms = any(isinstance(m, RegionGroupNorm) for m in model.modules())
            seen.append((all(isinstance(p, RegionSelfAttnProcessor) for p in selfs), norms))
        return {}

    plan = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"])
    isolated = {"image_attention": "region", "group_norm": "region"}
    request = _request(plan=plan, steps=2, options=isolated)
    out = sd_cn.generate(
        request, image=control_image, guess_mode=guess_mode, callback_on_step_end=look,
        output_type="np",
    ).images[0]  # fmt: skip
    plain = sd_cn.generate(
        _request(plan=plan, steps=2), image=control_image, guess_mode=guess_mode, output_type="np"
    ).images[0]
    assert seen == [(True, True)] * 4
    assert not np.allclose(out, plain, atol=1e-4)
    assert not any(isinstance(m, RegionGroupNorm) for m in sd_cn.pipe.controlnet.modules())
    for old, new in zip(before, _processors(sd_cn), strict=True):
        assert all(new[k] is old[k] for k in old)


@pytest.mark.parametrize(
    ("control", "message"),
    [
        ({}, "pass one control image"),
        ({"image": []}, "got 0 control images for 1 ControlNet"),
        ({"image": ["A", "B"]}, "got 2 control images for 1 ControlNet"),
        ({"image": Image.new("RGB", (64, 32))}, "aspect ratios differ"),
        ({"controlnet_conditioning_scale": [1.0, 2.0]}, "2 control scales for 1 ControlNets"),
        ({"controlnet_conditioning_scale": -1.0}, "non-negative"),
        ({"image": "/no/such/edges.png"}, "control image not found"),
    ],
)
def test_bad_control_input_is_a_clear_error(
    sd_cn: RPG, control_image: Image.Image, control: dict[str, Any], message: str
) -> None:
    kwargs = {"image": control_image, **control}
    if not control:
        kwargs = {}
    with pytest.raises(ConfigurationError, match=message):
        sd_cn.generate(_request(steps=1), **kwargs)


def test_control_image_of_another_size_but_same_shape_is_resized(
    sd_cn: RPG, control_image: Image.Image, tmp_path: Path
) -> None:
    big = control_image.resize((128, 128))
    path = tmp_path / "edges.png"
    big.save(path)
    result = sd_cn.generate(_request(steps=1), image=str(path))
    assert result.images[0].size == (64, 64)


def test_controlnet_for_another_architecture_is_refused(tiny_sd_path: Path, xl_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="another architecture"):
        _load(tiny_sd_path, xl_dir / "cn-sdxl")


def test_missing_controlnet_is_explained(tiny_sd_path: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="no such file or folder"):
        load_controlnet(tmp_path / "nope")
    with pytest.raises(ConfigurationError, match="needs ControlNet models"):
        StableDiffusionControlNetBackbone.load(tiny_sd_path, device="cpu")


def test_controlnet_flavour_of_each_backbone() -> None:
    assert controlnet_backbone_for(StableDiffusionBackbone) is StableDiffusionControlNetBackbone
    assert controlnet_backbone_for(StableDiffusionXLBackbone) is StableDiffusionXLControlNetBackbone


def test_saved_controlnet_pipeline_folder_is_detected(
    sd_cn: RPG, tmp_path: Path, control_image: Image.Image
) -> None:
    sd_cn.pipe.save_pretrained(tmp_path / "sd-cn")
    info = resolve_model(tmp_path / "sd-cn")
    assert StableDiffusionControlNetBackbone.detect(info)
    assert not StableDiffusionBackbone.detect(info)
    rpg = RPG.from_pretrained(tmp_path / "sd-cn", device="cpu", dtype="float32")
    assert isinstance(rpg.backbone, StableDiffusionControlNetBackbone)
    rpg.pipe.set_progress_bar_config(disable=True)
    a = rpg.generate(_request(steps=2), output_type="np", image=control_image).images[0]
    b = sd_cn.generate(_request(steps=2), output_type="np", image=control_image).images[0]
    assert np.array_equal(a, b)


def test_tiny_controlnet_matches_the_tiny_unets(tiny_sd_path: Path, xl_dir: Path) -> None:
    for folder, unet_folder in [("cn-sd", tiny_sd_path), ("cn-sdxl", xl_dir / "sdxl")]:
        net = ControlNetModel.from_pretrained(xl_dir / folder)
        unet_config = ControlNetModel.load_config(unet_folder / "unet")
        for key in ("block_out_channels", "cross_attention_dim", "down_block_types"):
            assert list(np.atleast_1d(net.config[key])) == list(np.atleast_1d(unet_config[key]))
        # the zero convolutions of a fresh ControlNet are randomised, so it has an effect
        assert net.controlnet_mid_block.weight.abs().sum() > 0


# ----------------------------------------------------------------------------- canny


def test_canny_finds_the_edges_of_a_drawn_rectangle() -> None:
    image = Image.new("RGB", (80, 60), (0, 0, 0))
    ImageDraw.Draw(image).rectangle((20, 15, 59, 44), fill=(200, 200, 200))
    edges = canny_edges(image, 100, 200)
    assert edges.mode == "RGB" and edges.size == (80, 60)
    mask = np.asarray(edges)[..., 0] > 0
    assert set(np.unique(np.asarray(edges))) <= {0, 255}
    ys, xs = np.nonzero(mask)
    # every edge pixel lies within a pixel of the rectangle's outline...
    near_x = (np.abs(xs - 19.5) <= 1.5) | (np.abs(xs - 59.5) <= 1.5)
    near_y = (np.abs(ys - 14.5) <= 1.5) | (np.abs(ys - 44.5) <= 1.5)
    assert np.all(near_x | near_y)
    # ...and every side is found along its whole length (one-pixel-thin lines)
    assert mask[20:40, 18:22].any(axis=1).all() and mask[20:40, 58:62].any(axis=1).all()
    assert mask[13:17, 25:55].any(axis=0).all() and mask[43:47, 25:55].any(axis=0).all()
    assert mask[20:40, 18:22].sum(axis=1).max() <= 2
    assert not mask[20:40, 25:55].any()  # nothing inside


def test_canny_thresholds_decide_what_counts() -> None:
    image = Image.new("L", (40, 40), 0)
    ImageDraw.Draw(image).rectangle((10, 10, 29, 29), fill=40)  # a faint square
    faint = np.asarray(canny_edges(image, 50, 100))
    assert faint.any()
    assert not np.asarray(canny_edges(image, 300, 400)).any()
    assert not np.asarray(canny_edges(Image.new("RGB", (16, 16), (90, 90, 90)))).any()
    with pytest.raises(ConfigurationError, match="low <= high"):
        canny_edges(image, 200, 100)


def test_canny_accepts_arrays() -> None:
    array = np.zeros((32, 32, 3), dtype=np.uint8)
    array[8:24, 8:24] = 255
    edges = canny_edges(array)
    assert edges.size == (32, 32) and np.asarray(edges).any()


# ----------------------------------------------------------------------------- CLI


def test_cli_renders_tiny_sdxl_with_a_controlnet_and_auto_detects(
    rpg_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edges = tmp_path / "edges.png"
    source = Image.new("RGB", (64, 96))
    ImageDraw.Draw(source).ellipse((8, 8, 56, 88), fill=(255, 255, 255))
    canny_edges(source).save(edges)
    out = tmp_path / "xl.png"
    args = ["generate", PROMPT, "--model", "tiny-sdxl", "--steps", "2", "--seed", "1"]
    control = ["--controlnet", "tiny-sdxl-controlnet", "--control-image", str(edges)]
    assert main([*args, *control, "--control-scale", "0.8", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "random weights" in captured.err
    with Image.open(out) as img:
        assert img.size == (64, 96)  # no --size: the control image's size
    request = load_request(out)
    assert request.model == "tiny-sdxl" and request.plan is not None
    plain = tmp_path / "plain.png"
    assert main([*args, "--size", "64x96", "--out", str(plain)]) == 0
    with Image.open(out) as a, Image.open(plain) as b:
        assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_cli_several_controlnets_and_clear_errors(
    rpg_cache: Path, tmp_path: Path, control_image: Image.Image, capsys: pytest.CaptureFixture[str]
) -> None:
    edges = tmp_path / "edges.png"
    control_image.save(edges)
    base = ["generate", PROMPT, "--model", "tiny-sd", "--steps", "1", "--seed", "1"]
    two = ["--controlnet", "tiny-controlnet", "--controlnet", "tiny-controlnet"]
    images = ["--control-image", str(edges), "--control-image", str(edges)]
    scales = ["--control-scale", "0.5", "--control-scale", "1.0"]
    assert main([*base, *two, *images, *scales, "--out", str(tmp_path / "two.png")]) == 0

    # usage errors, found before any model loads (exit 2)
    assert main([*base, *two, "--control-image", str(edges), "--out", str(tmp_path / "x.png")]) == 2
    assert "--control-image given once for 2 ControlNets" in capsys.readouterr().err
    assert main([*base, "--control-image", str(edges), "--out", str(tmp_path / "y.png")]) == 2
    assert "--control-image needs --controlnet" in capsys.readouterr().err
