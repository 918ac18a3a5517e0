"""Registers rpg's own scorers through the same hook third-party plugins use.

Factories import their scorer lazily, so ``import rpg`` loads neither numpy-heavy scoring code nor
transformers' CLIP.
"""

from __future__ import annotations

from typing import Any

from rpg.hookspecs import hookimpl
from rpg.plugins import ScorerRegistry


def _shapes(**options: Any) -> Any:
    from rpg.eval.scorers import ShapesScorer

    return ShapesScorer(**options)


def _clip(**options: Any) -> Any:
    from rpg.eval.scorers import ClipScorer

    return ClipScorer(**options)


def _region_clip(**options: Any) -> Any:
    from rpg.eval.scorers import RegionClipScorer

    return RegionClipScorer(**options)


@hookimpl
def rpg_register_scorers(registry: ScorerRegistry) -> None:
    registry.register(
        "shapes",
        _shapes,
        description="shapes world: colour, shape and placement of every object, read exactly",
    )
    registry.register(
        "clip", _clip, description="CLIP score of the image and the prompt (local CLIP model)"
    )
    registry.register(
        "region-clip",
        _region_clip,
        description="mean CLIP score of each region's crop and its prompt (local CLIP model)",
    )
