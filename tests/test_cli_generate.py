"""``rpg generate`` through ``rpg.cli.main``, and the PNG metadata it relies on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rpg.cli import main
from rpg.metadata import MetadataError, load_request, read_metadata, save_png
from rpg.models import GenerationRequest, RegionPlan

PROMPT = "A red cat on the left and a blue dog on the right"


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def test_generate_writes_image_layout_and_metadata_then_rerenders(
    rpg_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y = tmp_path / "x.png", tmp_path / "y.png"
    code = main(
        ["generate", PROMPT, "--seed", "1", "--steps", "3", "--out", str(x), "--save-layout"]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert "random weights" in captured.err  # default model tiny-sd says what it is
    assert "x.png" in captured.out
    assert (tmp_path / "x.layout.png").is_file()
    data = read_metadata(x)
    plan = RegionPlan.model_validate(data["plan"])
    assert plan.prompts == ["A red cat", "a blue dog"]  # the rules planner split it
    assert data["request"]["seed"] == 1 and data["request"]["model"] == "tiny-sd"

    assert main(["generate", "--from", str(x), "--out", str(y)]) == 0
    assert np.array_equal(pixels(x), pixels(y))
    assert load_request(y) == load_request(x)

    z = tmp_path / "z.png"
    assert main(["generate", "--from", str(x), "--steps", "2", "--out", str(z)]) == 0
    assert load_request(z).steps == 2
    assert not np.array_equal(pixels(x), pixels(z))


def test_plan_file_size_and_several_images(rpg_cache: Path, tmp_path: Path) -> None:
    plan = RegionPlan.from_split_ratio("1,1,1;1,1", ["sky", "sun", "sea"], base_prompt="a beach")
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.model_dump_json(), encoding="utf-8")
    out = tmp_path / "beach.png"
    args = ["generate", "a beach", "--plan", str(plan_file), "--size", "128x64", "--seed", "7"]
    assert main([*args, "--steps", "2", "--num-images", "2", "--out", str(out)]) == 0
    first, second = tmp_path / "beach-0.png", tmp_path / "beach-1.png"
    assert Image.open(first).size == (128, 64)
    assert load_request(first).plan == plan
    assert (load_request(first).seed, load_request(second).seed) == (7, 8)
    assert load_request(second).num_images == 1
    again = tmp_path / "again.png"
    assert main(["generate", "--from", str(second), "--out", str(again)]) == 0
    assert np.abs(pixels(second).astype(int) - pixels(again).astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("argv", "message", "status"),
    [
        (["--size", "100x64"], "--size: width must be a multiple of 8, got 100", 2),
        (["--scheduler", "turbo"], "--scheduler: unknown scheduler 'turbo'", 2),
        (["--model", "nobody-here/no-such-model"], "'nobody-here/no-such-model' is not in the", 1),
        (["--model", "missing.safetensors"], "no such file or folder", 1),
    ],
)
def test_bad_input_is_one_clear_line(
    rpg_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    message: str,
    status: int,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    assert main(["generate", "a cat", *argv, "--out", str(tmp_path / "o.png")]) == status
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("rpg generate: error:") and err.count("\n") == 1
    assert not (tmp_path / "o.png").exists()


def test_empty_prompt_and_no_prompt(rpg_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "  "]) == 2
    assert "PROMPT: the prompt must not be empty" in capsys.readouterr().err
    assert main(["generate"]) == 2
    assert "give a PROMPT" in capsys.readouterr().err


def test_from_an_image_without_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert main(["generate", "--from", str(plain)]) == 1
    assert "without rpg metadata" in capsys.readouterr().err


def test_metadata_round_trip_and_missing_metadata(tmp_path: Path) -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"], base_prompt="pets")
    request = GenerationRequest(prompt="pets", plan=plan, seed=3, num_images=3, steps=4)
    path = save_png(Image.new("RGB", (16, 16), "red"), tmp_path / "a.png.part", request)
    loaded = load_request(path)
    assert loaded == request
    third = load_request(save_png(Image.new("RGB", (8, 8)), tmp_path / "b.png", request, index=2))
    assert (third.seed, third.num_images) == (5, 1)
    raw = json.loads(Image.open(path).text["rpg"])
    assert set(raw) == {"rpg", "request", "plan"}
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(MetadataError, match="without rpg metadata"):
        load_request(tmp_path / "plain.png")


def test_no_kv_cache_turns_the_cache_off_and_keeps_the_pixels(
    rpg_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rpg.attention.install as install

    seen: list[bool] = []
    real = install.regional

    def spy(*args, **kwargs):
        seen.append(kwargs.get("cache_kv", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(install, "regional", spy)
    with_cache, without = tmp_path / "a.png", tmp_path / "b.png"
    common = ["generate", PROMPT, "--seed", "3", "--steps", "2"]
    assert main([*common, "--out", str(with_cache)]) == 0
    assert main([*common, "--no-kv-cache", "--out", str(without)]) == 0
    assert seen == [True, False]
    assert np.array_equal(pixels(with_cache), pixels(without))
