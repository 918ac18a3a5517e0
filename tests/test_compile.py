"""torch.compile with rpg installed: one graph per regional forward, no recompiles, same pixels.

Every backbone's denoiser (and the ControlNet model) is compiled in one of the three forms users
write — ``module.compile()``, ``pipe.unet = torch.compile(pipe.unet)`` before handing the
pipeline to ``RPG.from_pipeline``, diffusers' ``compile_repeated_blocks()`` — with
``fullgraph=True`` (a graph break raises) and a counting backend that runs the graphs eagerly.
Two renders of the same request then must compile nothing after the first step of the first
render (``regional_steps < 1`` compiles the non-regional variant once, at the step where it
starts), and give the eager render's latents.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from compile_helpers import denoiser_names, edit_render, load, render, request, write_models
from rpg import RPG
from rpg.attention.diagnostics import CompileCounter, graph_breaks


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("rpg-compile"))


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def compile_denoisers(rpg: RPG, form: str, backend: Any) -> RPG:
    """Compile every denoiser of ``rpg`` in ``form``; the RPG to render with."""
    pipe = rpg.pipe
    for attr in denoiser_names(pipe):
        module = getattr(pipe, attr)
        if form == "method":
            module.compile(backend=backend, fullgraph=True)
        elif form == "wrap":
            setattr(pipe, attr, torch.compile(module, backend=backend, fullgraph=True))
        elif getattr(module, "_repeated_blocks", None):
            module.compile_repeated_blocks(backend=backend, fullgraph=True)
    if form == "wrap":  # as diffusers' docs show it: compile, assign back, then wrap
        rpg = RPG.from_pipeline(pipe)
    return rpg


CASES = [
    # the UNet family
    ("tiny-sd", "method", {}),
    ("tiny-sd", "wrap", {"base": False}),
    ("tiny-sd", "repeated", {}),
    ("tiny-sd", "method", {"options": {"image_attention": "region", "group_norm": "region"}}),
    ("tiny-sd", "wrap", {"base": False, "options": {"regional_steps": 0.5}}),
    (
        "tiny-sd",
        "method",
        {"options": {"regional_steps": 0.5, "image_attention": "region", "group_norm": "region"}},
    ),
    ("tiny-sdxl", "method", {"base": False}),
    ("tiny-sd-controlnet", "wrap", {}),
    (
        "tiny-sd-controlnet",
        "method",
        {"options": {"image_attention": "region", "group_norm": "region"}},
    ),
    ("tiny-sdxl", "repeated", {"base": False, "options": {"group_norm": "region"}}),
    # MM-DiT
    ("tiny-flux", "method", {"true_cfg_scale": 2.0, "regional_steps": 0.5}),
    ("tiny-flux", "repeated", {"base": False, "image_attention": "region", "regional_blocks": 2}),
    ("tiny-sd3", "wrap", {"base": False, "image_attention": "region", "regional_steps": 0.5}),
    ("tiny-sd3", "method", {}),
    ("tiny-flux2-klein", "repeated", {"regional_steps": 0.5}),
    ("tiny-flux2-klein", "method", {"base": False, "image_attention": "region"}),
    # canvas plans: hard boxes over a background, and a feathered mask (soft grids)
    ("tiny-sd", "method", {"canvas": "soft"}),
    ("tiny-sd", "wrap", {"canvas": "hard", "base": False}),
    ("tiny-sd", "repeated", {"canvas": "hard", "options": {"image_attention": "region"}}),
    ("tiny-flux", "method", {"canvas": "soft", "base": False}),
    ("tiny-sd3", "method", {"canvas": "hard", "image_attention": "region"}),
]


@pytest.mark.parametrize(("name", "form", "fields"), CASES, ids=lambda x: str(x))
def test_compiled_regional_render(models: Path, name: str, form: str, fields: dict) -> None:
    req = request(**fields)
    rpg = load(models, name)
    if not hasattr(rpg.pipe, "transformer"):
        assert rpg.backbone.cache_kv  # the UNet's key/value cache is on, as by default
        # named, so the RPG that from_pipeline makes (which keeps the pipeline's own scheduler
        # when a request names none) uses the same one as this eager render
        req = req.model_copy(update={"scheduler": "dpm++2m-karras"})
    eager = render(rpg, name, req)

    rpg = compile_denoisers(rpg, form, counter := CompileCounter())
    latents = _two_compiled_renders(
        counter, req, lambda on_step: render(rpg, name, req, callback_on_step_end=on_step)
    )
    for got in latents:
        torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)


def test_wrapped_models_are_served_and_restored(models: Path) -> None:
    """``torch.compile(unet)`` assigned back: the processors go on the module it compiles."""
    rpg = load(models, "tiny-sd")
    inner = rpg.pipe.unet
    before = dict(inner.attn_processors)
    rpg.pipe.unet = torch.compile(inner, backend="eager")
    rpg = RPG.from_pipeline(rpg.pipe)
    seen: list[str] = []

    def spy(pipe: Any, i: int, t: Any, kw: dict[str, Any]) -> dict:
        seen.extend(type(p).__name__ for p in inner.attn_processors.values())
        return {}

    render(rpg, "tiny-sd", request(steps=1), callback_on_step_end=spy)
    assert "RegionalAttnProcessor" in seen
    assert dict(inner.attn_processors) == before


@pytest.mark.parametrize(
    ("form", "fields"),
    [("repeated", {"regional_steps": 0.5}), ("method", {"canvas": "soft", "base": False})],
    ids=str,
)
def test_compiled_klein_edit(models: Path, form: str, fields: dict) -> None:
    """``rpg edit`` on klein (Flux2KleinInpaintPipeline: condition tokens after the noisy
    ones) compiles without graph breaks or recompiles and repaints the eager edit's pixels."""
    import numpy as np

    req = request(**fields)
    rpg = load(models, "tiny-flux2-klein")
    eager = np.asarray(edit_render(rpg, req).image, dtype=int)

    rpg = compile_denoisers(rpg, form, counter := CompileCounter())
    images = _two_compiled_renders(
        counter, req, lambda on_step: edit_render(rpg, req, callback_on_step_end=on_step).image
    )
    for got in images:
        assert np.abs(np.asarray(got, dtype=int) - eager).max() <= 1


def _two_compiled_renders(
    counter: CompileCounter, req: Any, run: Callable[[Any], Any]
) -> list[Any]:
    """Two renders of ``req`` (``run(on_step)``), marking each step; asserts what compiled.

    No graph break; graphs only in the first render's first step, except one more, once, where
    ``regional_steps < 1`` stops the image being regional after the first of two steps.
    """
    results = []
    for r in range(2):
        counter.mark(f"r{r} s0")

        def on_step(pipe: Any, i: int, t: Any, kw: dict[str, Any], r: int = r) -> dict:
            counter.mark(f"r{r} s{i + 1}")
            return {}

        results.append(run(on_step))
    assert not graph_breaks()
    assert counter.graphs, "nothing was compiled"
    late = [p for p in counter.graphs if p != "r0 s0"]
    if req.options.get("regional_steps", 1.0) < 1:
        assert late == ["r0 s1"] * late.count("r0 s1") and 1 <= len(late) <= 2
    else:
        assert late == []
    return results
