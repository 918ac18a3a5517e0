"""What rpg is for, checked on a trained model: placement, binding and isolation on shapes-sd.

``shapes-sd`` (shipped, trained on the shapes world; see ``rpg.eval.train_shapes``) is read back
by the exact scorer. The stock pipeline has no say in where things go; rpg's plan must.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rpg.eval.shapes_score import match_objects, read_image
from rpg.models import GenerationRequest, RegionPlan

SEEDS = (0, 1, 2, 3)
LEFT = (0.0, 0.0, 0.5, 1.0)
RIGHT = (0.5, 0.0, 1.0, 1.0)
STEPS = 12

#: The shipped shapes-sd is not yet good enough at regions: the stock pipeline gets colour and
#: shape right on 93.8% of single-object images (rpg eval shapes-single, seeds 0-1, 12 steps),
#: but rpg places only 71.4% of the objects of shapes-halves (this plan's kind, every colour and
#: shape; seeds 0-3), and a red circle next to a blue square is what it draws worst in a region:
#: with this plan the left half gets a green circle or a red triangle on three seeds of four.
#: These checks stay in the suite and run: any error other than the failed placement assertion
#: fails the suite, and so does a pass (strict), which says a better model has shipped: drop
#: the mark then.
UNDERTRAINED = pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="shapes-sd places 71.4% of objects in half-width regions (needs >= 90%)",
)


@pytest.fixture(scope="module")
def shapes_rpg() -> Any:
    from rpg.orchestrator import RPG

    pipe = RPG.from_pretrained("shapes-sd", device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe: Any, plan: RegionPlan, seed: int) -> Any:
    request = GenerationRequest(
        prompt=" and ".join(plan.prompts), plan=plan, seed=seed, steps=STEPS, guidance_scale=7.0
    )
    return pipe.generate(request).images[0]


def _placed(pipe: Any, left: str, right: str) -> list[bool]:
    plan = RegionPlan.from_split_ratio("1,1", [f"a {left}", f"a {right}"])
    return [
        all(
            c.placed
            for c in match_objects(read_image(_render(pipe, plan, s)), [left, right], [LEFT, RIGHT])
        )
        for s in SEEDS
    ]


def test_shapes_sd_is_a_trained_reserved_model(shapes_rpg: Any) -> None:
    assert shapes_rpg.backbone.info.kind == "tiny" and not shapes_rpg.backbone.info.is_tiny
    assert shapes_rpg.backbone.native_size == (64, 64)


@UNDERTRAINED
def test_rpg_puts_the_red_circle_left_and_the_blue_square_right(shapes_rpg: Any) -> None:
    placed = _placed(shapes_rpg, "red circle", "blue square")
    assert sum(placed) >= 3, placed


@UNDERTRAINED
def test_swapping_the_plan_swaps_them(shapes_rpg: Any) -> None:
    placed = _placed(shapes_rpg, "blue square", "red circle")
    assert sum(placed) >= 3, placed


@UNDERTRAINED
def test_changing_region_2_leaves_region_1_alone(shapes_rpg: Any) -> None:
    first = RegionPlan.from_split_ratio("1,1", ["a red circle", "a blue square"])
    second = RegionPlan.from_split_ratio("1,1", ["a red circle", "a green star"])
    kept = 0
    for seed in SEEDS:
        a, b = _render(shapes_rpg, first, seed), _render(shapes_rpg, second, seed)
        ra, rb = read_image(a), read_image(b)
        circle_a = [d for d in ra.objects if d.name == "red circle" and d.x < 0.5]
        circle_b = [d for d in rb.objects if d.name == "red circle" and d.x < 0.5]
        same_place = bool(circle_a and circle_b) and (
            abs(circle_a[0].x - circle_b[0].x) <= 3 / 64
            and abs(circle_a[0].y - circle_b[0].y) <= 3 / 64
        )
        right_changed = any(d.name == "green star" and d.x >= 0.5 for d in rb.objects)
        pa, pb = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
        left_diff = np.abs(pa[:, :28] - pb[:, :28]).mean()
        right_diff = np.abs(pa[:, 36:] - pb[:, 36:]).mean()
        kept += same_place and right_changed and left_diff < right_diff
    assert kept >= 3, kept
