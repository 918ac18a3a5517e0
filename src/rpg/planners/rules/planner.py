"""The rules planner: the first layout rule that reads a prompt cleanly makes the plan.

It is the default when no language model is configured, so it must be predictable: the same
prompt always gives the same plan, a prompt without spatial structure gives one full-canvas
region rather than a guess, and a prompt the rules cannot read whole is one region with the
whole prompt, never a split into clause fragments. Shared words - a style prefix such as "a
photo of", a setting such as "in a park", style words such as ", oil painting" - end up in every
region prompt, and the base prompt is the whole prompt. ``PlanResult.raw`` says which rule made
the layout and why (``rpg plan --explain`` prints it).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rpg.errors import ConfigurationError, PlannerError
from rpg.models import (
    DEFAULT_BASE_RATIO,
    Entity,
    Layer,
    PlanResult,
    Recaption,
    Region,
    RegionPlan,
    Row,
)
from rpg.planners.rules.canvas import by_corner, by_corners, by_size, by_surface
from rpg.planners.rules.layouts import (
    Layout,
    by_and,
    by_between,
    by_described_positions,
    by_markers,
    by_relation,
    by_scene_with,
    by_sequence,
    places_another,
)
from rpg.planners.rules.phrases import (
    Frame,
    entity_of,
    head_noun,
    is_entity_phrase,
    norm,
    singular,
    take_setting,
    take_style,
    tidy,
    words,
)

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["CANVAS_RULES", "RULES", "RulesPlanner", "find_layout"]

#: The rules in the order they are tried, most specific first. The canvas rules come before
#: the relations, so that "a small red boat on a big blue lake" is a boat layer on a lake layer
#: rather than two rows, and "a cat on a sofa" a cat over a sofa rather than one region.
RULES: tuple[Callable[[str], Layout | None], ...] = (
    by_sequence,
    by_described_positions,
    by_corners,
    by_markers,
    by_between,
    by_size,
    by_surface,
    by_corner,
    by_relation,
    by_scene_with,
    by_and,
)
#: The rules that answer with layers (a canvas plan); ``RulesPlanner(canvas=False)`` skips them.
CANVAS_RULES = frozenset({by_corners, by_size, by_surface, by_corner})


def find_layout(body: str, *, canvas: bool = True) -> tuple[Layout | None, str]:
    """The first rule's layout whose regions are all whole entity phrases, and why not if none.

    The second item explains a ``None``: which rule found a layout it could not use. With
    ``canvas=False`` only grid layouts are made.
    """
    rejected = ""
    for rule in RULES:
        if not canvas and rule in CANVAS_RULES:
            continue
        layout = rule(body)
        if layout is None:
            continue
        entities = layout.entities
        bad = [e for e in entities if not is_entity_phrase(e) or places_another(e)]
        if (len(entities) >= 2 or layout.is_canvas) and not bad:
            mixed = _names_another(entities)
            if mixed is None:
                return layout, ""
            bad = [mixed]
        if bad and not rejected:
            rejected = f'rule "{layout.rule}" would leave "{bad[0]}" as a region'
    return None, rejected


def _names_another(entities: list[str]) -> str | None:
    """The first entity phrase that also names another region's entity ("a girl who is on the
    right of the boy" next to "a boy"), which would draw that entity twice."""
    heads = [singular(head_noun(e)) for e in entities]
    for i, text in enumerate(entities):
        found = {singular(w) for w in words(text)}
        if any(h != heads[i] and h in found for h in heads if " " not in h):
            return text
        if any(h != heads[i] and re.search(rf"\b{h}", text.lower()) for h in heads if " " in h):
            return text
    return None


