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

SEEDS = range(8)
LEFT = (0.0, 0.0, 0.5, 1.0)
RIGHT = (0.5, 0.0, 1.0, 1.0)
STEPS = 12
#: Each half of the canvas is the 64×64 the model was trained at; on a 64×64 canvas a half is
#: 32×64, narrower than anything in training, and rpg places 71% of the objects of
#: shapes-halves there (84% with isolation) against 90% here (94% with isolation; see
#: docs/reference/evaluation.md).
WIDTH, HEIGHT = 128, 64
#: Region isolation: without it, "a red circle" in a region is green on most seeds (the stock
#: GroupNorm statistics of the whole canvas carry the right half's colours into the left).
ISOLATED = {"image_attention": "region", "group_norm": "region"}


@pytest.fixture(scope="module")
def shapes_rpg() -> Any:
    from rpg.orchestrator import RPG

    pipe = RPG.from_pretrained("shapes-sd", device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    return pipe


def _render(pipe: Any, plan: RegionPlan, seed: int) -> Any:
    request = GenerationRequest(
        prompt=" and ".join(plan.prompts),
        plan=plan,
        seed=seed,
        steps=STEPS,
        guidance_scale=7.0,
        width=WIDTH,
        height=HEIGHT,
        options=ISOLATED,
    )
    return pipe.generate(request).images[0]


def _placed(pipe: Any, left: str, right: str) -> list[bool]:
    plan = RegionPlan.from_split_ratio("1,1", [f"a {left}", f"a {right}"])
    return [
        all(
            c.placed
            for c in match_objects(
                read_image(_render(pipe, plan, s), 1.0), [left, right], [LEFT, RIGHT]
            )
        )
        for s in SEEDS
    ]


def test_shapes_sd_is_a_trained_reserved_model(shapes_rpg: Any) -> None:
    assert shapes_rpg.backbone.info.kind == "tiny" and not shapes_rpg.backbone.info.is_tiny
    assert shapes_rpg.backbone.native_size == (64, 64)


def test_rpg_puts_the_red_circle_left_and_the_blue_square_right(shapes_rpg: Any) -> None:
    # 8 of 8 measured; 2 of 8 without isolation
    placed = _placed(shapes_rpg, "red circle", "blue square")
    assert sum(placed) >= 7, placed


def test_swapping_the_plan_swaps_them(shapes_rpg: Any) -> None:
    placed = _placed(shapes_rpg, "blue square", "red circle")
    assert sum(placed) >= 7, placed


def _left_circles(image: Any) -> list[tuple[float, float]]:
    reading = read_image(image, 1.0)
    return sorted(
        (d.x * WIDTH, d.y * HEIGHT) for d in reading.objects if d.name == "red circle" and d.x < 0.5
    )


def test_changing_region_2_leaves_region_1_alone(shapes_rpg: Any) -> None:
    first = RegionPlan.from_split_ratio("1,1", ["a red circle", "a blue square"])
    second = RegionPlan.from_split_ratio("1,1", ["a red circle", "a green star"])
    kept = []
    for seed in SEEDS:
        a, b = _render(shapes_rpg, first, seed), _render(shapes_rpg, second, seed)
        circles_a, circles_b = _left_circles(a), _left_circles(b)
        same_circles = (
            bool(circles_a)
            and len(circles_a) == len(circles_b)
            and all(
                abs(xa - xb) <= 3 and abs(ya - yb) <= 3
                for (xa, ya), (xb, yb) in zip(circles_a, circles_b, strict=True)
            )
        )
        square_gone = not any(
            d.name == "blue square" and d.x >= 0.5 for d in read_image(b, 1.0).objects
        )
        pa, pb = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
        left_diff = np.abs(pa[:, : WIDTH // 2 - 8] - pb[:, : WIDTH // 2 - 8]).mean()
        right_diff = np.abs(pa[:, WIDTH // 2 + 8 :] - pb[:, WIDTH // 2 + 8 :]).mean()
        kept.append(same_circles and square_gone and 4 * left_diff < right_diff)
    # 7 of 8 measured (on one seed a circle 6 pixels from the middle turns into a triangle: the
    # convolutions still see across the edge); 0 of 8 without isolation
    assert sum(kept) >= 6, kept
