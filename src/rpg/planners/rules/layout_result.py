"""What a layout rule returns: rows of entity phrases (or layers in boxes), and why."""

from __future__ import annotations

from dataclasses import dataclass, field

from rpg.layout import Box
from rpg.planners.rules.phrases import (
    tidy,
)


@dataclass
class Layout:
    """Rows (top to bottom) of entity phrases (left to right), and where they came from.

    A canvas layout (``boxes`` given) holds one entity per row, each a layer bottom to top
    painted in its box, over a ``background`` (empty: the whole prompt paints it).
    """

    rows: list[list[str]]
    rule: str
    reason: str  # what the rule read, e.g. 'the relation "left of"'
    lead: str = ""  # words before the layout ("A couple in a cafe"): context or base only
    context: list[str] = field(default_factory=list)  # words every region shares
    boxes: list[Box] = field(default_factory=list)  # a canvas: one box per entity
    background: str = ""  # a canvas: what paints where no layer does

    def __post_init__(self) -> None:
        if self.boxes and len(self.boxes) != len(self.rows):
            raise ValueError("a canvas layout needs one box per entity")
        rows = [[tidy(e) for e in row] for row in self.rows]
        if self.boxes:  # a layer whose words tidy away is dropped with its box
            kept = [(r, b) for r, b in zip(rows, self.boxes, strict=True) if all(r)]
            rows, self.boxes = [r for r, _ in kept], [b for _, b in kept]
        self.rows = [row for row in rows if row]
        self.background = tidy(self.background)

    @property
    def entities(self) -> list[str]:
        """The entity phrases in reading order (a canvas: its layers bottom to top)."""
        return [e for row in self.rows for e in row]

    @property
    def is_canvas(self) -> bool:
        """Whether the layout is layers in boxes rather than rows and columns."""
        return bool(self.boxes)

    @property
    def why(self) -> str:
        """What the rule read and the layout it made of it."""
        if self.boxes:
            return f"{self.reason}: {_describe_layers(self.entities, self.boxes, self.background)}"
        return f"{self.reason}: {_describe_rows(self.rows)}"


def _quote(items: list[str]) -> str:
    return " | ".join(items)


def _describe_layers(entities: list[str], boxes: list[Box], background: str) -> str:
    said = ", ".join(
        f"[{e}] in box ({', '.join(f'{c:g}' for c in box)})"
        for e, box in zip(entities, boxes, strict=True)
    )
    ground = f"[{background}]" if background else "the whole prompt"
    return f"layers bottom to top {said}, over the background {ground}"


def _describe_rows(rows: list[list[str]]) -> str:
    if len(rows) == 1:
        return f"one row [{_quote(rows[0])}]"
    return "rows top to bottom " + ", ".join(f"[{_quote(r)}]" for r in rows)
