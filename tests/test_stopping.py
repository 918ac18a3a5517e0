"""Ctrl-C stops a render within one attention layer; a second Ctrl-C ends the process at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rpg.models import GenerationRequest, RegionPlan
from rpg.stopping import StopCallback, Stopped, stop_checks

PLAN = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"])


def _hook_count(pipe: Any) -> int:
    return sum(len(m._forward_pre_hooks) for m in pipe.pipe.unet.modules())


def test_a_set_event_stops_the_render_at_the_next_layer_and_hooks_are_removed(
    tiny_rpg: Any,
) -> None:
    event = threading.Event()
    layers: list[str] = []

    def count(module: Any, args: Any) -> None:
        layers.append(type(module).__name__)
        if len(layers) == 3:
            event.set()  # as the SIGINT watcher does, from "outside"

    counters = [
        m.register_forward_pre_hook(count)
        for m in tiny_rpg.pipe.unet.modules()
        if type(m).__name__ == "Attention"
    ]
    before = _hook_count(tiny_rpg)
    request = GenerationRequest(prompt="x", plan=PLAN, steps=4, seed=1, width=64, height=64)
    try:
        with pytest.raises(Stopped), stop_checks(tiny_rpg, event) as installed:
            assert installed > len(counters)
            tiny_rpg.generate(request)
    finally:
        for handle in counters:
            handle.remove()
    assert len(layers) == 3  # stopped before the fourth attention layer, in the first step
    assert _hook_count(tiny_rpg) == before - len(counters)  # the stop hooks are gone
    tiny_rpg.generate(request)  # and the next render runs


def test_stop_callback_stops_at_the_step_boundary(tiny_rpg: Any) -> None:
    event = threading.Event()
    steps: list[int] = []

    def user(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        steps.append(step)
        event.set()
        return tensors

    stop = StopCallback(event)

    def both(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
        return stop(pipe, step, timestep, user(pipe, step, timestep, tensors))

    request = GenerationRequest(prompt="x", plan=PLAN, steps=4, seed=1, width=64, height=64)
    with pytest.raises(Stopped):
        tiny_rpg.generate(request, callback_on_step_end=both)
    assert steps == [0]


# Runs 'rpg generate' with every attention layer of the UNet slowed down by SLEEP seconds; each
# layer appends a line to LOG as it starts, so the test counts the layers run after the SIGINT.
_SLOW = """
import sys, time
import rpg.cli.generate as generate
LOG, SLEEP = sys.argv[1], float(sys.argv[2])
original = generate.load_rpg

def slow_load(*args, **kwargs):
    pipe = original(*args, **kwargs)
    def slow(module, inputs):
        with open(LOG, "a") as fh:
            fh.write("layer\\n")
        time.sleep(SLEEP)
    for module in pipe.pipe.unet.modules():
        if type(module).__name__ == "Attention":
            module.register_forward_pre_hook(slow)
    return pipe

generate.load_rpg = slow_load
from rpg.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _start(tmp_path: Path, sleep: float, cache: Path) -> tuple[subprocess.Popen[str], Path]:
    log = tmp_path / "layers.log"
    env = {**os.environ, "RPG_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    args = ["generate", "x", "--plan", "plan.json", "--steps", "30", "--size", "64x64"]
    (tmp_path / "plan.json").write_text(PLAN.model_dump_json())
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW, str(log), str(sleep), *args, "--out", "out.png"],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    # the render is running: one layer has started (and, when layers are quick, a second)
    wanted = 1 if sleep > 60 else 2
    while not (log.is_file() and log.read_text().count("layer") >= wanted):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return proc, log


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
def test_first_sigint_stops_within_one_layer_with_status_130_and_no_file(
    tmp_path: Path, tiny_sd_path: Path
) -> None:
    proc, log = _start(tmp_path, 0.4, tiny_sd_path.parent)
    started = log.read_text().count("layer")
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    seconds = time.monotonic() - sent
    after = log.read_text().count("layer") - started
    assert proc.returncode == 130, err
    assert after <= 1, f"{after} layers ran after the SIGINT"  # the one running, at most
    assert "stopping after the current layer" in err and "interrupted" in err
    assert "Traceback" not in err
    assert not list(tmp_path.glob("out*.png*"))  # nothing written, not even a part file
    print(f"stopped {seconds:.2f} s after SIGINT, {after} layer(s) later")


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
def test_second_sigint_ends_the_process_at_once(tmp_path: Path, tiny_sd_path: Path) -> None:
    """A layer that takes 10 minutes cannot be waited for: the second SIGINT ends it all."""
    proc, _ = _start(tmp_path, 600, tiny_sd_path.parent)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert proc.poll() is None  # the first one waits for the layer
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "stopped at once" in err
    assert not list(tmp_path.glob("out*.png*"))


def test_checks_trace_as_no_ops_and_stop_a_compiled_unet_at_its_next_call(
    tiny_unet: Any,
) -> None:
    """``pipe.unet = torch.compile(unet)``: one graph, no break (the hooks inside are no-ops
    while compiling); the hook on the compiled module runs outside the graph, so a set event
    stops the next denoiser call, the step boundary."""
    import torch

    unet = tiny_unet.eval()
    compiled = torch.compile(unet, backend="eager", fullgraph=True)
    holder = type("Pipe", (), {"components": {"unet": compiled}})()
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor(10), torch.randn(1, 77, 32)
    event = threading.Event()
    with stop_checks(holder, event), torch.no_grad():
        explained = torch._dynamo.explain(unet)(x, t, ctx)
        assert explained.graph_count == 1 and explained.graph_break_count == 0
        compiled(x, t, ctx)  # fullgraph=True: a graph break would raise here
        event.set()
        with pytest.raises(Stopped):
            compiled(x, t, ctx)
