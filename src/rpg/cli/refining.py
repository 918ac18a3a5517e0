"""``rpg generate --refine N``: the option and the loop that saves every round as it finishes.

Kept out of :mod:`rpg.cli.generate` so that command stays about one render; it calls
:func:`add_refine_argument` and :func:`generate_refined`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rpg.models import GenerationRequest, GenerationResult
    from rpg.orchestrator import RPG
    from rpg.refine import RefineRound

__all__ = ["add_refine_argument", "generate_refined", "round_path"]


def _rounds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of rounds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"rounds must be 0 or more, got {value}")
    return value


def add_refine_argument(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--refine",
        type=_rounds,
        default=0,
        metavar="N",
        help="let a multimodal planner (openai or ollama, see --planner) review the image and "
        "re-plan it, up to N times, same seed; every round is saved as NAME.round-K.png",
    )


def round_path(out: Path, index: int) -> Path:
    """``NAME.round-K.png`` next to ``out``."""
    return out.with_name(f"{out.stem}.round-{index}{out.suffix or '.png'}")


def generate_refined(
    pipe: RPG, request: GenerationRequest, out: Path, rounds: int, **generate_kwargs: Any
) -> GenerationResult:
    """Run the refinement loop, saving and reporting each round; return the final render.

    ``generate_kwargs`` go to every round's render (e.g. ControlNet ``image``).
    """
    from rpg.metadata import save_png
    from rpg.refine import refine

    def save(done: RefineRound) -> None:
        path = round_path(out, done.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(
            done.image,
            path,
            done.result.request,
            done.plan,
            control_images=done.result.control_images,
        )
        verdict = ""
        if done.review is not None:
            verdict = " — done" if done.review.done else " — revising"
            verdict += f": {done.review.critique}" if done.review.critique else ""
        shape = (
            f"{len(done.plan.layers)} layers" if done.plan.is_canvas else
            f"split {done.plan.to_split_ratio()}"
        )  # fmt: skip
        print(f"round {done.index}: wrote {path} ({shape}){verdict}")

    result = refine(pipe, request, rounds=rounds, on_round=save, **generate_kwargs)
    if result.stop_reason == "unchanged":
        print(f"round {result.final.index}: the revised plan equals the current one; stopping")
    return result.final.result
