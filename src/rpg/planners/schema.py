"""The JSON a planner model is asked for, and its JSON Schema in the shapes services accept.

:class:`PlanReply` is derived from the field descriptions of :mod:`rpg.models`;
:func:`plan_schema` exports it for OpenAI's strict structured output, Ollama's ``format=`` and
constrained local decoding. :class:`ReplyFormat` names the other JSON replies (review, edit).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rpg.models import Entity, Layer, PlanResult, Recaption, Region, RegionPlan, Row

__all__ = [
    "SCHEMA_NAME",
    "PlanReply",
    "ReplyEntity",
    "ReplyFormat",
    "ReplyLayer",
    "ReplyRegion",
    "ReplyRow",
    "plan_schema",
    "reply_schema",
]

#: The name under which the schema is sent (OpenAI's ``json_schema.name``).
SCHEMA_NAME = "rpg_region_plan"

_STRICT = ConfigDict(extra="forbid")


def _doc(model: type[BaseModel], name: str) -> str:
    return model.model_fields[name].description or ""


class ReplyEntity(BaseModel):
    """An entity in the model's reply (mirrors :class:`rpg.models.Entity`, all fields required)."""

    model_config = _STRICT

    name: str = Field(description=_doc(Entity, "name"))
    attributes: list[str] = Field(description=_doc(Entity, "attributes"))


class ReplyRegion(BaseModel):
    """A region in the model's reply: its prompt and relative width."""

    model_config = _STRICT

    prompt: str = Field(description=_doc(Region, "prompt"))
    width: float = Field(gt=0, description=_doc(Region, "width"))


class ReplyRow(BaseModel):
    """A row in the model's reply: its relative height and its regions, left to right."""

    model_config = _STRICT

    height: float = Field(gt=0, description=_doc(Row, "height"))
    regions: list[ReplyRegion] = Field(min_length=1, description=_doc(Row, "regions"))


class ReplyLayer(BaseModel):
    """A layer in the model's reply: its prompt and its box (no masks: a model writes text)."""

    model_config = _STRICT

    prompt: str = Field(description=_doc(Layer, "prompt"))
    box: list[float] = Field(
        min_length=4,
        max_length=4,
        description="Where the layer paints: [x0, y0, x1, y1], its left, top, right and bottom "
        "edges as fractions of the canvas width and height (0 to 1, origin at the top left).",
    )


class PlanReply(BaseModel):
    """The one JSON object a planner model is asked to return.

    Every field is required (and nullable where "none" is a valid answer) because OpenAI's
    strict structured-output mode demands it, and a constrained decoder then cannot stop early.
    The order is the order of the reasoning: recaption, entities, layout, base prompt. The
    layout is either ``rows`` (a grid) or ``layers`` (boxes over a background); the other list
    is empty.
    """

    model_config = _STRICT

    recaption: str = Field(description=_doc(Recaption, "recaption"))
    entities: list[ReplyEntity] = Field(description=_doc(Recaption, "entities"))
    rows: list[ReplyRow] = Field(
        default_factory=list, description=_doc(RegionPlan, "rows") + " Use either rows or layers."
    )
    layers: list[ReplyLayer] = Field(
        default_factory=list,
        description="Canvas plans: the layers from bottom to top, each painted in its box; a "
        "later layer covers the ones below where they overlap, and the base prompt paints the "
        "background around them. Use layers when things overlap or leave background around "
        "them, rows otherwise; the other list stays empty.",
    )
    base_prompt: str | None = Field(description=_doc(RegionPlan, "base_prompt"))
    base_ratio: float = Field(ge=0, le=1, description=_doc(RegionPlan, "base_ratio"))

    def to_result(self, *, prompt: str, raw: str = "", planner: str = "") -> PlanResult:
        """Convert to a validated :class:`PlanResult`; pydantic errors propagate."""
        plan = RegionPlan(
            rows=[
                Row(
                    height=row.height,
                    regions=[Region(prompt=r.prompt, width=r.width) for r in row.regions],
                )
                for row in self.rows
            ],
            layers=[Layer(prompt=layer.prompt, box=tuple(layer.box)) for layer in self.layers],
            base_prompt=self.base_prompt,
            base_ratio=self.base_ratio,
        )
        recaption = Recaption(
            original_prompt=prompt,
            recaption=self.recaption.strip() or prompt,
            entities=[
                Entity(name=e.name.strip(), attributes=[a.strip() for a in e.attributes if a])
                for e in self.entities
                if e.name.strip()
            ],
        )
        return PlanResult(recaption=recaption, plan=plan, raw=raw, planner=planner)


