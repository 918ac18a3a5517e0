"""Mistakes fail before any model loads: each case runs ``rpg`` in a fresh interpreter and
checks that torch and diffusers were never imported (so no model could have been loaded),
besides the exit status and the message."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rpg.cli import main

PROMPT = "A red cat on the left and a blue dog on the right"

# Runs the command in-process, then reports what it imported.
_PROBE = """
import json, sys
from rpg.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # argparse refuses a value
    code = exc.code
heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
print("PROBE " + json.dumps({"code": code, "heavy": heavy}))
"""


def run_rpg(args: list[str], tmp_path: Path, **env: str) -> tuple[int, list[str], str]:
    """``rpg ARGS`` in a subprocess: exit status, heavy modules it imported, stderr."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "OLLAMA_"))}
    environ.update({"RPG_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", **env})
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        capture_output=True,
        text=True,
        env=environ,
        cwd=tmp_path,
        timeout=120,
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PROBE "))
    probe = json.loads(line.removeprefix("PROBE "))
    return probe["code"], probe["heavy"], proc.stderr


def test_out_under_a_file_fails_without_loading(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    code, heavy, err = run_rpg(["generate", PROMPT, "--out", "a-file/x.png"], tmp_path)
    assert code == 1
    assert heavy == []
    assert err.startswith("rpg generate: error: ")
    assert "a-file/x.png" in err and "a-file is a file, not a folder" in err
    assert not (tmp_path / "cache").exists()  # the tiny model was not even written


def test_openai_without_a_key_fails_without_loading(tmp_path: Path) -> None:
    code, heavy, err = run_rpg(["generate", PROMPT, "--planner", "openai"], tmp_path)
    assert code == 1
    assert heavy == []
    assert "rpg generate: error: " in err and "OPENAI_API_KEY" in err


def test_unknown_planner_is_a_usage_error(tmp_path: Path) -> None:
    code, heavy, err = run_rpg(["generate", PROMPT, "--planner", "gpt9"], tmp_path)
    assert code == 2
    assert heavy == []
    assert "rpg generate: error: --planner gpt9: unknown planner" in err
    assert "rules" in err  # lists what is registered


def test_refine_with_a_planner_that_cannot_see_fails_without_loading(tmp_path: Path) -> None:
    code, heavy, err = run_rpg(
        ["generate", PROMPT, "--planner", "rules", "--refine", "1"], tmp_path
    )
    assert code == 2
    assert heavy == []
    assert "--refine needs a planner that can look at images" in err


def test_edit_with_the_default_planner_fails_without_loading(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64), "white").save(tmp_path / "in.png")
    code, heavy, err = run_rpg(["edit", "in.png", "make it red"], tmp_path)
    assert code == 2
    assert heavy == []
    assert "rpg edit: error: rpg edit needs a planner that can look at images" in err


