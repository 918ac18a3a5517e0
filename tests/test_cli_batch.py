"""``rpg batch`` as a user runs it, including a hard kill midway and a resume."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rpg.cli import main
from rpg.cli.batch import parse_seeds


def _manifest(out: Path) -> list[dict[str, object]]:
    path = out / "manifest.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def test_parse_seeds() -> None:
    assert parse_seeds("1,2,3") == [1, 2, 3]
    assert parse_seeds("4-6,9") == [4, 5, 6, 9]
    for bad in ("a", "3-1", "-2"):
        with pytest.raises(Exception, match="seeds"):
            parse_seeds(bad)


def test_batch_command_reports_and_exits_non_zero_on_failed_items(
    tmp_path: Path, rpg_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "requests.jsonl"
    src.write_text('{"prompt": "a cat on the left and a dog on the right"}\n{"prompt": ""}\n')
    out = tmp_path / "out"
    args = ["batch", str(src), "--out", str(out), "--model", "tiny-sd", "--planner", "rules"]
    code = main([*args, "--steps", "2", "--seeds", "3,4", "--no-progress"])
    assert code == 1  # the empty prompt failed (once per seed); the rest still rendered
    assert "2 done, 0 already done, 2 failed, 1 plan made" in capsys.readouterr().out
    assert len(list(out.glob("*.png"))) == 2


def test_missing_requests_file_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["batch", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)]) == 1
    assert "requests file not found" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_batch_resumes_without_redoing_finished_items(
    tmp_path: Path, rpg_cache: Path
) -> None:
    src = tmp_path / "requests.jsonl"
    src.write_text("".join(json.dumps({"prompt": f"a cat number {i}"}) + "\n" for i in range(6)))
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "rpg", "batch", str(src), "--out", str(out),
        "--model", "tiny-sd", "--planner", "rules", "--steps", "4", "--no-progress",
    ]  # fmt: skip
    env = {**os.environ, "RPG_CACHE_DIR": str(rpg_cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if sum(r.get("status") == "done" for r in _manifest(out)) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the batch finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    finished_first = {r["key"] for r in _manifest(out) if r.get("status") == "done"}
    assert 2 <= len(finished_first) < 6
    # no partial image: every PNG on disk is one the manifest records as finished
    recorded = {f for r in _manifest(out) if r.get("status") == "done" for f in r["files"]}  # type: ignore[attr-defined]
    assert {p.name for p in out.glob("*.png")} <= recorded

    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    records = _manifest(out)
    done_keys = [r["key"] for r in records if r.get("status") == "done"]
    assert len(set(done_keys)) == 6
    assert len(done_keys) == 6, "a finished item was rendered again"
    assert len(list(out.glob("*.png"))) == 6
    assert not list(out.glob("*.part"))


def test_lines_that_name_another_model_are_refused_before_loading(
    tmp_path: Path, rpg_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "requests.jsonl"
    src.write_text('{"prompt": "a cat"}\n{"prompt": "a dog", "model": "tiny-sdxl"}\n')
    out = tmp_path / "out"
    assert main(["batch", str(src), "--out", str(out), "--model", "tiny-sd", "--no-progress"]) == 1
    assert "tiny-sdxl (line 2)" in capsys.readouterr().err
    assert not out.exists()


def test_the_model_the_lines_name_is_loaded_and_recorded(tmp_path: Path, rpg_cache: Path) -> None:
    from rpg.metadata import load_request

    src = tmp_path / "requests.jsonl"
    src.write_text('{"prompt": "a cat", "model": "tiny-sd", "seed": 5}\n')
    out = tmp_path / "out"
    argv = ["batch", str(src), "--out", str(out), "--steps", "1", "--size", "64x64"]
    assert main([*argv, "--planner", "rules", "--no-progress"]) == 0
    (png,) = out.glob("*.png")
    request = load_request(png)
    assert (request.model, request.seed) == ("tiny-sd", 5)  # the line's own seed is kept


def test_ray_options_without_ray_are_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "requests.jsonl"
    src.write_text('{"prompt": "a cat"}\n')
    assert main(["batch", str(src), "--out", str(tmp_path / "o"), "--workers", "2"]) == 1
    assert "--ray-address and --workers go with --ray" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["batch", str(src), "--out", str(tmp_path / "o"), "--ray", "--workers", "0"])
    assert exited.value.code == 2
    assert "--workers: must be a whole number of at least 1" in capsys.readouterr().err


def test_ray_engine_without_ray_installed_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    src = tmp_path / "requests.jsonl"
    src.write_text('{"prompt": "a cat"}\n')
    out = tmp_path / "out"
    assert main(["batch", str(src), "--out", str(out), "--ray", "--no-progress"]) == 1
    assert "pip install 'rpg-diffusion[ray]'" in capsys.readouterr().err
    assert not out.exists()


def test_without_model_a_line_naming_another_model_is_refused_not_adopted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A line's model never becomes the model of the other lines."""
    src = tmp_path / "requests.jsonl"
    src.write_text('{"prompt": "a cat"}\n{"prompt": "a dog", "model": "tiny-sdxl"}\n')
    out = tmp_path / "out"
    assert main(["batch", str(src), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "one model, --model (tiny-sd, the default)" in err
    assert "tiny-sdxl (line 2)" in err and "pass --model tiny-sdxl" in err
    assert not out.exists()


def test_options_are_defaults_that_lines_override_and_seeds_are_drawn_and_kept(
    tmp_path: Path, rpg_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rpg.metadata import load_request

    src = tmp_path / "requests.jsonl"
    src.write_text(
        '{"prompt": "a cat", "steps": 1, "negative_prompt": "blurry"}\n'
        '{"prompt": "a dog"}\n'
        '{"prompt": "a fox", "seed": 7}\n'
    )
    out = tmp_path / "out"
    argv = ["batch", str(src), "--out", str(out), "--size", "64x64", "--planner", "rules"]
    argv += ["--steps", "2", "--negative", "dark", "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    requests = {load_request(p).prompt: load_request(p) for p in out.glob("*.png")}
    cat, dog, fox = requests["a cat"], requests["a dog"], requests["a fox"]
    assert (cat.steps, cat.negative_prompt) == (1, "blurry")  # the line wins
    assert (dog.steps, dog.negative_prompt) == (2, "dark")  # the options fill in
    assert fox.seed == 7
    assert cat.seed is not None and dog.seed is not None
    records = {r["prompt"]: r for r in _manifest(out)}
    assert records["a cat"]["seed"] == cat.seed and "unseeded" in records["a cat"]
    assert "unseeded" not in records["a fox"]

    assert main(argv) == 0  # resume: the drawn seeds are found again, nothing re-renders
    assert "0 done, 3 already done" in capsys.readouterr().out

    again = tmp_path / "again"
    assert main([*argv[:3], str(again), *argv[4:]]) == 0  # a new batch draws new seeds
    fresh = {load_request(p).prompt: load_request(p).seed for p in again.glob("*.png")}
    assert (fresh["a cat"], fresh["a dog"]) != (cat.seed, dog.seed)
    assert fresh["a fox"] == 7


def test_a_megabyte_prompt_is_an_error_for_its_line_and_stays_out_of_the_manifest(
    tmp_path: Path, rpg_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "requests.jsonl"
    src.write_text(json.dumps({"prompt": "x " * 700_000}) + "\n")
    out = tmp_path / "out"
    assert main(["batch", str(src), "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "rpg batch: error: line 1: prompt: String should have at most 10000 characters\n" in err
    assert (out / "manifest.jsonl").stat().st_size < 2000


def test_a_drawn_seed_is_drawn_again_for_an_item_killed_before_its_record(
    tmp_path: Path, rpg_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kill between writing an image and recording it must not leave an orphan: the rerun
    draws the same seed (from the folder's salt), so it rewrites the same file."""
    src = tmp_path / "requests.jsonl"
    src.write_text('{"prompt": "a cat"}\n{"prompt": "a dog"}\n')
    out = tmp_path / "out"
    argv = ["batch", str(src), "--out", str(out), "--size", "64x64", "--steps", "1"]
    argv += ["--planner", "rules", "--no-progress"]
    assert main(argv) == 0
    first = sorted(p.name for p in out.glob("*.png"))
    (out / "manifest.jsonl").unlink()  # as if killed before the records were written
    assert main(argv) == 0
    assert "2 done, 0 already done" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.png")) == first
