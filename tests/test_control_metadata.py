"""ControlNet settings in the request and the PNG: recorded, embedded, and re-rendered by --from."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, PngImagePlugin

from rpg import ControlInput
from rpg.backbones.tiny.controlnet import write_tiny_controlnet
from rpg.cli import main
from rpg.edit import edit
from rpg.errors import ConfigurationError
from rpg.metadata import (
    PNG_KEY,
    MetadataError,
    image_sha256,
    load_request,
    read_control_images,
    read_metadata,
    save_png,
)
from rpg.models import GenerationRequest, RegionPlan
from rpg.orchestrator import RPG
from rpg.planners.openai import OpenAIPlanner
from rpg.planners.transport import RetryPolicy
from servers import OpenAIServer

PROMPT = "a red cat on the left and a blue dog on the right"
PLAN = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"])


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def edges(other: bool = False) -> Image.Image:
    """A rectangle outline, or (``other``) a very different control image: a filled disc."""
    image = Image.new("RGB", (64, 64))
    if other:
        ImageDraw.Draw(image).ellipse((4, 4, 60, 60), fill=(255, 255, 255))
    else:
        ImageDraw.Draw(image).rectangle((12, 20, 50, 44), outline=(255, 255, 255), width=2)
    return image


def request(**kw: Any) -> GenerationRequest:
    fields: dict[str, Any] = {"prompt": PROMPT, "plan": PLAN, "seed": 5, "steps": 2}
    return GenerationRequest(**{**fields, "width": 64, "height": 64, **kw})


@pytest.fixture(scope="module")
def cn_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_controlnet(tmp_path_factory.mktemp("cn") / "cn-sd", sdxl=False, seed=0)


@pytest.fixture(scope="module")
def cn_rpg(tiny_sd_path: Path, cn_folder: Path) -> RPG:
    rpg = RPG.from_pretrained(tiny_sd_path, device="cpu", dtype="float32", controlnet=cn_folder)
    rpg.pipe.set_progress_bar_config(disable=True)
    return rpg


# ----------------------------------------------------------------------------- command line

GENERATE = ["generate", PROMPT, "--model", "tiny-sd", "--planner", "rules", "--steps", "2"]


def test_from_rerenders_a_controlnet_image_after_the_control_file_is_gone(
    rpg_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edge_file = tmp_path / "edges.png"
    edges().save(edge_file)
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    control = ["--controlnet", "tiny-controlnet", "--control-image", str(edge_file)]
    scale = ["--control-scale", "0.7"]
    assert main([*GENERATE, "--seed", "3", *control, *scale, "--out", str(first)]) == 0
    assert "ControlNet tiny-controlnet ×0.7" in capsys.readouterr().out

    recorded = load_request(first).controls
    assert recorded == (
        ControlInput(
            controlnet="tiny-controlnet",
            image=str(edge_file),
            scale=0.7,
            sha256=image_sha256(edges()),
        ),
    )
    (embedded,) = read_control_images(first)
    assert embedded is not None and np.array_equal(np.asarray(embedded), np.asarray(edges()))

    edge_file.unlink()
    assert main(["generate", "--from", str(first), "--out", str(again)]) == 0
    assert np.array_equal(pixels(first), pixels(again))
    assert load_request(again) == load_request(first)  # path kept: same pixels as recorded
    assert read_control_images(again)[0] is not None  # the re-render embeds it too

    # the same seed, size and plan without control differs, so the control was applied
    plain = tmp_path / "plain.png"
    assert main([*GENERATE, "--seed", "3", "--size", "64x64", "--out", str(plain)]) == 0
    assert load_request(plain).controls == ()
    assert not np.array_equal(pixels(first), pixels(plain))


def test_from_with_control_scale_changes_the_pixels_and_records_the_scale(
    rpg_cache: Path, tmp_path: Path
) -> None:
    edge_file = tmp_path / "edges.png"
    edges().save(edge_file)
    first, half = tmp_path / "first.png", tmp_path / "half.png"
    control = ["--controlnet", "tiny-controlnet", "--control-image", str(edge_file)]
    assert main([*GENERATE, "--seed", "4", *control, "--out", str(first)]) == 0
    assert load_request(first).controls[0].scale == 1.0
    edge_file.unlink()

    argv = ["generate", "--from", str(first), "--control-scale", "0.5"]
    assert main([*argv, "--out", str(half)]) == 0
    (control_input,) = load_request(half).controls
    assert control_input.scale == 0.5
    assert control_input.sha256 == load_request(first).controls[0].sha256
    assert not np.array_equal(pixels(first), pixels(half))


def test_from_with_control_image_replaces_the_image_and_its_hash(
    rpg_cache: Path, tmp_path: Path
) -> None:
    edge_file, other_file = tmp_path / "edges.png", tmp_path / "other.png"
    edges().save(edge_file)
    edges(other=True).save(other_file)
    first, swapped = tmp_path / "first.png", tmp_path / "swapped.png"
    control = ["--controlnet", "tiny-controlnet", "--control-image", str(edge_file)]
    scale = ["--control-scale", "0.8"]
    assert main([*GENERATE, "--seed", "4", *control, *scale, "--out", str(first)]) == 0

    argv = ["generate", "--from", str(first), "--control-image", str(other_file)]
    assert main([*argv, "--out", str(swapped)]) == 0
    (control_input,) = load_request(swapped).controls
    assert control_input.image == str(other_file)
    assert control_input.sha256 == image_sha256(edges(other=True)) != image_sha256(edges())
    assert control_input.scale == 0.8  # the recorded scale, not overridden
    (embedded,) = read_control_images(swapped)
    assert embedded is not None
    assert np.array_equal(np.asarray(embedded), np.asarray(edges(other=True)))
    assert not np.array_equal(pixels(first), pixels(swapped))


def test_from_keeps_several_controlnets_in_order(rpg_cache: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    edges().save(a)
    edges(other=True).save(b)
    first, again = tmp_path / "two.png", tmp_path / "two-again.png"
    nets = ["--controlnet", "tiny-controlnet", "--controlnet", "tiny-controlnet"]
    images = ["--control-image", str(a), "--control-image", str(b)]
    scales = ["--control-scale", "0.4", "--control-scale", "1.3"]
    assert main([*GENERATE, "--seed", "2", *nets, *images, *scales, "--out", str(first)]) == 0
    controls = load_request(first).controls
    assert [c.scale for c in controls] == [0.4, 1.3]
    assert [c.sha256 for c in controls] == [image_sha256(edges()), image_sha256(edges(other=True))]
    embedded = read_control_images(first)
    assert [image_sha256(image) for image in embedded if image is not None] == [
        c.sha256 for c in controls
    ]
    a.unlink()
    b.unlink()
    assert main(["generate", "--from", str(first), "--out", str(again)]) == 0
    assert np.array_equal(pixels(first), pixels(again))


def test_from_without_embedded_image_or_file_asks_for_control_image(
    rpg_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    control = ControlInput(controlnet="tiny-controlnet", image=str(tmp_path / "gone.png"))
    made = Image.new("RGB", (64, 64))
    source = save_png(made, tmp_path / "src.png", request(controls=[control]))
    assert read_control_images(source) == [None]
    assert main(["generate", "--from", str(source), "--out", str(tmp_path / "x.png")]) == 1
    err = capsys.readouterr().err
    assert "gone.png" in err and "--control-image" in err
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------- API


def test_generate_records_the_controls_it_was_given(
    cn_rpg: RPG, cn_folder: Path, tmp_path: Path
) -> None:
    assert cn_rpg.controlnet_names == [str(cn_folder)]
    result = cn_rpg.generate(request(), image=edges(), controlnet_conditioning_scale=0.6)
    assert result.request.controls == (
        ControlInput(controlnet=str(cn_folder), scale=0.6, sha256=image_sha256(edges())),
    )
    assert np.array_equal(np.asarray(result.control_images[0]), np.asarray(edges()))

    path = tmp_path / "edges.png"
    edges().save(path)
    by_path = cn_rpg.generate(request(), image=str(path), controlnet_conditioning_scale=0.6)
    assert by_path.request.controls[0].image == str(path)
    assert np.array_equal(np.asarray(by_path.images[0]), np.asarray(result.images[0]))

    # the recorded request renders again without image=: the image is read from its path
    # and the recorded scale is used
    again = cn_rpg.generate(by_path.request)
    assert again.request == by_path.request
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(by_path.images[0]))
    # a scale given to generate overrides the recorded one
    stronger = cn_rpg.generate(by_path.request, controlnet_conditioning_scale=1.5)
    assert stronger.request.controls[0].scale == 1.5
    assert not np.array_equal(np.asarray(stronger.images[0]), np.asarray(by_path.images[0]))


def test_a_changed_control_file_is_noticed(cn_rpg: RPG, tmp_path: Path) -> None:
    path = tmp_path / "edges.png"
    edges().save(path)
    made = cn_rpg.generate(request(steps=1), image=str(path))
    edges(other=True).save(path)
    with pytest.warns(UserWarning, match="has changed since the request was recorded"):
        again = cn_rpg.generate(made.request)
    assert again.request.controls[0].sha256 == image_sha256(edges(other=True))


def test_controls_on_an_rpg_without_controlnet_are_an_error(tiny_rpg: RPG, tmp_path: Path) -> None:
    path = tmp_path / "edges.png"
    edges().save(path)
    controlled = request(controls=[ControlInput(controlnet="tiny-controlnet", image=str(path))])
    with pytest.raises(ConfigurationError, match="loaded without ControlNet") as caught:
        tiny_rpg.generate(controlled)
    assert "controlnet=" in str(caught.value) and "tiny-controlnet" in str(caught.value)


@pytest.mark.parametrize(
    ("image", "message"),
    [("gone.png", "not found: .*gone.png"), (None, "has no recorded path")],
)
def test_a_control_image_that_cannot_be_found_is_an_error(
    cn_rpg: RPG, cn_folder: Path, tmp_path: Path, image: str | None, message: str
) -> None:
    where = None if image is None else str(tmp_path / image)
    controlled = request(controls=[ControlInput(controlnet=str(cn_folder), image=where)])
    with pytest.raises(ConfigurationError, match=message) as caught:
        cn_rpg.generate(controlled)
    assert "--control-image" in str(caught.value)


def test_more_controls_than_controlnets_is_an_error(cn_rpg: RPG, cn_folder: Path) -> None:
    two = [ControlInput(controlnet=str(cn_folder), image="a.png")] * 2
    with pytest.raises(ConfigurationError, match="2 ControlNet inputs but this RPG has 1"):
        cn_rpg.generate(request(controls=two))


def test_control_input_validation() -> None:
    with pytest.raises(ValueError, match="less than or equal to 10"):
        ControlInput(controlnet="x", scale=11)
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        ControlInput(controlnet="x", scale=-0.1)
    with pytest.raises(ValueError, match="String should match pattern"):
        ControlInput(controlnet="x", sha256="abc")
    with pytest.raises(ValueError, match="must not be empty"):
        ControlInput(controlnet="  ")
    req = request(controls=[ControlInput(controlnet="x", image="e.png", scale=0.5)])
    assert GenerationRequest.model_validate_json(req.model_dump_json()) == req


# ----------------------------------------------------------------------------- PNG metadata


def test_old_metadata_without_controls_still_loads(tmp_path: Path) -> None:
    old = {"prompt": PROMPT, "seed": 1, "steps": 3, "model": "tiny-sd", "width": 64, "height": 64}
    info = PngImagePlugin.PngInfo()
    payload = {"rpg": 1, "request": old, "plan": PLAN.model_dump(mode="json")}
    info.add_itxt(PNG_KEY, json.dumps(payload), zip=True)
    path = tmp_path / "old.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    loaded = load_request(path)
    assert loaded.controls == () and loaded.plan == PLAN and loaded.seed == 1
    assert read_control_images(path) == []


def test_plain_renders_write_the_metadata_older_versions_read(tmp_path: Path) -> None:
    path = save_png(Image.new("RGB", (8, 8)), tmp_path / "p.png", request())
    assert "controls" not in read_metadata(path)["request"]
    with Image.open(path) as img:
        assert not [key for key in img.text if key.startswith("rpg-control")]


def test_a_large_control_image_is_split_over_chunks_pillow_can_read(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (640, 640, 3), dtype=np.uint8)
    big = Image.fromarray(noise, mode="RGB")
    control = ControlInput(controlnet="x", sha256=image_sha256(big))
    path = save_png(
        Image.new("RGB", (8, 8)),
        tmp_path / "big.png",
        request(controls=[control]),
        control_images=[big],
    )
    with Image.open(path) as img:  # Pillow refuses compressed text chunks over 1 MiB
        img.load()
        parts = [key for key in img.text if key.startswith("rpg-control-0")]
    assert len(parts) > 1
    (back,) = read_control_images(path)
    assert back is not None and np.array_equal(np.asarray(back), noise)


def test_embedded_images_are_checked_against_their_hash(tmp_path: Path) -> None:
    control = ControlInput(controlnet="x", sha256=image_sha256(edges()))
    controlled = request(controls=[control])
    with pytest.raises(ValueError, match="does not match the sha256"):
        save_png(edges(), tmp_path / "x.png", controlled, control_images=[edges(other=True)])

    buffer = io.BytesIO()
    edges(other=True).save(buffer, format="PNG")
    info = PngImagePlugin.PngInfo()
    payload = {"rpg": 1, "request": controlled.model_dump(mode="json"), "plan": None}
    info.add_itxt(PNG_KEY, json.dumps(payload), zip=True)
    info.add_itxt("rpg-control-0", base64.b64encode(buffer.getvalue()).decode(), zip=True)
    tampered = tmp_path / "tampered.png"
    Image.new("RGB", (8, 8)).save(tampered, pnginfo=info)
    with pytest.raises(MetadataError, match="does not match its recorded sha256"):
        read_control_images(tampered)


def test_pixel_hash_ignores_encoding_but_not_shape() -> None:
    grey = Image.new("L", (4, 2), 7)
    assert image_sha256(grey) == image_sha256(grey.convert("RGB"))
    assert image_sha256(grey) != image_sha256(Image.new("L", (2, 4), 7))


# ----------------------------------------------------------------------------- batch and edit


def test_batch_renders_controls_from_jsonl(rpg_cache: Path, tmp_path: Path) -> None:
    edge_file = tmp_path / "edges.png"
    edges().save(edge_file)
    line = {
        "prompt": PROMPT,
        "controls": [{"controlnet": "tiny-controlnet", "image": str(edge_file), "scale": 0.9}],
    }
    jsonl = tmp_path / "requests.jsonl"
    jsonl.write_text(json.dumps(line) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["batch", str(jsonl), "--out", str(out), "--planner", "rules", "--steps", "1"]
    assert main([*argv, "--size", "64x64", "--no-progress"]) == 0
    (png,) = out.glob("*.png")
    (control,) = load_request(png).controls
    assert control.scale == 0.9 and control.sha256 == image_sha256(edges())
    assert read_control_images(png)[0] is not None


def test_batch_with_different_controlnets_per_line_is_refused(
    rpg_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [
        {"prompt": "a cat", "controls": [{"controlnet": "tiny-controlnet", "image": "e.png"}]},
        {"prompt": "a dog"},
    ]
    jsonl = tmp_path / "requests.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    assert main(["batch", str(jsonl), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "tiny-controlnet (line 1)" in err and "no ControlNet (line 2)" in err
    assert not (tmp_path / "out").exists()


def test_edit_of_a_controlnet_image_does_not_claim_its_controls(
    tiny_rpg: RPG, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPG_CACHE_DIR", str(tmp_path / "cache"))
    control = ControlInput(controlnet="tiny-controlnet", sha256=image_sha256(edges()))
    source = save_png(
        Image.new("RGB", (64, 64), (9, 9, 9)),
        tmp_path / "cn.png",
        request(controls=[control]),
        control_images=[edges()],
    )
    reply = {"explanation": "e", "plan": None, "changes": [{"index": 0, "prompt": "a frog"}]}
    with OpenAIServer() as server:
        server.push(server.chat(json.dumps(reply)))
        planner = OpenAIPlanner(
            "vision",
            base_url=server.base_url,
            api_key="k",
            timeout=10,
            retry=RetryPolicy(retries=0),
        )
        out = edit(tiny_rpg, source, "a frog", planner=planner, steps=1)
    assert load_request(source).controls and out.request.controls == ()
