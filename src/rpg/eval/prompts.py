"""Prompt sets for ``rpg eval``: files in T2I-CompBench's form, JSONL with plans, built-in sets.

A prompt set is a list of :class:`EvalPrompt`. Three sources:

- a ``.txt`` file with one prompt per line, as T2I-CompBench ships them (``color_val.txt``,
  ``spatial_val.txt``, …); blank lines are skipped and the category is the file's stem;
- a ``.jsonl`` file of :class:`EvalPrompt` objects (or bare JSON strings), which may carry the
  exact plan and the expected objects of each prompt;
- a built-in set by name (:data:`BUILTIN_SETS`): ``shapes-heldout`` (2–4 objects whose pairs
  never share a training caption of ``shapes-sd``, with exact plans), ``shapes-single`` (every
  colour and shape alone) and ``shapes-halves`` (one object in each half, no base prompt).
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rpg.errors import ConfigurationError
from rpg.eval.shapes import COLOURS, HELD_OUT_PAIRS, SHAPES
from rpg.models import Region, RegionPlan, Row

__all__ = [
    "BUILTIN_SETS",
    "EvalPrompt",
    "load_prompt_set",
    "objects_in_text",
    "shapes_heldout_set",
    "shapes_single_set",
]


class EvalPrompt(BaseModel):
    """One prompt of an evaluation set, and what a scorer may check it against."""

    model_config = ConfigDict(frozen=True)

    prompt: str = Field(description="the prompt, given whole to the stock pipeline")
    category: str = Field(default="default", description="group for the per-category charts")
    objects: tuple[str, ...] = Field(
        default=(), description="expected objects in reading order ('red circle'); may be empty"
    )
    plan: RegionPlan | None = Field(
        default=None,
        description="the exact plan: one region per expected object, in the same order",
    )

    def object_regions(self) -> list[tuple[float, float, float, float] | None]:
        """The box each expected object should be in: its region of the exact plan, if any."""
        if self.plan is not None and len(self.plan.regions) == len(self.objects):
            return list(self.plan.boxes())
        return [None] * len(self.objects)


_OBJECT = re.compile(rf"\b({'|'.join(COLOURS)})\s+(?:(?:small|large)\s+)?({'|'.join(SHAPES)})s?\b")


def objects_in_text(text: str) -> tuple[str, ...]:
    """The ``"colour shape"`` objects a shapes-world prompt names, in order of mention."""
    return tuple(f"{c} {s}" for c, s in _OBJECT.findall(text.lower()))


def _article(name: str) -> str:
    return ("an " if name[0] in "aeiou" else "a ") + name


def _row_plan(prompt: str, names: Sequence[str], vertical: bool = False) -> RegionPlan:
    regions = [Region(prompt=_article(n)) for n in names]
    rows = [Row(regions=[r]) for r in regions] if vertical else [Row(regions=regions)]
    return RegionPlan(rows=rows, base_prompt=prompt, base_ratio=0.3)


def shapes_heldout_set(seed: int = 0, per_count: Sequence[int] = (8, 4, 4)) -> list[EvalPrompt]:
    """Held-out prompts of the shapes world: 2, 3 and 4 objects, each with a held-out pair.

    ``per_count`` is how many prompts of 2, 3 and 4 objects. Two objects: left/right or
    above/below in a relation template; three and four: "from left to right, …". Every prompt
    uses templates the model was trained on, with object combinations it never saw together.
    """
    rng = random.Random(seed)
    pairs = sorted(tuple(sorted(p)) for p in HELD_OUT_PAIRS)
    rng.shuffle(pairs)
    names_all = [f"{c} {s}" for c in COLOURS for s in SHAPES]
    out: list[EvalPrompt] = []
    for i in range(per_count[0]):
        a, b = pairs[i % len(pairs)]
        if rng.random() < 0.5:
            a, b = b, a
        kind = i % 4
        if kind == 0:
            text, plan = f"{_article(a)} to the left of {_article(b)}", _row_plan
            out.append(
                EvalPrompt(
                    prompt=text, category="2 objects", objects=(a, b), plan=plan(text, [a, b])
                )
            )
        elif kind == 1:
            text = f"{_article(a)} on the left and {_article(b)} on the right"
            out.append(
                EvalPrompt(
                    prompt=text, category="2 objects", objects=(a, b), plan=_row_plan(text, [a, b])
                )
            )
        elif kind == 2:
            text = f"{_article(a)} above {_article(b)}"
            out.append(
                EvalPrompt(
                    prompt=text,
                    category="2 objects",
                    objects=(a, b),
                    plan=_row_plan(text, [a, b], vertical=True),
                )
            )
        else:
            text = f"{_article(b)} to the right of {_article(a)}"
            out.append(
                EvalPrompt(
                    prompt=text, category="2 objects", objects=(a, b), plan=_row_plan(text, [a, b])
                )
            )
    for count, n in ((3, per_count[1]), (4, per_count[2])):
        for i in range(n):
            pair = list(pairs[(per_count[0] + 7 * count + i) % len(pairs)])
            colours_used = {p.split()[0] for p in pair}
            shapes_used = {p.split()[1] for p in pair}
            rest = [
                n_
                for n_ in names_all
                if n_ not in pair
                and n_.split()[0] not in colours_used
                and n_.split()[1] not in shapes_used
            ]
            while len(pair) < count:
                pick = rng.choice(rest)
                pair.append(pick)
                rest = [r for r in rest if r.split()[0] != pick.split()[0]]
            rng.shuffle(pair)
            text = "from left to right, " + ", ".join(_article(p) for p in pair[:-1])
            text += f" and {_article(pair[-1])}"
            out.append(
                EvalPrompt(
                    prompt=text,
                    category=f"{count} objects",
                    objects=tuple(pair),
                    plan=_row_plan(text, pair),
                )
            )
    return out


def shapes_single_set() -> list[EvalPrompt]:
    """Every colour and shape alone: "a red circle", … (24 prompts, one full-canvas region)."""
    out = []
    for colour in COLOURS:
        for shape in SHAPES:
            name = f"{colour} {shape}"
            out.append(
                EvalPrompt(
                    prompt=_article(name),
                    category="1 object",
                    objects=(name,),
                    plan=RegionPlan.single(_article(name)),
                )
            )
    return out


def shapes_halves_set() -> list[EvalPrompt]:
    """Every colour and shape in the left half, another object in the right (24 prompts).

    Two regions and no base prompt, the plan of the semantic tests: each region sees only its
    own object, so this measures whether the model draws what a region asks for where the region
    is. The right-hand object differs in colour and shape, and every object is once on each side.
    """
    names = [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]
    out = []
    for i, left in enumerate(names):
        right = names[(i + 7) % len(names)]
        out.append(
            EvalPrompt(
                prompt=f"{_article(left)} on the left and {_article(right)} on the right",
                category="2 halves",
                objects=(left, right),
                plan=RegionPlan.from_split_ratio("1,1", [_article(left), _article(right)]),
            )
        )
    return out


#: Built-in prompt sets by name.
BUILTIN_SETS: dict[str, Callable[[], list[EvalPrompt]]] = {
    "shapes-heldout": shapes_heldout_set,
    "shapes-single": shapes_single_set,
    "shapes-halves": shapes_halves_set,
}


def _read_jsonl(path: Path) -> list[EvalPrompt]:
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if isinstance(data, str):
                data = {"prompt": data}
            if isinstance(data, dict) and "category" not in data:
                data["category"] = path.stem
            item = EvalPrompt.model_validate(data)
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ConfigurationError(
                f"{path}:{number}: not a prompt: {str(exc).splitlines()[0]}; each line is a JSON "
                'string or an object like {"prompt": "...", "category": "...", "plan": {...}}'
            ) from None
        if not item.objects:
            item = item.model_copy(update={"objects": objects_in_text(item.prompt)})
        items.append(item)
    return items


def load_prompt_set(source: str | os.PathLike[str]) -> list[EvalPrompt]:
    """The prompts of a built-in set name, a ``.txt`` (one per line) or a ``.jsonl`` file."""
    name = os.fspath(source)
    if name in BUILTIN_SETS:
        return BUILTIN_SETS[name]()
    path = Path(name)
    if not path.is_file():
        raise ConfigurationError(
            f"prompt set {name!r} is neither a file nor a built-in set; built-in sets: "
            f"{', '.join(BUILTIN_SETS)}; files: .txt with one prompt per line, or .jsonl"
        )
    if path.suffix.lower() == ".jsonl":
        items = _read_jsonl(path)
    else:
        items = [
            EvalPrompt(
                prompt=line.strip(), category=path.stem, objects=objects_in_text(line.strip())
            )
            for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    if not items:
        raise ConfigurationError(f"{path} holds no prompts")
    return items
