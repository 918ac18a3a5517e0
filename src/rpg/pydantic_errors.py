"""Pydantic validation errors as text a person acts on: where, and what is wrong, on one line.

Every place that shows a :class:`pydantic.ValidationError` to someone (the CLI, the batch lines,
the editor, a planner's retry prompt, a family's options) reads it through :func:`problems`, so
the same error reads the same everywhere: the location joined with dots, pydantic's
``"Value error, "`` prefix (added to messages of ``ValueError`` raised in validators) left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

__all__ = ["Problem", "one_line", "problems"]


@dataclass(frozen=True)
class Problem:
    """One error of a :class:`~pydantic.ValidationError`."""

    #: Where: field names and list indices, as strings (empty for the model itself).
    loc: tuple[str, ...]
    #: What is wrong, without pydantic's ``"Value error, "`` prefix.
    message: str
    #: pydantic's error type (``"missing"``, ``"extra_forbidden"``, ``"less_than_equal"``, ...).
    type: str

    @property
    def field(self) -> str:
        """The top-level field (``""`` for an error of the model itself)."""
        return self.loc[0] if self.loc else ""

    def where(self, fallback: str, prefix: Sequence[str] = ()) -> str:
        """The location joined with dots after ``prefix``, or ``fallback`` when there is none."""
        return ".".join(p for p in (*prefix, *self.loc) if p != "") or fallback


def problems(exc: ValidationError, *, lower: bool = False) -> list[Problem]:
    """The errors of ``exc``; ``lower`` starts each message with a small letter (to follow a
    name and a colon in a sentence)."""
    found = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        if lower:
            message = message[:1].lower() + message[1:]
        loc = tuple(str(p) for p in error["loc"])
        found.append(Problem(loc=loc, message=message, type=str(error["type"])))
    return found


def one_line(
    exc: ValidationError, *, fallback: str, lower: bool = False, limit: int | None = None
) -> str:
    """``where: what; where: what`` for every error (the first ``limit`` of them, then ``(and N
    more)``); ``fallback`` names an error of the whole object."""
    found = problems(exc, lower=lower)
    shown = found if limit is None else found[:limit]
    text = "; ".join(f"{p.where(fallback)}: {p.message}" for p in shown)
    more = len(found) - len(shown)
    return text + (f" (and {more} more)" if more > 0 else "")