class RulesPlanner:
    """Deterministic planner driven by spatial phrases; needs no model and no network.

    ``base_ratio`` is the weight of the base prompt in every region of a multi-region plan;
    ``use_base=False`` plans without a base prompt. Wording that rows and columns cannot say
    ("a bird in the top left corner of a blue sky", "a cat on a sofa") gives a canvas plan of
    layers over a background; ``canvas=False`` keeps to grid plans (such prompts are then one
    region).
    """

    name = "rules"

    def __init__(
        self,
        *,
        base_ratio: float = DEFAULT_BASE_RATIO,
        use_base: bool = True,
        canvas: bool = True,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ConfigurationError(
                f"the rules planner takes no option {', '.join(map(repr, sorted(unknown)))}; "
                "it accepts base_ratio, use_base and canvas"
            )
        if not 0 <= base_ratio <= 1:
            raise ConfigurationError(f"base_ratio must be between 0 and 1, got {base_ratio}")
        self.base_ratio = float(base_ratio)
        self.use_base = bool(use_base)
        self.canvas = bool(canvas)

    def __repr__(self) -> str:
        return (
            f"RulesPlanner(base_ratio={self.base_ratio}, use_base={self.use_base}, "
            f"canvas={self.canvas})"
        )

    def plan(self, prompt: str, *, image: Image | None = None) -> PlanResult:
        """Plan ``prompt`` from its wording alone; raises PlannerError for images or blank text.

        The result's ``raw`` text starts with ``rule: <name>`` and says why the rule split the
        prompt the way it did.
        """
        start = time.perf_counter()
        if image is not None:
            raise PlannerError(
                "the rules planner cannot read images; describe the layout in the prompt or use "
                "a planner backed by a vision-language model"
            )
        text = norm(prompt) if isinstance(prompt, str) else ""
        if not text:
            raise PlannerError("the prompt is empty; give a description of the image to plan")
        try:
            plan, entities, why = self._plan(text)
        except (ValueError, ValidationError) as exc:  # a bug in the rules, reported as such
            raise PlannerError(f"the rules planner could not plan {text!r}: {exc}") from None
        return PlanResult(
            recaption=Recaption(original_prompt=prompt, recaption=text, entities=entities),
            plan=plan,
            raw=why,
            planner=self.name,
            seconds=time.perf_counter() - start,
        )

    def _plan(self, text: str) -> tuple[RegionPlan, list[Entity], str]:
        frame, body = take_style(text.rstrip(" .!;,"))
        layout, rejected = find_layout(body, canvas=self.canvas)
        if layout is None:
            why = (
                f"{rejected}; the whole prompt is one region"
                if rejected
                else "no spatial wording and no list of separate entities: one full-canvas region"
            )
            return (
                RegionPlan.single(text),
                [entity_of(tidy(body) or text)],
                f"rule: single\nwhy: {why}",
            )
        lead_setting = take_setting(tidy(layout.lead), whole=True)[1] if layout.lead else ""
        frame = frame.with_context(lead_setting, *layout.context)
        if layout.is_canvas:
            plan = self._canvas(text, frame, layout)
        else:
            rows = [
                Row(regions=[Region(prompt=frame.compose(e)) for e in row]) for row in layout.rows
            ]
            plan = RegionPlan(
                rows=rows, base_prompt=text if self.use_base else None, base_ratio=self.base_ratio
            )
        why = f"rule: {layout.rule}\nwhy: {layout.why}"
        shared = _shared_words(frame)
        if shared:
            why += f"\nshared by every region: {shared}"
        return plan, [entity_of(e) for e in layout.entities], why

    def _canvas(self, text: str, frame: Frame, layout: Layout) -> RegionPlan:
        """Layers bottom to top; the base prompt is the background the layout names (dressed
        in the shared words), else the whole prompt."""
        layers = [
            Layer(prompt=frame.compose(e), box=box)
            for e, box in zip(layout.entities, layout.boxes, strict=True)
        ]
        background = frame.compose(layout.background) if layout.background else text
        return RegionPlan(
            layers=layers,
            base_prompt=background if self.use_base else None,
            base_ratio=self.base_ratio,
        )


def _shared_words(frame: Frame) -> str:
    said = []
    if frame.prefix:
        said.append(f'"{frame.prefix.strip()} …"')
    if frame.context:
        said.append(f'"… {frame.context}"')
    if frame.suffix:
        said.append(f'"…, {frame.suffix}"')
    return ", ".join(said)
