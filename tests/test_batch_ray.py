"""``rpg batch --ray`` on a local Ray instance (loopback, 2 CPUs, no dashboard) with tiny-sd."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

ray = pytest.importorskip(
    "ray", reason="the Ray engine needs ray: pip install 'rpg-diffusion[ray]'"
)

from ray import cloudpickle  # noqa: E402

from rpg.batch import expand_requests, read_manifest, read_requests, run_batch  # noqa: E402
from rpg.batch_ray import ModelSpec  # noqa: E402
from rpg.metadata import load_request  # noqa: E402

pytestmark = pytest.mark.ray

DEFAULTS = {"steps": 2, "width": 64, "height": 64, "model": "tiny-sd"}
SPEC = ModelSpec(model="tiny-sd", device="cpu", dtype="float32", planner="rules")
PROMPTS = [
    "a red cat on the left and a blue dog on the right",
    "a castle at the top and a lake at the bottom",
    "from left to right, an apple, a mug and a banana",
    "a lighthouse",
]


@pytest.fixture(scope="module")
def ray_cluster(tiny_sd_path: Path) -> Iterator[None]:
    """One local Ray instance for the module; its workers find tiny-sd through RPG_CACHE_DIR."""
    env = {"RPG_CACHE_DIR": str(tiny_sd_path.parent), "HF_HUB_OFFLINE": "1"}
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": env},
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


def _write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_eight_items_on_two_workers_write_the_local_engines_pixels(
    tmp_path: Path, ray_cluster: None, rpg_cache: Path
) -> None:
    src = _write_lines(tmp_path / "r.jsonl", [{"prompt": p} for p in PROMPTS])
    items = expand_requests(read_requests(src), defaults=DEFAULTS, seeds=[1, 2])
    assert len(items) == 8

    on_ray = tmp_path / "ray"
    report = run_batch(SPEC, items, on_ray, progress=False, engine="ray", workers=2)
    assert (report.done, report.failed, report.skipped, report.plans_made) == (8, 0, 0, 4)
    records = read_manifest(on_ray)
    assert {r["key"] for r in records.values()} == {item.key for item in items}
    assert len({r["worker"] for r in records.values()}) == 2  # both actors rendered
    assert {"status", "error", "files", "seconds", "worker"} <= set(next(iter(records.values())))

    # Each CPU actor runs torch on its share of the CPUs: 1 thread here. Float reductions depend
    # on the thread count (1/255 apart in a pixel or two otherwise), so the local engine gets
    # the same count for a bit-exact comparison.
    local = tmp_path / "local"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_batch(SPEC.load(), items, local, progress=False)
    finally:
        torch.set_num_threads(threads)
    local_records = read_manifest(local)
    assert set(local_records) == set(records)
    for key, record in records.items():
        (name,) = record["files"]
        assert local_records[key]["files"] == [name]
        assert load_request(on_ray / name) == load_request(local / name)
        assert np.array_equal(_pixels(on_ray / name), _pixels(local / name)), name
    assert not list(on_ray.glob(".*.part"))


def test_bad_lines_and_failing_renders_are_recorded_and_the_batch_goes_on(
    tmp_path: Path, ray_cluster: None
) -> None:
    src = _write_lines(
        tmp_path / "r.jsonl",
        [
            "{not json",
            {"prompt": "a cat", "width": 100},
            {"prompt": "a dog"},
            {"prompt": "a fox", "scheduler": "no-such-scheduler"},  # fails inside the worker
        ],
    )
    items = expand_requests(read_requests(src), defaults=DEFAULTS)
    report = run_batch(SPEC, items, tmp_path / "out", progress=False, engine="ray", workers=1)
    assert (report.done, report.failed) == (1, 3)
    errors = {r["line"]: r["error"] for r in report.records if r["status"] == "error"}
    assert "not valid JSON" in errors[1]
    assert "multiple of 8" in errors[2]
    assert "no-such-scheduler" in errors[4]
    assert len(read_manifest(tmp_path / "out")) == 4


def _done(out: Path) -> list[dict[str, Any]]:
    path = out / "manifest.jsonl"
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                record = json.loads(line)
                if record.get("status") == "done":
                    records.append(record)
    return records


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_a_driver_killed_with_sigkill_resumes_with_only_what_is_missing(
    tmp_path: Path, tiny_sd_path: Path, ray_cluster: None
) -> None:
    src = _write_lines(tmp_path / "r.jsonl", [{"prompt": f"a cat number {i}"} for i in range(8)])
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "rpg", "batch", str(src), "--out", str(out), "--model", "tiny-sd",
        "--planner", "rules", "--steps", "4", "--size", "64x64", "--device", "cpu",
        "--dtype", "float32", "--no-progress", "--ray", "--ray-address", "local",
        "--workers", "2",
    ]  # fmt: skip
    env = {
        **os.environ,
        "RPG_CACHE_DIR": str(tiny_sd_path.parent),
        "HF_HUB_OFFLINE": "1",
        "RAY_ADDRESS": "",
    }
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if len(_done(out)) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        if proc.stderr:
            proc.stderr.close()
    first = {r["key"] for r in _done(out)}
    assert 2 <= len(first) < 8
    recorded = {f for r in _done(out) for f in r["files"]}
    pngs = {p.name for p in out.glob("*.png")}
    # no partial image; at most the items in flight at the kill landed without their record
    assert len(pngs - recorded) <= 2

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(first)} already done" in rerun.stdout
    done = _done(out)
    assert len({r["key"] for r in done}) == 8
    assert len(done) == 8, "a finished item was rendered again"
    assert len(list(out.glob("*.png"))) == 8
    assert not list(out.glob(".*.part"))


def test_the_cli_checks_the_lines_ray_data_read_and_keys_items_as_the_local_engine(
    tmp_path: Path, ray_cluster: None, rpg_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rpg.cli import main

    mixed = _write_lines(tmp_path / "mixed.jsonl", ['"a cat"', {"prompt": "a dog", "model": "x"}])
    out = tmp_path / "out"
    flags = ["--planner", "rules", "--steps", "2", "--size", "64x64", "--device", "cpu"]
    flags += ["--dtype", "float32", "--no-progress"]
    assert main(["batch", str(mixed), "--out", str(out), "--model", "tiny-sd", *flags, "--ray"])
    assert "lines ask for x (line 2)" in capsys.readouterr().err
    assert not (out / "manifest.jsonl").exists()  # refused before anything rendered

    # the model comes from the lines; a rerun with the local engine finds the item done
    src = _write_lines(tmp_path / "r.jsonl", [{"prompt": "a cat", "model": "tiny-sd"}, '"a dog"'])
    assert main(["batch", str(src), "--out", str(out), *flags, "--ray", "--workers", "1"]) == 0
    assert "2 done, 0 already done" in capsys.readouterr().out
    assert main(["batch", str(src), "--out", str(out), *flags]) == 0
    assert "0 done, 2 already done" in capsys.readouterr().out


@dataclass(frozen=True)
class _DyingSpec(ModelSpec):
    """tiny-sd, but the worker process exits (as a crash or an OOM kill would) on "die"."""

    def load(self) -> Any:
        pipe = super().load()
        generate = pipe.generate

        def generate_or_die(request: Any, *args: Any, **kwargs: Any) -> Any:
            if request.prompt == "die":
                os._exit(1)
            return generate(request, *args, **kwargs)

        pipe.generate = generate_or_die
        return pipe


def test_an_item_whose_worker_dies_is_recorded_as_failed_and_the_batch_goes_on(
    tmp_path: Path, ray_cluster: None
) -> None:
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers can't import tests
    try:
        spec = _DyingSpec(**{f.name: getattr(SPEC, f.name) for f in fields(SPEC)})
        src = _write_lines(tmp_path / "r.jsonl", [{"prompt": p} for p in ("a cat", "die", "a dog")])
        items = expand_requests(read_requests(src), defaults=DEFAULTS)
        report = run_batch(spec, items, tmp_path / "out", progress=False, engine="ray", workers=1)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert (report.done, report.failed) == (2, 1)
    (failed,) = [r for r in read_manifest(tmp_path / "out").values() if r["status"] == "error"]
    assert (failed["line"], failed["prompt"]) == (2, "die")
    assert "died" in failed["error"]
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