# Keywords OpenAI's strict mode has rejected on some models and servers; the reply is validated
# by pydantic afterwards anyway, so dropping them loses nothing.
_STRICT_UNSUPPORTED = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minItems",
        "maxItems",
        "minLength",
        "maxLength",
        "default",
        "title",
    }
)

# Bounds for constrained local decoding: a small model held to a schema can still write an
# endless string or list; these keep a reply inside a modest token budget.
_BOUNDS: dict[str, dict[str, int]] = {
    "recaption": {"maxLength": 200},
    "entities": {"maxItems": 4},
    "name": {"maxLength": 30},
    "attributes": {"maxItems": 3},
    "attribute": {"maxLength": 30},
    "prompt": {"minLength": 3, "maxLength": 120},
    "rows": {"maxItems": 3},
    "regions": {"maxItems": 3},
    "layers": {"maxItems": 4},
    "box": {"minItems": 4, "maxItems": 4},
    "base_prompt": {"maxLength": 120},
}


def _inline_refs(node: Any, defs: Mapping[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = copy.deepcopy(defs[ref.removeprefix("#/$defs/")])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            target.update(extra)
            return _inline_refs(target, defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _walk(
    node: Any, fn: Callable[[dict[str, Any], str | None], None], key: str | None = None
) -> None:
    if isinstance(node, dict):
        fn(node, key)
        for name, sub in node.get("properties", {}).items():
            _walk(sub, fn, name)
        if "items" in node:
            _walk(node["items"], fn, None)
        for sub in node.get("anyOf", []):
            _walk(sub, fn, key)


def reply_schema(
    model: type[BaseModel],
    *,
    strict: bool = False,
    bounded: bool = False,
    description: str | None = None,
) -> dict[str, Any]:
    """The JSON Schema of a reply model, self-contained (no ``$ref``), as services accept it.

    ``strict=True`` gives the subset OpenAI's strict structured output accepts (every property
    required, ``additionalProperties: false``, no numeric or length bounds). ``bounded=True`` adds
    length and count limits, for constrained decoding by small local models. ``description``
    replaces the top-level docstring, which is written for Python readers.
    """
    raw = model.model_json_schema()
    schema: dict[str, Any] = _inline_refs(raw, raw.get("$defs", {}))

    def fix(node: dict[str, Any], key: str | None) -> None:
        node.pop("title", None)
        if node.get("type") == "object":
            node["additionalProperties"] = False
            node["required"] = list(node.get("properties", {}))
        if node.get("type") == "object" and key is None:
            node.pop("description", None)  # a class docstring, written for Python readers
        if bounded and key in _BOUNDS and node.get("type") in ("string", "array"):
            node.update(_BOUNDS[key])
            if key == "attributes":
                node["items"].update(_BOUNDS["attribute"])
        if strict:
            for k in _STRICT_UNSUPPORTED & node.keys():
                del node[k]

    _walk(schema, fix)
    if description:
        schema["description"] = description
    return schema


def plan_schema(*, strict: bool = False, bounded: bool = False) -> dict[str, Any]:
    """The JSON Schema of :class:`PlanReply` (see :func:`reply_schema` for the flags).

    A reply is a grid (``rows``) or a canvas (``layers``), never both. Where the schema may
    say so (``strict=False``: Ollama's ``format``, constrained local decoding) it is a choice
    of two objects, one with ``rows`` and one with ``layers``, so that a decoder held to it
    cannot fill both lists (a small model otherwise does). OpenAI's strict mode accepts no
    choice at the top level, so there both lists are required and the descriptions ask for one
    of them to be empty; a reply with both is sent back to the model.
    """
    description = (
        "An image plan: the recaptioned prompt, its key entities, and either the canvas split "
        "into rows (top to bottom) of regions (left to right), or layers (bottom to top) each "
        "painted in a box over a background; every region or layer has its own prompt."
    )
    schema = reply_schema(PlanReply, strict=strict, bounded=bounded, description=description)
    if strict:
        return schema
    schema.pop("description")

    def only(kind: str, other: str) -> dict[str, Any]:
        variant = copy.deepcopy(schema)
        del variant["properties"][other]
        variant["required"] = [k for k in variant["required"] if k != other]
        variant["properties"][kind]["minItems"] = 1
        return variant

    return {"description": description, "anyOf": [only("rows", "layers"), only("layers", "rows")]}


@dataclass(frozen=True)
class ReplyFormat:
    """A JSON reply other than a plan that a chat planner can be asked for (review, edit).

    Backends send :meth:`schema` as structured output under :attr:`name`; ``None`` in their
    ``reply_format`` argument means the plan schema.
    """

    name: str
    model: type[BaseModel]
    description: str

    def schema(self, *, strict: bool = False) -> dict[str, Any]:
        return reply_schema(self.model, strict=strict, description=self.description)
