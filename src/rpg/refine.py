"""The closed loop of RPG: render, let a multimodal planner review the image, render its revision.

Each round renders the current plan with the *same seed*, so the only thing that changes
between rounds is the plan; the planner sees the image, the prompt and the plan that made it
(:meth:`rpg.planners.feedback.MultimodalPlanner.review`) and either says the image is done or
returns a revised plan, validated like any plan. Every round's image, plan and critique is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from rpg.errors import ConfigurationError
from rpg.models import GenerationRequest, GenerationResult, RegionPlan
from rpg.planners.base import Planner
from rpg.planners.feedback import MultimodalPlanner, Review, as_multimodal

if TYPE_CHECKING:
    from PIL.Image import Image

    from rpg.orchestrator import RPG

__all__ = ["RefineResult", "RefineRound", "refine", "resolve_planner"]

log = logging.getLogger("rpg.refine")

#: Why the loop ended: the planner said done, the rounds ran out, or the revision changed nothing.
StopReason = Literal["done", "rounds", "unchanged"]


@dataclass(frozen=True)
class RefineRound:
    """One rendering round and the planner's review of its image.

    ``review`` is ``None`` for the last round when the loop ran out of rounds (it was not
    reviewed; asking would cost a model call whose answer nobody uses).
    """

    index: int
    result: GenerationResult
    review: Review | None = None

    @property
    def image(self) -> Image:
        """This round's image."""
        image: Image = self.result.images[0]
        return image

    @property
    def plan(self) -> RegionPlan:
        """The plan rendered in this round."""
        return self.result.plan

    @property
    def critique(self) -> str | None:
        """The planner's critique of this round's image, if it was reviewed."""
        return None if self.review is None else self.review.critique


@dataclass(frozen=True)
class RefineResult:
    """Every round of a refinement, first to last, and why it stopped."""

    rounds: list[RefineRound] = field(default_factory=list)
    stop_reason: StopReason = "rounds"

    @property
    def final(self) -> RefineRound:
        """The last round: the image to keep."""
        return self.rounds[-1]

    @property
    def image(self) -> Image:
        return self.final.image

    @property
    def plan(self) -> RegionPlan:
        return self.final.plan

    @property
    def images(self) -> list[Image]:
        """Each round's image, first to last."""
        return [r.image for r in self.rounds]

    @property
    def done(self) -> bool:
        """Whether the planner judged the last image done."""
        return self.stop_reason == "done"


def resolve_planner(rpg: RPG, planner: str | Planner | None) -> MultimodalPlanner:
    """The multimodal planner to review or edit with: ``planner``, else ``rpg``'s default one.

    A text-only planner raises :class:`~rpg.errors.PlannerError` naming the multimodal ones.
    """
    chosen = rpg.get_planner(planner) if planner is None or isinstance(planner, str) else planner
    return as_multimodal(chosen)


def refine(
    rpg: RPG,
    request: GenerationRequest | str,
    *,
    rounds: int = 2,
    planner: str | Planner | None = None,
    on_round: Callable[[RefineRound], None] | None = None,
    **generate_kwargs: Any,
) -> RefineResult:
    """Render ``request``, then up to ``rounds`` times review the image and render the revision.

    ``rounds`` counts reviews, so at most ``rounds + 1`` images are rendered; the loop stops
    early when the planner says the image is done, or when its revised plan equals the current
    one (rendering it again with the same seed would give the same image). ``planner`` reviews
    (a name, a planner, or ``None`` for the request's planner, else ``rpg``'s default); it
    must be multimodal, which is checked before anything is rendered. ``on_round`` is called
    with each finished round (e.g. to save it at once). ``generate_kwargs`` go to
    :meth:`rpg.orchestrator.RPG.generate`, except ``output_type``: the reviewer needs images.
    """
    if isinstance(request, str):
        request = GenerationRequest(prompt=request)
    if rounds < 0:
        raise ConfigurationError(f"rounds must be 0 or more, got {rounds}")
    if request.num_images != 1:
        raise ConfigurationError(
            f"refinement reviews one image per round; the request asks for {request.num_images} "
            "(set num_images to 1)"
        )
    if "output_type" in generate_kwargs:
        raise ConfigurationError("refine renders PIL images for the reviewer; omit output_type")
    reviewer = resolve_planner(rpg, planner if planner is not None else request.planner)

    done: list[RefineRound] = []
    stop: StopReason = "rounds"
    result = rpg.generate(request, **generate_kwargs)
    for index in range(1, rounds + 2):
        if index > rounds:
            current = RefineRound(index, result)
        else:
            review = reviewer.review(request.prompt, result.plan, result.images[0])
            current = RefineRound(index, result, review)
            log.info("round %d review: %s", index, review.critique)
        done.append(current)
        if on_round is not None:
            on_round(current)
        if current.review is None:
            break
        if current.review.done or current.review.plan is None:
            stop = "done"
            break
        if current.review.plan == result.plan:
            stop = "unchanged"
            break
        # Same seed, size and settings; only the plan changes. The request's base-ratio
        # override would replace the reviewer's ratio, so it is dropped.
        revised = result.request.model_copy(
            update={"plan": current.review.plan, "base_ratio": None}
        )
        result = rpg.generate(
            GenerationRequest.model_validate(revised.model_dump()), **generate_kwargs
        )
    return RefineResult(rounds=done, stop_reason=stop)
