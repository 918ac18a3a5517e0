"""``python -m rpg.eval.grid``: the README's stock-vs-rpg picture and the samples grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rpg.eval.grid import compare_grid, main, samples_grid
from rpg.models import RegionPlan


def test_compare_renders_both_rows_on_the_asked_canvas(tiny_rpg: Any) -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a red circle", "a blue square"])
    seen: list[Any] = []
    generate = tiny_rpg.generate

    def spy(request: Any) -> Any:
        seen.append(request)
        return generate(request)

    tiny_rpg.generate = spy
    try:
        sheet = compare_grid(
            tiny_rpg,
            "a red circle and a blue square",
            [0, 1],
            plan=plan,
            steps=1,
            size=(64, 32),
            options={"group_norm": "region"},
        )
    finally:
        del tiny_rpg.generate
    assert [(r.width, r.height, r.options) for r in seen] == [
        (64, 32, {"group_norm": "region"})
    ] * 2
    # two rows of cells 128 high, each twice as wide as high: the aspect is kept
    label_w = sheet.size[0] - 2 * (256 + 4)
    assert label_w >= 40 and sheet.size[1] == 18 + 2 * (128 + 4)
    # the plan's boxes are drawn over rpg's cells: the first region's outline is magenta
    y = 18 + 128 + 4
    assert sheet.getpixel((label_w, y + 64)) == (255, 0, 255)
    assert sheet.getpixel((label_w, 18 + 64)) != (255, 0, 255)  # none over stock


def test_samples_is_one_row_per_prompt(tiny_rpg: Any) -> None:
    sheet = samples_grid(tiny_rpg, ["a red circle", "a blue star"], [0], steps=1)
    assert sheet.size[1] == 2 * (128 + 4)


def test_the_command_writes_the_picture(rpg_cache: Path, tmp_path: Path) -> None:
    out = main(
        [
            "compare",
            "a red circle to the left of a blue square",
            "--model",
            "tiny-sd",
            "--out",
            str(tmp_path / "c.png"),
            "--seeds",
            "0",
            "--steps",
            "1",
            "--size",
            "64x32",
            "--option",
            "image_attention=region",
        ]
    )
    assert Image.open(out).size[1] == 18 + 2 * (128 + 4)
    with pytest.raises(SystemExit):
        main(
            [
                "compare",
                "x",
                "--model",
                "tiny-sd",
                "--out",
                str(tmp_path / "d.png"),
                "--option",
                "x",
            ]
        )


def test_readmes_picture_command_runs(rpg_cache: Path, tmp_path: Path) -> None:
    """README's first picture is made by the command beside it: its flags must stay valid."""
    import shlex

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("python -m rpg.eval.grid compare")
    command = readme[start : readme.index("```", start)].replace("\\\n", " ")
    argv = shlex.split(command)[3:]
    assert argv[0] == "compare" and "--size" in argv
    # the same flags on the tiny model, one seed, one step, into tmp_path
    swap = {"--model": "tiny-sd", "--out": str(tmp_path / "c.png"), "--seeds": "0", "--steps": "1"}
    for flag, value in swap.items():
        argv[argv.index(flag) + 1] = value
    assert main(argv).is_file()
