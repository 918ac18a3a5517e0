"""No host synchronisation in the per-step path: what rpg adds to a denoiser forward, measured.

A ``TorchDispatchMode`` (:class:`rpg.attention.diagnostics.HostSyncCounter`) records every op
that makes the host wait for the device — ``aten._local_scalar_dense`` (``.item()``,
``float(t)``, ``.tolist()``), ``aten.equal``, ``aten.is_nonzero``, ``aten.nonzero`` and
device-to-host copies — inside each forward of the denoiser (and the ControlNet), its
pre-hooks included. The stock pipeline is measured in the same test; rpg may add none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from compile_helpers import (
    count_host_syncs,
    edit_render,
    load,
    render,
    request,
    stock,
    stock_inpaint,
    write_models,
)
from rpg.attention.diagnostics import HostSyncCounter


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("rpg-syncs"))


def test_the_counter_sees_each_kind_of_sync() -> None:
    x = torch.arange(4.0)
    with HostSyncCounter() as counter:
        x.sum().item()
        float(x[1])
        torch.equal(x, x)
        if x[2]:
            pass
        torch.nonzero(x)
        x.tolist()
    assert counter.counts == {"item": 3, "equal": 1, "nonzero": 1, "tolist": 1}
    with HostSyncCounter() as quiet:
        (x * 2 + 1).softmax(0)
    assert quiet.syncs == 0


def _count(pipe: Any, run: Any) -> HostSyncCounter:
    counter = count_host_syncs(pipe, run)
    assert counter.calls > 0
    return counter


CASES = [
    ("tiny-sd", {}, {}),
    ("tiny-sdxl", {"base": False}, {}),
    ("tiny-sd-controlnet", {}, {}),
    ("tiny-sd", {"base": False, "options": {"regional_steps": 0.5, "image_attention": "region",
                                            "group_norm": "region"}}, {}),
    ("tiny-flux", {"true_cfg_scale": 2.0, "regional_steps": 0.5},
     {"true_cfg_scale": 2.0, "negative_prompt": "blurry"}),
    ("tiny-sd3", {"base": False, "regional_steps": 0.5, "image_attention": "region"}, {}),
    ("tiny-flux2-klein", {"regional_steps": 0.5}, {}),
    ("tiny-sd", {"canvas": "soft"}, {}),
    ("tiny-sdxl", {"canvas": "hard", "base": False}, {}),
    ("tiny-sd3", {"canvas": "soft", "image_attention": "region"}, {}),
    ("tiny-flux2-klein", {"canvas": "soft", "base": False}, {}),
]  # fmt: skip


@pytest.mark.parametrize(("name", "fields", "stock_call"), CASES, ids=lambda x: str(x))
def test_rpg_adds_no_host_sync_per_step(
    models: Path, name: str, fields: dict, stock_call: dict
) -> None:
    rpg = load(models, name)
    req = request(**fields)
    ours = _count(rpg.pipe, lambda: render(rpg, name, req))
    theirs = _count(rpg.pipe, lambda: stock(rpg, name, **stock_call))
    assert ours.calls == theirs.calls  # the same forwards: CFG as stock runs it
    for kind in set(ours.counts) | set(theirs.counts):
        assert ours.counts[kind] <= theirs.counts[kind], (kind, ours.counts, theirs.counts)
    assert ours.host_to_device <= theirs.host_to_device


@pytest.mark.parametrize(
    "fields",
    [{"regional_steps": 0.5}, {"canvas": "soft", "base": False, "image_attention": "region"}],
    ids=str,
)
def test_klein_edit_adds_no_host_sync_per_step(models: Path, fields: dict) -> None:
    """``rpg edit`` on klein: the inpainting pipeline's condition tokens are mapped by index
    tensors made before the loop, as the noisy ones are."""
    rpg = load(models, "tiny-flux2-klein")
    req = request(**fields)
    result: list[Any] = []
    ours = _count(rpg.pipe, lambda: result.append(edit_render(rpg, req)))
    theirs = _count(rpg.pipe, lambda: stock_inpaint(rpg, req, result[0].mask))
    assert ours.calls == theirs.calls  # CFG: a positive and a negative forward per step
    for kind in set(ours.counts) | set(theirs.counts):
        assert ours.counts[kind] <= theirs.counts[kind], (kind, ours.counts, theirs.counts)
    assert ours.host_to_device <= theirs.host_to_device
