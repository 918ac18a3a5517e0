"""Quiet by default with one labelled bar per render; one model-loading path; one default
planner for the library and the command."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pytest

import rpg
from rpg.cli import main
from rpg.models import GenerationRequest, PlanResult, RegionPlan
from rpg.planners.base import DEFAULT_PLANNER
from rpg.progress import BarProgress, LineProgress, close_bars, progress_for, step_callback

PROMPT = "A red cat on the left and a blue dog on the right"
# tqdm's rate for the stock pipeline's bar ("it/s", "s/it"); rpg's bar counts steps.
PIPELINE_BAR = re.compile(r"\d(it/s|s/it)\]")


class Recorder:
    """A RenderProgress that remembers what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def start(self, steps: int) -> None:
        self.events.append(("start", steps))

    def stage(self, name: str) -> None:
        self.events.append(("stage", name))

    def step(self, done: int, total: int) -> None:
        self.events.append(("step", done, total))

    def finish(self) -> None:
        self.events.append(("finish",))


def test_generate_reports_every_stage_and_step(tiny_rpg: Any) -> None:
    recorder = Recorder()
    seen: list[int] = []

    def user_callback(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
        seen.append(step)
        return tensors

    tiny_rpg.progress = recorder
    try:
        tiny_rpg.generate(
            GenerationRequest(prompt=PROMPT, steps=3, seed=1), callback_on_step_end=user_callback
        )
    finally:
        tiny_rpg.progress = rpg.progress.NoProgress()
    stages = [e[1] for e in recorder.events if e[0] == "stage"]
    assert recorder.events[0] == ("start", 3)
    assert recorder.events[-1] == ("finish",)
    assert stages[:3] == ["plan", "encode", "denoise"] and stages[-1] == "decode"
    assert [e[1:] for e in recorder.events if e[0] == "step"] == [(1, 3), (2, 3), (3, 3)]
    assert seen == [0, 1, 2]  # the caller's callback still runs


def test_no_progress_leaves_the_callback_alone() -> None:
    def callback(*args: Any) -> Any:
        return args[-1]

    assert step_callback(rpg.progress.NoProgress(), callback) is callback


def test_bar_is_labelled_with_the_stage_and_counts_steps() -> None:
    out = io.StringIO()
    bar = BarProgress(file=out)
    bar.start(4)
    bar.stage("denoise")
    for done in range(1, 5):
        bar.step(done, 4)
    bar.stage("decode")
    bar.finish()
    text = out.getvalue()
    assert "denoise" in text and "4/4" in text and "decode" in text


def test_generate_shows_one_bar_and_no_library_output(
    rpg_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.png"
    assert main(["generate", PROMPT, "--steps", "2", "--seed", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "denoise" in err and "2/2" in err and "step" in err
    assert not PIPELINE_BAR.search(err), err  # neither the pipeline's nor a loading bar
    assert "Loading" not in err and "torchvision" not in err and "[transformers]" not in err

    assert main(["generate", PROMPT, "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "denoise" not in err and "2/2" not in err
    lines = [x for x in err.splitlines() if x.strip()]
    assert all(x.startswith("note: 'tiny-sd' has random weights") for x in lines), lines


def test_batch_prints_every_failure_and_its_reason(
    rpg_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = tmp_path / "requests.jsonl"
    lines = [json.dumps(PROMPT), json.dumps({"prompt": PROMPT, "steps": 0}), "{not json"]
    requests.write_text("\n".join(lines) + "\n")
    code = main(["batch", str(requests), "--out", str(tmp_path / "out"), "--steps", "1"])
    assert code == 1
    err = capsys.readouterr().err
    failures = [x for x in err.splitlines() if x.startswith("rpg batch: error: line ")]
    assert len(failures) == 2, err
    assert failures[0].startswith("rpg batch: error: line 2") and "steps" in failures[0]
    assert failures[1].startswith("rpg batch: error: line 3")


# ----------------------------------------------------------------------------- loading, planner


def test_cli_loads_models_through_from_pretrained(
    rpg_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rpg.orchestrator import RPG

    calls: list[tuple[Any, dict[str, Any]]] = []
    original = RPG.from_pretrained.__func__  # type: ignore[attr-defined]

    def spy(cls: type[RPG], model: Any, **kwargs: Any) -> RPG:
        calls.append((model, kwargs))
        result: RPG = original(cls, model, **kwargs)
        return result

    monkeypatch.setattr(RPG, "from_pretrained", classmethod(spy))
    out = tmp_path / "x.png"
    assert main(["generate", PROMPT, "--steps", "1", "--out", str(out), "--no-progress"]) == 0
    assert len(calls) == 1
    model, kwargs = calls[0]
    assert model == "tiny-sd"
    assert kwargs["planner"].name == DEFAULT_PLANNER  # made before the model, then handed on


def test_one_default_planner_for_library_and_command(
    tiny_sd_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # With a key in the environment the default must still be the offline planner, in the
    # library and on the command line alike (nothing leaves the machine unless asked).
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-used")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    from rpg.orchestrator import RPG

    pipe = RPG.from_pretrained(tiny_sd_path, device="cpu")
    assert pipe.get_planner().name == DEFAULT_PLANNER == rpg.create_planner().name
    assert main(["plan", PROMPT, "--json", "--no-cache"]) == 0
    assert PlanResult.model_validate_json(capsys.readouterr().out).planner == DEFAULT_PLANNER
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    assert f"default '{DEFAULT_PLANNER}'" in capsys.readouterr().out


def test_auto_records_the_planner_it_chose(
    rpg_cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rpg.metadata import load_request

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # nothing answers: auto → rules
    out = tmp_path / "x.png"
    args = ["generate", PROMPT, "--planner", "auto", "--steps", "1", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    request = load_request(out)
    assert request.planner == "rules"
    assert isinstance(request.plan, RegionPlan) and len(request.plan.regions) == 2


def test_stages_before_the_denoising_show_no_step_counter() -> None:
    """ "plan…", not "plan 0/30 step/s": plan and encode have no steps to count."""
    out = io.StringIO()
    bar = BarProgress(file=out)
    bar.start(30)
    bar.stage("encode")
    before = out.getvalue()
    bar.stage("denoise")
    bar.step(3, 30)
    bar._bar.refresh()  # tqdm redraws at most every 0.1 s on its own
    after = out.getvalue()[len(before) :]
    bar.finish()
    assert "plan…" in before and "encode…" in before
    assert "0/30" not in before and "step/s" not in before and "?" not in before
    assert "3/30" in after


def test_without_a_terminal_progress_is_a_few_plain_lines() -> None:
    out = io.StringIO()
    assert isinstance(progress_for(out), LineProgress)  # StringIO is no terminal
    progress = LineProgress(file=out)
    progress.start(30)
    for stage in ("plan", "encode", "denoise"):
        progress.stage(stage)
    for done in range(1, 31):
        progress.step(done, 30)
    progress.stage("decode")
    progress.finish()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[:3] == ["plan…", "encode…", "denoise: 30 steps"]
    assert [x.split(" (")[0] for x in lines[3:]] == [
        "denoise: 8/30 steps",
        "denoise: 16/30 steps",
        "denoise: 24/30 steps",
        "denoise: 30/30 steps",
        "decode…",
    ]


def test_close_bars_clears_an_open_bar_before_an_error() -> None:
    out = io.StringIO()
    bar = BarProgress(file=out)
    bar.start(4)
    bar.stage("denoise")
    bar.step(1, 4)
    close_bars()
    assert bar._bar is None
    close_bars()  # nothing left to close


def test_an_error_during_a_render_starts_on_its_own_line(
    rpg_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    from rpg.backbones.sd import StableDiffusionBackbone

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the denoiser broke")

    monkeypatch.setattr(StableDiffusionBackbone, "render", fail)
    out = tmp_path / "x.png"
    assert main(["generate", PROMPT, "--steps", "2", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "denoise: 2 steps\nrpg generate: error: the denoiser broke\n" in err
