"""One error style: ``rpg CMD: error: …``, status 2 for usage and 1 at run time, flags named as
typed, files named, ``--debug`` and friends before or after the subcommand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from rpg.cli import main

PROMPT = "A red cat on the left and a blue dog on the right"


def error_line(err: str, command: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith(f"rpg {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize(
    ("flags", "expected", "field"),
    [
        (
            ["--guidance", "200"],
            "--guidance: input should be less than or equal to 100",
            "guidance",
        ),
        (["--steps", "0"], "--steps: input should be greater than or equal to 1", "steps"),
        (["--size", "100x64"], "--size: width must be a multiple of 8", "width"),
        (["--num-images", "99"], "--num-images:", "num_images"),
        (["--base-ratio", "2"], "--base-ratio:", "base_ratio"),
        (["--scheduler", "warp-drive"], "--scheduler: unknown scheduler", "scheduler"),
    ],
)
def test_bad_values_name_the_flag_and_exit_2(
    flags: list[str],
    expected: str,
    field: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["generate", PROMPT, *flags, "--out", str(tmp_path / "x.png")]) == 2
    line = error_line(capsys.readouterr().err, "generate")
    assert expected in line
    assert "guidance_scale" not in line and "num_images" not in line and "base_ratio" not in line
    assert not (tmp_path / "x.png").exists()


def test_a_bad_value_recorded_in_a_from_image_names_the_image(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    request = {"prompt": "x", "steps": 0}
    info.add_itxt("rpg", json.dumps({"rpg": 1, "request": request, "plan": None}), zip=True)
    source = tmp_path / "old.png"
    Image.new("RGB", (8, 8)).save(source, pnginfo=info)
    assert main(["generate", "--from", str(source), "--out", str(tmp_path / "y.png")]) == 1
    line = error_line(capsys.readouterr().err, "generate")
    assert str(source) in line and "steps" in line


def test_plan_file_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.json"
    assert main(["generate", PROMPT, "--plan", str(missing)]) == 1
    assert str(missing) in error_line(capsys.readouterr().err, "generate")

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": []}))
    assert main(["layout", str(bad)]) == 1
    line = error_line(capsys.readouterr().err, "layout")
    assert str(bad) in line and "rows" in line


def test_hand_written_plan_errors_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--split-ratio", "1,1", "--prompts", "a BREAK b BREAK c"]) == 2
    assert "has 2 regions but 3 prompts" in error_line(capsys.readouterr().err, "plan")
    assert (
        main(["plan", "--split-ratio", "1,1", "--prompts", "a BREAK b", "--base-ratio", "3"]) == 2
    )
    line = error_line(capsys.readouterr().err, "plan")
    assert "--base-ratio:" in line and "base_ratio" not in line


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_subcommand(
    where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["plan", "--split-ratio", "1,0", "--prompts", "a BREAK b"]
    argv = ["--debug", *args] if where == "before" else [*args, "--debug"]
    assert main(argv) == 2
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["plugins"],
        ["plan", "--split-ratio", "1,1", "--prompts", "a BREAK b"],
        ["generate", "--help"],
        ["batch", "--help"],
        ["edit", "--help"],
        ["layout", "--help"],
    ],
)
def test_general_options_on_every_command(argv: list[str]) -> None:
    for option in ("--no-progress", "--verbose", "--debug"):
        try:
            code = main([*argv, option])
        except SystemExit as exc:  # --help
            code = int(exc.code or 0)
        assert code == 0, option


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out
