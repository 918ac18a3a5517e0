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
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rpg.errors import ConfigurationError, PlannerError
from rpg.models import DEFAULT_BASE_RATIO, Entity, PlanResult, Recaption, Region, RegionPlan, Row
from rpg.planners.rules.layouts import RULES, Layout, places_another
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

__all__ = ["RulesPlanner", "find_layout"]


def find_layout(body: str) -> tuple[Layout | None, str]:
    """The first rule's layout whose regions are all whole entity phrases, and why not if none.

    The second item explains a ``None``: which rule found a layout it could not use.
    """
    rejected = ""
    for rule in RULES:
        layout = rule(body)
        if layout is None:
            continue
        entities = layout.entities
        bad = [e for e in entities if not is_entity_phrase(e) or places_another(e)]
        if len(entities) >= 2 and not bad:
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
    ``use_base=False`` plans without a base prompt.
    """

    name = "rules"

    def __init__(
        self, *, base_ratio: float = DEFAULT_BASE_RATIO, use_base: bool = True, **unknown: Any
    ) -> None:
        if unknown:
            raise ConfigurationError(
                f"the rules planner takes no option {', '.join(map(repr, sorted(unknown)))}; "
                "it accepts base_ratio and use_base"
            )
        if not 0 <= base_ratio <= 1:
            raise ConfigurationError(f"base_ratio must be between 0 and 1, got {base_ratio}")
        self.base_ratio = float(base_ratio)
        self.use_base = bool(use_base)

    def __repr__(self) -> str:
        return f"RulesPlanner(base_ratio={self.base_ratio}, use_base={self.use_base})"

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
        layout, rejected = find_layout(body)
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
        rows = [Row(regions=[Region(prompt=frame.compose(e)) for e in row]) for row in layout.rows]
        plan = RegionPlan(
            rows=rows, base_prompt=text if self.use_base else None, base_ratio=self.base_ratio
        )
        why = f"rule: {layout.rule}\nwhy: {layout.why}"
        shared = _shared_words(frame)
        if shared:
            why += f"\nshared by every region: {shared}"
        return plan, [entity_of(e) for e in layout.entities], why


def _shared_words(frame: Frame) -> str:
    said = []
    if frame.prefix:
        said.append(f'"{frame.prefix.strip()} …"')
    if frame.context:
        said.append(f'"… {frame.context}"')
    if frame.suffix:
        said.append(f'"…, {frame.suffix}"')
    return ", ".join(said)
