"""``torch.inference_mode()`` and ``torch.no_grad()`` around every entry point, cache on and off.

Tensors made under inference mode have no version counter; the key/value cache's fingerprint
must not read one. Each combination renders the same pixels as a plain call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL.Image import Image

from attention_helpers import two_by_two
from rpg.attention import RegionalAttnProcessor, regional
from rpg.models import GenerationRequest, PlanResult, Recaption, RegionPlan
from rpg.orchestrator import RPG
from rpg.planners.feedback import EditPlan, RegionChange, Review

PLAN = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"], base_prompt="pets")
REVISED = RegionPlan.from_split_ratio("1;1", ["a red cat", "a blue dog"])

MODES: dict[str, Callable[[], AbstractContextManager[Any]]] = {
    "inference_mode": torch.inference_mode,
    "no_grad": torch.no_grad,
}


class LocalReviewer:
    """A multimodal planner that answers without a server: one revision, then an edit."""

    name = "local-reviewer"
    supports_images = True

    def plan(self, prompt: str, *, image: Image | None = None) -> PlanResult:
        return PlanResult(recaption=Recaption(original_prompt=prompt), plan=PLAN)

    def review(self, prompt: str, plan: RegionPlan, image: Image) -> Review:
        if plan == REVISED:
            return Review(critique="fine", done=True)
        return Review(critique="stack them", done=False, plan=REVISED)

    def plan_edit(self, instruction: str, image: Image, plan: RegionPlan | None = None) -> EditPlan:
        return EditPlan(
            explanation="e", plan=plan, changes=[RegionChange(index=1, prompt="a green frog")]
        )


@pytest.fixture(scope="module")
def rpg(tiny_sd_path: Path) -> RPG:
    pipe = RPG.from_pretrained(tiny_sd_path, device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    return pipe


@contextmanager
def kv_cache(rpg: RPG, on: bool) -> Iterator[None]:
    before = rpg.backbone.cache_kv
    rpg.backbone.cache_kv = on
    try:
        yield
    finally:
        rpg.backbone.cache_kv = before


def _request(**kw: Any) -> GenerationRequest:
    fields: dict[str, Any] = {"prompt": "pets", "plan": PLAN, "seed": 3, "steps": 3}
    return GenerationRequest(**{**fields, **kw})


def _pixels(image: Image) -> np.ndarray:
    return np.asarray(image).astype(int)


@pytest.fixture(scope="module")
def plain_generate(rpg: RPG) -> np.ndarray:
    return _pixels(rpg.generate(_request(num_images=2)).images[1])


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("mode", list(MODES))
def test_generate(rpg: RPG, plain_generate: np.ndarray, mode: str, cache: bool) -> None:
    with kv_cache(rpg, cache), MODES[mode]():
        result = rpg.generate(_request(num_images=2))
    assert np.array_equal(_pixels(result.images[1]), plain_generate)


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("mode", list(MODES))
def test_refine(rpg: RPG, mode: str, cache: bool) -> None:
    with kv_cache(rpg, cache), MODES[mode]():
        result = rpg.refine(_request(), rounds=2, planner=LocalReviewer())
    assert [r.plan for r in result.rounds] == [PLAN, REVISED]
    assert result.stop_reason == "done"
    again = rpg.generate(_request(plan=REVISED))
    assert np.array_equal(_pixels(result.rounds[1].image), _pixels(again.images[0]))


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("mode", list(MODES))
def test_edit(rpg: RPG, mode: str, cache: bool) -> None:
    source = rpg.generate(_request()).images[0]
    with kv_cache(rpg, cache), MODES[mode]():
        out = rpg.edit(source, "make the dog a frog", planner=LocalReviewer(), plan=PLAN, seed=1)
    plain = rpg.edit(source, "make the dog a frog", planner=LocalReviewer(), plan=PLAN, seed=1)
    assert out.plan.prompts == ["a red cat", "a green frog"]
    assert np.array_equal(_pixels(out.image), _pixels(plain.image))


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "no-cache"])
@pytest.mark.parametrize("mode", list(MODES))
def test_regional_building_block(tiny_unet: Any, mode: str, cache: bool) -> None:
    conditioning, layout = two_by_two()
    context = torch.randn(2, 25, 32, generator=torch.Generator().manual_seed(1))
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    steps = [torch.tensor(500), torch.tensor(400)]
    with torch.no_grad(), regional(tiny_unet, conditioning, layout, guidance=True) as plain:
        expected = [tiny_unet(sample, t, encoder_hidden_states=context).sample for t in steps]
    assert plain.projections > 0
    with MODES[mode]():
        context = context.clone()  # an inference tensor under inference_mode
        with regional(tiny_unet, conditioning, layout, guidance=True, cache_kv=cache) as processor:
            got = [tiny_unet(sample, t, encoder_hidden_states=context).sample for t in steps]
    assert isinstance(processor, RegionalAttnProcessor)
    assert (processor.cache_hits > 0) == cache  # the second step reused the first's keys
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
