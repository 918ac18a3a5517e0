"""img2img on every family through its stock img2img pipeline, on the one render route:
stock equivalence, sizes, strength errors, refusals, PNG round trips, batch lines."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from cli_helpers import generate_refusal
from rpg.backbones.schedulers import make_scheduler
from rpg.backbones.tiny.controlnet import write_tiny_controlnet
from rpg.backbones.tiny.sdxl import write_tiny_sdxl
from rpg.batch import expand_requests, read_manifest, run_batch
from rpg.cli import main
from rpg.errors import ConfigurationError
from rpg.metadata import load_request, read_init_image, read_metadata
from rpg.models import GenerationRequest, RegionPlan
from rpg.orchestrator import RPG
from tiny_helpers import torch_threads, write_tiny_models

PROMPT = "a red cat sitting on a blue mat"
PNG = {"content-type": "image/png"}
TWO = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"], base_prompt="pets")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_sd_path: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rpg-img2img")
    found = write_tiny_models(root, ("tiny-flux", "tiny-sd3", "tiny-flux2-klein"))
    found["tiny-sdxl"] = write_tiny_sdxl(root / "tiny-sdxl")
    found["tiny-sd-controlnet"] = write_tiny_controlnet(root / "cn", sdxl=False, seed=0)
    found["tiny-sdxl-controlnet"] = write_tiny_controlnet(root / "cn-xl", sdxl=True, seed=0)
    found["tiny-sd"] = tiny_sd_path
    return found


_LOADED: dict[str, RPG] = {}


def _load(models: dict[str, Path], family: str) -> RPG:
    if family not in _LOADED:
        if family.endswith("-controlnet"):
            base = "tiny-sd" if family == "sd-controlnet" else "tiny-sdxl"
            net = models[f"tiny-{family}"]
            pipe = RPG.from_pretrained(models[base], device="cpu", dtype="float32", controlnet=net)
        else:
            name = {"sd": "tiny-sd", "sdxl": "tiny-sdxl", "flux": "tiny-flux", "sd3": "tiny-sd3",
                    "klein": "tiny-flux2-klein"}[family]  # fmt: skip
            pipe = RPG.from_pretrained(models[name], device="cpu", dtype="float32")
        pipe.pipe.set_progress_bar_config(disable=True)
        _LOADED[family] = pipe
    return _LOADED[family]


def _picture(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _control() -> Image.Image:
    image = Image.new("RGB", (64, 64))
    image.paste((255, 255, 255), (12, 20, 50, 44))
    return image


STOCK = {
    "sd": "StableDiffusionImg2ImgPipeline",
    "sdxl": "StableDiffusionXLImg2ImgPipeline",
    "sd-controlnet": "StableDiffusionControlNetImg2ImgPipeline",
    "sdxl-controlnet": "StableDiffusionXLControlNetImg2ImgPipeline",
    "flux": "FluxImg2ImgPipeline",
    "sd3": "StableDiffusion3Img2ImgPipeline",
}


@pytest.mark.parametrize("family", list(STOCK))
def test_one_full_canvas_region_equals_the_stock_img2img_pipeline(
    models: dict[str, Path], family: str
) -> None:
    import diffusers

    pipe = _load(models, family)
    unet_family = family in ("sd", "sdxl", "sd-controlnet", "sdxl-controlnet")
    scheduler = "euler" if unet_family else None
    init = _picture()
    extra: dict[str, Any] = {}
    stock_extra: dict[str, Any] = {}
    if family.endswith("-controlnet"):
        extra = {"image": _control(), "controlnet_conditioning_scale": 0.7}
        stock_extra = {"control_image": _control(), "controlnet_conditioning_scale": 0.7}
    request = GenerationRequest(
        prompt=PROMPT, plan=RegionPlan.single(PROMPT), steps=4, seed=5, strength=0.6,
        scheduler=scheduler, width=64, height=64,
    )  # fmt: skip
    result = pipe.generate(request, init_image=init, output_type="np", **extra)
    ours = result.images[0]

    stock_cls = getattr(diffusers, STOCK[family])
    stock = stock_cls.from_pipe(pipe.pipe)
    if scheduler is not None:
        stock.scheduler = make_scheduler(scheduler, pipe.backbone.scheduler_config)
    stock.set_progress_bar_config(disable=True)
    size = {} if family in ("sd", "sdxl") else {"height": 64, "width": 64}
    expected = stock(
        PROMPT, image=init, strength=0.6, num_inference_steps=4, output_type="np",
        guidance_scale=pipe.backbone.default_guidance,
        generator=torch.Generator().manual_seed(5), **stock_extra, **size,
    ).images[0]  # fmt: skip
    assert ours.shape == expected.shape == (64, 64, 3)
    assert expected.std() > 0.01
    assert np.abs(ours - expected).max() <= 1e-4
    # the init image changes the picture: a txt2img render of the same request differs
    plain = request.model_copy(update={"strength": None})
    other = pipe.generate(plain, output_type="np", **extra).images[0]
    assert np.abs(other - ours).max() > 0.05
    assert result.request.strength == 0.6 and result.request.init_image_sha256 is not None
    assert type(pipe.backbone.img2img_backbone().pipe).__name__ == STOCK[family]


def test_regional_img2img_leaves_the_pipeline_as_found(models: dict[str, Path]) -> None:
    pipe = _load(models, "sd")
    before = dict(pipe.pipe.unet.attn_processors)
    scheduler = pipe.pipe.scheduler
    request = GenerationRequest(prompt="pets", plan=TWO, steps=3, seed=1, strength=0.5)
    pipe.generate(request, init_image=_picture())
    assert dict(pipe.pipe.unet.attn_processors) == before and pipe.pipe.scheduler is scheduler


def test_image_i_of_a_batch_is_the_single_image_with_seed_plus_i(models: dict[str, Path]) -> None:
    pipe = _load(models, "sd")
    init = _picture()
    request = GenerationRequest(prompt="pets", plan=TWO, steps=3, seed=1, strength=0.7)
    both = request.model_copy(update={"num_images": 2})
    two = pipe.generate(both, init_image=init, output_type="np").images
    one = pipe.generate(request.model_copy(update={"seed": 2}), init_image=init, output_type="np")
    # a batch of two rounds a little differently from one image: float tolerance
    assert np.abs(two[1] - one.images[0]).max() <= 1e-4
    assert np.abs(two[0] - two[1]).max() > 0.01


def test_a_size_mismatch_is_resized_with_a_warning(models: dict[str, Path]) -> None:
    pipe = _load(models, "sd")
    small = _picture(48, 40)
    request = GenerationRequest(prompt="pets", plan=TWO, steps=3, seed=1, width=64, height=64)
    with pytest.warns(UserWarning, match=r"48x40; resized to the render size 64x64 .*stretched"):
        got = pipe.generate(request, init_image=small, output_type="np")
    resized = small.resize((64, 64), Image.Resampling.LANCZOS)
    want = pipe.generate(request, init_image=resized, output_type="np")
    assert np.array_equal(got.images[0], want.images[0])
    # the request records the picture as given (its hash), and the result holds it for the PNG
    assert got.init_image.size == (48, 40)
    assert got.request.init_image_sha256 != want.request.init_image_sha256


def test_without_a_size_the_render_takes_the_pictures_rounded_to_the_model_step(
    models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    pipe = _load(models, "flux")  # FLUX sizes are multiples of 16
    request = GenerationRequest(prompt="pets", plan=TWO, steps=2, seed=1, strength=0.9)
    with (
        caplog.at_level(logging.WARNING, logger="rpg.img2img"),
        pytest.warns(UserWarning, match="resized"),
    ):
        result = pipe.generate(request, init_image=_picture(88, 72))
    assert (result.request.width, result.request.height) == (80, 64)
    assert result.images[0].size == (80, 64)
    assert "rendering at 80x64 (sizes are multiples of 16" in caplog.text


@pytest.mark.parametrize(
    ("fields", "why"),
    [({"strength": 0.1, "steps": 4}, r"strength 0.1 with 4 steps runs no denoising step.*10")],
)
def test_a_strength_that_runs_no_step_is_refused(
    models: dict[str, Path], fields: dict[str, Any], why: str
) -> None:
    pipe = _load(models, "sd")
    request = GenerationRequest(prompt="pets", plan=TWO, seed=1, **fields)
    with pytest.raises(ConfigurationError, match=why):
        pipe.generate(request, init_image=_picture())


@pytest.mark.parametrize("strength", [0, -0.5, 1.5, float("nan")])
def test_a_strength_out_of_range_is_a_validation_error(strength: float) -> None:
    with pytest.raises(ValidationError, match="strength"):
        GenerationRequest(prompt="pets", init_image="x.png", strength=strength)


def test_strength_without_an_init_image_is_refused(models: dict[str, Path]) -> None:
    pipe = _load(models, "sd")
    with pytest.raises(ConfigurationError, match="strength needs an init image"):
        pipe.generate(GenerationRequest(prompt="pets", plan=TWO, seed=1, strength=0.5))


def test_a_missing_init_image_file_is_a_clear_error(
    models: dict[str, Path], tmp_path: Path
) -> None:
    pipe = _load(models, "sd")
    request = GenerationRequest(
        prompt="pets", plan=TWO, seed=1, init_image=str(tmp_path / "no.png")
    )
    with pytest.raises(ConfigurationError, match="init image not found"):
        pipe.generate(request)


def test_klein_is_refused_before_the_planner_is_asked(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = _load(models, "klein")
    asked: list[str] = []
    monkeypatch.setattr(pipe, "plan", lambda prompt, **k: asked.append(prompt))
    with pytest.raises(
        ConfigurationError, match=r"img2img .* 'flux2-klein'.*no FLUX.2 \[klein\] img2img"
    ):
        pipe.generate(GenerationRequest(prompt="a cat", strength=0.5), init_image=_picture())
    with pytest.raises(ConfigurationError, match="flux2-klein"):
        pipe.generate(GenerationRequest(prompt="a cat", hires=2))
    assert asked == []


def test_the_png_embeds_the_init_image_and_re_renders_identically(
    models: dict[str, Path], tmp_path: Path
) -> None:
    pipe = _load(models, "sd")
    source = tmp_path / "init.png"
    _picture(64, 64, seed=3).save(source)
    request = GenerationRequest(prompt="pets", plan=TWO, steps=3, seed=4, strength=0.6)
    first = pipe.generate(request, init_image=source)
    assert first.request.init_image == str(source)
    saved = first.save(tmp_path / "out.png")
    source.unlink()  # the PNG carries the picture
    again = pipe.generate(load_request(saved), init_image=read_init_image(saved))
    assert np.array_equal(np.asarray(first.images[0]), np.asarray(again.images[0]))
    assert again.request == first.request  # same path, hash and strength recorded
    stored = read_metadata(saved)["request"]
    assert stored["strength"] == 0.6 and "hires" not in stored
    # a plain render writes none of the img2img keys: older readers still read it
    plain = pipe.generate(request.model_copy(update={"strength": None}))
    plain_stored = read_metadata(plain.save(tmp_path / "plain.png"))["request"]
    assert not {"init_image", "init_image_sha256", "strength", "hires"} & set(plain_stored)
    assert read_init_image(tmp_path / "plain.png") is None


def test_cli_from_re_renders_an_img2img_png_identically(
    rpg_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _picture(72, 56).save("init.png")
    prompt = "a red cat on the left and a blue dog on the right"
    args = ["generate", prompt, "--init-image", "init.png", "--strength", "0.6", "--steps", "3",
            "--seed", "2", "--no-progress"]  # fmt: skip
    assert main([*args, "--out", "a.png"]) == 0
    Path("init.png").unlink()
    assert main(["generate", "--from", "a.png", "--out", "b.png", "--no-progress"]) == 0
    a, b = Image.open("a.png"), Image.open("b.png")
    assert a.size == (72, 56) and np.array_equal(np.asarray(a), np.asarray(b))
    recorded = load_request("b.png")
    assert recorded.init_image == "init.png" and recorded.strength == 0.6
    # a new strength with --from changes just that
    assert main(["generate", "--from", "a.png", "--strength", "0.9", "--out", "c.png",
                 "--no-progress"]) == 0  # fmt: skip
    assert not np.array_equal(np.asarray(a), np.asarray(Image.open("c.png")))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--strength", "0"], "--strength: 0 is not in (0, 1]"),
        (["--strength", "0.5"], "--strength is for img2img: add --init-image IMG"),
        (["--init-image", "nope.png"], "--init-image nope.png: init image not found"),
    ],
)
def test_cli_img2img_flag_errors(
    rpg_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, err, written = generate_refusal(flags, capsys)
    assert code == 2
    assert message in err
    assert not written


def test_batch_lines_take_init_image_and_strength(models: dict[str, Path], tmp_path: Path) -> None:
    pipe = _load(models, "sd")
    _picture().save(tmp_path / "init.png")
    line = {"prompt": "a red cat on the left and a blue dog on the right", "steps": 3,
            "init_image": str(tmp_path / "init.png"), "strength": 0.5, "seed": 1}  # fmt: skip
    items = expand_requests([(1, line), (2, {**line, "strength": 2})])
    assert items[1].request is None and "strength" in (items[1].error or "")
    report = run_batch(pipe, items[:1], tmp_path / "out", progress=False)
    assert report.done == 1
    (record,) = read_manifest(tmp_path / "out").values()
    saved = tmp_path / "out" / record["files"][0]
    assert load_request(saved).strength == 0.5
    assert read_init_image(saved) is not None
    direct = pipe.generate(load_request(saved), init_image=tmp_path / "init.png")
    assert np.array_equal(np.asarray(direct.images[0]), np.asarray(Image.open(saved)))


def test_the_editor_renders_over_an_uploaded_init_image_and_with_hires(
    tiny_rpg: RPG, tmp_path: Path
) -> None:
    pytest.importorskip("starlette", reason="the 'ui' extra (starlette) is not installed")
    pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")
    import io

    from starlette.testclient import TestClient

    from rpg.ui import build_app
    from ui_helpers import wait

    client = TestClient(
        build_app(tiny_rpg, output_dir=tmp_path / "out", planner="rules"),
        base_url="http://localhost",
    )
    secret = tmp_path / "private.png"
    picture = _picture(seed=7)
    picture.save(secret)
    fields = {"prompt": "a red cat on the left and a blue dog on the right", "steps": 3, "seed": 1,
              "width": 64, "height": 64, "scheduler": "euler", "planner": "rules"}  # fmt: skip
    # a browser must not make the server open a file of its choosing and serve it back
    refused = client.post("/api/generate", json={"request": {**fields, "init_image": str(secret)}})
    assert refused.status_code == 422 and "not a path" in refused.text
    junk = client.post("/api/init-image", content=b"not a picture", headers=PNG)
    assert junk.status_code == 422 and "not a readable picture" in junk.text
    forgotten = {"request": fields, "init_image_id": "init-" + "0" * 16}
    unknown = client.post("/api/generate", json=forgotten)
    assert unknown.status_code == 422 and "choose the picture again" in unknown.text

    encoded = io.BytesIO()
    picture.save(encoded, format="PNG")
    upload = client.post("/api/init-image", content=encoded.getvalue(), headers=PNG).json()
    assert (upload["width"], upload["height"]) == (64, 64)
    body = {"request": {**fields, "strength": 0.6}, "init_image_id": upload["id"]}
    job = wait(client, client.post("/api/generate", json=body).json())
    assert job["state"] == "done", job
    saved = tmp_path / "out" / job["images"][0]["name"]
    assert read_init_image(saved).tobytes() == picture.tobytes()
    direct = tiny_rpg.generate(load_request(saved), init_image=picture)
    assert np.array_equal(np.asarray(direct.images[0]), np.asarray(Image.open(saved)))
    # reopening the PNG gives the page its embedded init image as a new upload
    reopened = client.post("/api/reopen", content=saved.read_bytes(), headers=PNG).json()
    assert reopened["init_image"]["id"] != upload["id"] and reopened["request"]["strength"] == 0.6

    body = {"request": {**fields, "hires": {"scale": 1.5}}}
    job = wait(client, client.post("/api/generate", json=body).json())
    assert job["state"] == "done", job
    saved = tmp_path / "out" / job["images"][0]["name"]
    assert Image.open(saved).size == (96, 96) and load_request(saved).hires is not None


def test_regional_steps_count_the_steps_img2img_runs(
    models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rpg.attention.joint import JointRegions

    pipe = _load(models, "flux")
    seen: list[int | None] = []
    real = JointRegions.from_conditioning.__func__  # type: ignore[attr-defined]

    def spy(cls: type, *args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("steps"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(JointRegions, "from_conditioning", classmethod(spy))
    request = GenerationRequest(
        prompt="pets", plan=TWO, steps=5, seed=1, width=64, height=64,
        options={"regional_steps": 0.5},
    )  # fmt: skip
    pipe.generate(request)
    pipe.generate(request.model_copy(update={"strength": 0.6}), init_image=_picture())
    # text-to-image runs all 5; img2img at 0.6 runs the last 3 (FluxImg2ImgPipeline's count)
    assert seen == [5, 3]
