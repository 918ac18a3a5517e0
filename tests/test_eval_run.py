"""``rpg eval``: methods, prompt files, the resumable runner, the report and the command."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from rpg.cli import main
from rpg.errors import ConfigurationError
from rpg.eval.prompts import EvalPrompt, load_prompt_set, shapes_heldout_set
from rpg.eval.report import summarize, write_report
from rpg.eval.run import EvalMethod, parse_method, read_results, region_canvas, run_eval
from rpg.eval.scorers import ShapesScorer
from rpg.models import Region, RegionPlan, Row


def test_methods_parse_with_their_options() -> None:
    assert parse_method("stock") == EvalMethod(kind="stock")
    assert parse_method("rpg") == EvalMethod(kind="rpg", planner="rules")
    assert parse_method("rpg:ollama", "rules").planner == "ollama"
    m = parse_method("exact:base=0.6,kv=off")
    assert (m.kind, m.base_ratio, m.kv_cache) == ("exact", 0.6, False)
    assert m.label == "exact:base=0.6,kv=off"
    assert parse_method("rpg:rules:base=0").label == "rpg:rules:base=0"
    m = parse_method("exact:image_attention=region,group_norm=region")
    assert m.options == {"image_attention": "region", "group_norm": "region"}
    assert m.label == "exact:image_attention=region,group_norm=region"
    assert parse_method("rpg:regional_steps=0.5").options == {"regional_steps": 0.5}
    # a method without family options hashes as before they existed: old runs still resume
    assert "options" not in EvalMethod(kind="exact").model_dump(mode="json")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sdxl", "start with stock, rpg or exact"),
        ("exact:base=high", "base= takes a number"),
        ("exact:base=2", "less than or equal to 1"),
        ("exact:kv=maybe", "kv= takes on or off"),
        ("exact:colour=red", "unknown option 'colour' .*group_norm"),
        ("stock:group_norm=region", "takes no options"),
        ("stock:base=0.3", "takes no options"),
        ("exact:rules", "only 'rpg' takes a planner"),
    ],
)
def test_bad_methods_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_method(text)


def test_prompt_files_in_t2i_compbench_form_and_jsonl(tmp_path: Path) -> None:
    txt = tmp_path / "color_val.txt"
    txt.write_text("a red circle and a blue square\n\n  a green book and a yellow vase \n")
    items = load_prompt_set(txt)
    assert [i.prompt for i in items] == [
        "a red circle and a blue square",
        "a green book and a yellow vase",
    ]
    assert {i.category for i in items} == {"color_val"}
    assert items[0].objects == ("red circle", "blue square") and items[1].objects == ()

    plan = shapes_heldout_set()[0].plan
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text(
        '"a red star"\n'
        + json.dumps(
            {
                "prompt": "x",
                "category": "c",
                "objects": ["red circle", "blue star"],
                "plan": plan.model_dump(mode="json") if plan else None,
            }
        )
        + "\n"
    )
    items = load_prompt_set(jsonl)
    assert items[0].objects == ("red star",) and items[0].category == "set"
    assert items[1].plan == plan and items[1].object_regions() == list(plan.boxes())  # type: ignore[union-attr]

    (tmp_path / "bad.jsonl").write_text('{"category": "no prompt"}\n')
    with pytest.raises(ConfigurationError, match=r"bad\.jsonl:1: not a prompt"):
        load_prompt_set(tmp_path / "bad.jsonl")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ConfigurationError, match="holds no prompts"):
        load_prompt_set(tmp_path / "empty.txt")
    with pytest.raises(ConfigurationError, match="built-in sets: shapes-heldout"):
        load_prompt_set(tmp_path / "missing.txt")


def test_run_eval_scores_resumes_and_reports(tiny_rpg: Any, tmp_path: Path) -> None:
    items = shapes_heldout_set()[:1]
    methods = [parse_method("stock"), parse_method("rpg"), parse_method("exact:base=0")]
    rendered: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = dict(
        seeds=[0, 1],
        methods=methods,
        scorers=[ShapesScorer()],
        out_dir=tmp_path,
        steps=1,
        progress=False,
        on_record=rendered.append,
    )
    scheduler = tiny_rpg.pipe.scheduler
    records = run_eval(tiny_rpg, items, **kwargs)
    assert tiny_rpg.pipe.scheduler is scheduler  # the stock renders left the pipeline as found
    assert len(records) == len(rendered) == 6
    assert {r["method"] for r in records} == {"stock", "rpg:rules", "exact:base=0"}
    for r in records:
        assert (tmp_path / r["image"]).is_file()
        # precision is there when the scorer found anything in the random-weight image
        assert set(r["scores"]) - {"precision"} == {
            "binding",
            "placement",
            "correct",
            "extra_objects",
        }
        assert (r["plan"] is None) == (r["method"] == "stock")
    exact = next(r for r in records if r["method"] == "exact:base=0")
    assert exact["plan"]["base_ratio"] == 0
    assert len({r["key"] for r in records}) == 6

    # a second run renders nothing new; a torn last line and a missing image are redone
    rendered.clear()
    assert len(run_eval(tiny_rpg, items, **kwargs)) == 6 and rendered == []
    (tmp_path / records[0]["image"]).unlink()
    with (tmp_path / "results.jsonl").open("a") as f:
        f.write('{"key": "torn')
    run_eval(tiny_rpg, items, **kwargs)
    assert [r["key"] for r in rendered] == [records[0]["key"]]
    assert len(read_results(tmp_path)) == 7

    index = write_report(tmp_path, records, title="t", command="rpg eval x")
    page = index.read_text()
    assert page.count("<figure>") == 6 and "rpg eval x" in page
    assert 'href="' + records[0]["image"] in page
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org", "")
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert {(r["method"], r["category"]) for r in rows} >= {
        ("stock", "2 objects"),
        ("stock", "all"),
    }
    assert all(r["n"] == "2" for r in rows)


def test_region_canvas_gives_every_region_the_asked_size() -> None:
    halves = RegionPlan.from_split_ratio("1,1", ["a", "b"])
    assert region_canvas(halves, 64) == (128, 64)
    assert region_canvas(halves, 60) == (120, 64)  # 60 high rounds up to a multiple of 8
    assert region_canvas(RegionPlan.from_split_ratio("1,2", ["a", "b"]), 64) == (192, 64)
    stacked = RegionPlan(
        rows=[Row(regions=[Region(prompt="a")]), Row(regions=[Region(prompt="b")])]
    )
    assert region_canvas(stacked, 64) == (64, 128)
    four = shapes_heldout_set()[-1].plan
    assert four is not None and region_canvas(four, 64) == (256, 64)
    assert region_canvas(RegionPlan.single("a"), 64) == (64, 64)
    with pytest.raises(ConfigurationError, match="at least 8 pixels"):
        region_canvas(halves, 4)


def test_region_size_sizes_each_prompt_and_stock_renders_the_same_canvas(
    tiny_rpg: Any, tmp_path: Path
) -> None:
    two, four = shapes_heldout_set()[0], shapes_heldout_set()[-1]
    unplanned = EvalPrompt(prompt="a red circle and a blue square")
    methods = [parse_method("stock"), parse_method("exact"), parse_method("rpg")]
    common: dict[str, Any] = dict(seeds=[0], scorers=[], steps=1, region_size=32, progress=False)
    records = run_eval(tiny_rpg, [two, four], methods=methods, out_dir=tmp_path / "sized", **common)
    from PIL import Image

    sizes = {
        (r["prompt"], r["method"]): Image.open(tmp_path / "sized" / r["image"]).size
        for r in records
    }
    w2, h2 = region_canvas(two.plan, 32)  # type: ignore[arg-type]
    for method in ("stock", "exact", "rpg:rules"):
        assert sizes[(two.prompt, method)] == (w2, h2)
        assert sizes[(four.prompt, method)] == (128, 32)
    assert all(r["settings"]["width"] == sizes[(r["prompt"], r["method"])][0] for r in records)
    # the report keeps each image's aspect: 128×32 is drawn 160×40, its four regions 40 wide
    page = write_report(tmp_path / "sized", records, title="t").read_text()
    assert 'width="160" height="40"><image' in page
    assert '<rect x="40.0" y="0.0" width="40.0" height="40.0"' in page
    # a prompt without an exact plan keeps the model's native size
    (plain,) = run_eval(
        tiny_rpg, [unplanned], methods=methods[:1], out_dir=tmp_path / "plain", **common
    )
    native = tiny_rpg.backbone.native_size
    assert Image.open(tmp_path / "plain" / plain["image"]).size == native
    with pytest.raises(ConfigurationError, match="not both"):
        run_eval(tiny_rpg, [two], methods=methods, out_dir=tmp_path / "both", width=64, **common)


def test_summary_means_per_method_and_category() -> None:
    records = [
        {"method": "stock", "category": "a", "scores": {"placement": 0.0}},
        {"method": "stock", "category": "b", "scores": {"placement": 1.0}},
        {"method": "exact", "category": "a", "scores": {"placement": 1.0}},
    ]
    rows = {(r["method"], r["category"]): r for r in summarize(records)}
    assert rows[("stock", "all")]["placement"] == 0.5 and rows[("stock", "all")]["n"] == 2
    assert rows[("exact", "a")]["placement"] == 1.0 and ("exact", "b") not in rows


def test_exact_needs_plans(tiny_rpg: Any, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="has no exact plan"):
        run_eval(
            tiny_rpg,
            [EvalPrompt(prompt="a red circle")],
            seeds=[0],
            methods=[parse_method("exact")],
            scorers=[],
            out_dir=tmp_path,
            steps=1,
            progress=False,
        )


def test_the_command_writes_a_report(rpg_cache: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "report"
    code = main(
        [
            "eval",
            "shapes-heldout",
            "--model",
            "tiny-sd",
            "--out",
            str(out),
            "--seeds",
            "0",
            "--limit",
            "1",
            "--steps",
            "1",
            "--methods",
            "stock,exact:base=0.6,kv=off",
            "--no-progress",
            "--threads",
            "1",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "exact:base=0.6,kv=off" in text and "report:" in text
    assert len(read_results(out)) == 2 and (out / "index.html").is_file()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "nope"], "--methods: method 'nope'"),
        (["--scorers", "nope"], "unknown scorer 'nope'"),
        (["--seeds", "x"], "--seeds"),
        (["--steps", "0"], "--steps must be at least 1"),
        (["--scorer-option", "model"], "KEY=VALUE"),
        (["--size", "100x64"], "--size: 100x64 is not a multiple of 8; try 96x64"),
        (["--region-size", "4"], "--region-size must be at least 8 pixels"),
        (["--scorer-option", "scale=0"], "scale must be a positive number"),
        (["--scorers", "shapes", "--scorer-option", "model=x"], "takes only the option scale"),
    ],
)
def test_the_command_rejects_bad_options(
    argv: list[str], message: str, tmp_path: Path, capsys: Any
) -> None:
    code = main(["eval", "shapes-heldout", "--out", str(tmp_path / "r"), *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_the_command_reads_shapes_at_the_models_scale_on_any_canvas(
    rpg_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rpg.eval.shapes_score as shapes_score

    rows = [Row(regions=[Region(prompt="a red circle"), Region(prompt="a blue star")])] * 2
    item = EvalPrompt(
        prompt="a red circle, a blue star, a green square and a purple triangle",
        objects=("red circle", "blue star", "green square", "purple triangle"),
        plan=RegionPlan(rows=rows),
    )
    prompts = tmp_path / "quad.jsonl"
    prompts.write_text(item.model_dump_json() + "\n")
    seen: list[tuple[tuple[int, int], float | None]] = []
    read = shapes_score.read_image

    def spy(image: Any, scale: float | None = None) -> Any:
        seen.append((image.size, scale))
        return read(image, scale)

    monkeypatch.setattr(shapes_score, "read_image", spy)
    argv = ["eval", str(prompts), "--model", "tiny-sd", "--methods", "exact", "--seeds", "0"]
    argv += ["--steps", "1", "--no-progress", "--region-size", "64", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    # 2×2 regions of 64: a 128×128 canvas, read at tiny-sd's own scale (its native 64 is the
    # world's 64), not squeezed to 64×64 as the shorter-side default would
    assert seen == [((128, 128), 1.0)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--size", "wide"], "size must look like 768x512"),
        (["--size", "64x64", "--region-size", "64"], "not allowed with argument --size"),
    ],
)
def test_the_parser_rejects_bad_canvas_flags(
    argv: list[str], message: str, tmp_path: Path, capsys: Any
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "shapes-heldout", "--out", str(tmp_path / "r"), *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_exact_method_on_a_plain_text_file_is_a_usage_error(tmp_path: Path, capsys: Any) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    code = main(["eval", str(prompts), "--out", str(tmp_path / "r"), "--methods", "stock,exact"])
    assert code == 2
    assert "needs a plan for every prompt" in capsys.readouterr().err