def test_non_png_output_is_refused_not_mislabelled(tmp_path: Path) -> None:
    code, heavy, err = run_rpg(["generate", PROMPT, "--out", "x.jpg"], tmp_path)
    assert code == 2
    assert heavy == []
    assert "--out x.jpg: rpg writes PNG images" in err and "x.png" in err
    assert not (tmp_path / "x.jpg").exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_out_in_a_read_only_folder_fails_without_loading(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, heavy, err = run_rpg(["generate", PROMPT, "--out", "locked/x.png"], tmp_path)
    finally:
        locked.chmod(0o700)
    assert code == 1
    assert heavy == []
    assert "no permission to write in locked" in err


def test_batch_out_that_is_a_file_fails_before_loading(tmp_path: Path) -> None:
    (tmp_path / "requests.jsonl").write_text(json.dumps(PROMPT) + "\n")
    (tmp_path / "out").write_text("a file")
    code, heavy, err = run_rpg(["batch", "requests.jsonl", "--out", "out"], tmp_path)
    assert code == 1
    assert heavy == []
    assert "out is a file, not a folder" in err


# ----------------------------------------------------------------------------- size on the CPU


def test_huge_size_on_cpu_warns_with_an_estimate_before_the_render(
    rpg_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rpg.orchestrator import RPG

    def not_rendered(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # stands in for the user giving up

    monkeypatch.setattr(RPG, "generate", not_rendered)
    args = ["generate", PROMPT, "--size", "4096x4096", "--device", "cpu", "--steps", "20"]
    assert main([*args, "--out", str(tmp_path / "big.png")]) == 130
    err = capsys.readouterr().err
    warning = next(x for x in err.splitlines() if x.startswith("rpg generate: warning: 4096x4096"))
    assert "per denoising step" in warning and "for 20 steps" in warning
    assert "--size" in warning  # says what would fit


def test_estimate_grows_with_the_square_of_the_pixels(tiny_rpg: Any) -> None:
    from rpg.cost import attention_work as _attention_work

    unet = tiny_rpg.pipe.unet
    small, large = _attention_work(unet, 64, 64), _attention_work(unet, 128, 128)
    assert small > 0
    assert large == pytest.approx(16 * small, rel=0.05)


def test_native_size_on_cpu_does_not_warn(tiny_rpg: Any, caplog: pytest.LogCaptureFixture) -> None:
    from rpg.cli.checks import warn_if_slow
    from rpg.models import GenerationRequest

    with caplog.at_level(logging.WARNING, logger="rpg"):
        estimate = warn_if_slow(tiny_rpg.backbone, GenerationRequest(prompt="x", steps=30))
    assert estimate is not None and estimate < 60
    assert not caplog.records


# --------------------------------------------------------------- issue 23: late or misleading


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--seed", "1180591620717411303424"], "argument --seed: 1180591620717411303424 is out"),
        (["--seed", "-1"], "argument --seed: -1 is out of range"),
        (
            ["--seed", "18446744073709551615", "--num-images", "2"],
            "--seed 18446744073709551615 with --num-images 2",
        ),
        (["--guidance", "nan"], "argument --guidance: 'nan' is NaN"),
        (["--base-ratio", "nan"], "argument --base-ratio: 'nan' is NaN"),
        (["--guidance", "inf"], "argument --guidance: 'inf' is infinite"),
        (["--dtype", "float8"], "--dtype float8: unknown dtype"),
        (["--device", "tpu7"], "--device tpu7: unknown device"),
        (["--control-image", "edges.png"], "--control-image needs --controlnet"),
        (["--control-scale", "0.5"], "--control-scale needs --controlnet"),
        (
            ["--controlnet", "tiny-controlnet", "--control-image", "edges.png"]
            + ["--control-scale", "1"] * 3,
            "--control-scale given 3 times for 1 ControlNet",
        ),
        (
            ["--controlnet", "tiny-controlnet"] + ["--control-image", "edges.png"] * 2,
            "--control-image given 2 times for 1 ControlNet",
        ),
        (["--model", "bad.safetensors"], "--model bad.safetensors: not a usable .safetensors"),
        (["--config", "notamodel.txt"], "--config notamodel.txt: is a file"),
        (["--config", "empty-folder"], "--config empty-folder: is not a diffusers pipeline folder"),
    ],
)
def test_bad_value_is_a_usage_error_before_any_import(
    args: list[str], expected: str, tmp_path: Path
) -> None:
    (tmp_path / "bad.safetensors").write_bytes(os.urandom(100))
    (tmp_path / "notamodel.txt").write_text("hello")
    (tmp_path / "empty-folder").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "edges.png")
    code, heavy, err = run_rpg(["generate", PROMPT, *args], tmp_path)
    assert code == 2, err
    assert heavy == []
    assert expected in err, err
    assert not (tmp_path / "rpg.png").exists()


def test_seed_bounds_are_what_torch_generators_take() -> None:
    """The largest seed the request accepts is one a torch generator takes; one more is not."""
    import torch

    from rpg.models import MAX_SEED, GenerationRequest

    torch.Generator().manual_seed(MAX_SEED)
    with pytest.raises((ValueError, RuntimeError)):
        torch.Generator().manual_seed(MAX_SEED + 1)
    GenerationRequest(prompt="x", seed=MAX_SEED)
    with pytest.raises(ValueError, match="2\\*\\*64 - 1"):
        GenerationRequest(prompt="x", seed=MAX_SEED, num_images=2)
    with pytest.raises(ValueError):
        GenerationRequest(prompt="x", seed=MAX_SEED + 1)


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_unusable_cache_dir_is_named_before_any_import(kind: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache-here"
    if kind == "file":
        cache.write_text("not a folder")
    else:
        if os.name != "posix" or os.geteuid() == 0:
            pytest.skip("root may write into a read-only folder")
        cache.mkdir()
        cache.chmod(0o500)
    try:
        code, heavy, err = run_rpg(["generate", PROMPT], tmp_path, RPG_CACHE_DIR=str(cache))
    finally:
        if cache.is_dir():
            cache.chmod(0o700)
    assert code == 2, err
    assert heavy == []
    assert "$RPG_CACHE_DIR" in err and str(cache) in err and "tiny-sd" in err


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's /sys")
def test_out_on_a_file_system_that_refuses_files_fails_before_loading(tmp_path: Path) -> None:
    """``/sys`` passes ``os.access`` for root; a file made there is refused."""
    code, heavy, err = run_rpg(["generate", PROMPT, "--out", "/sys/x.png"], tmp_path)
    assert code == 1
    assert heavy == []
    assert "cannot write /sys/x.png: files cannot be created in /sys" in err


def test_layout_reads_the_plan_of_a_png(tmp_path: Path) -> None:
    from rpg.metadata import save_png
    from rpg.models import GenerationRequest, RegionPlan

    plan = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"])
    save_png(
        Image.new("RGB", (64, 64)),
        tmp_path / "cat-dog.png",
        GenerationRequest(prompt="x", plan=plan, seed=1),
    )
    code, heavy, err = run_rpg(["layout", "cat-dog.png", "--out", "l.png"], tmp_path)
    assert code == 0, err
    assert heavy == []
    assert Image.open(tmp_path / "l.png").size == (768, 768)
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    code, _, err = run_rpg(["layout", "plain.png"], tmp_path)
    assert code == 1
    assert "plain.png is a PNG without rpg metadata" in err
