"""``rpg eval``'s engine: a prompt set over seeds, rendered by stock and by rpg, and scored.

Each (prompt, seed, method) is one *item*. A method is the stock pipeline given the whole prompt,
or rpg with a planner, or rpg with the set's exact plans, optionally with another base ratio or
without the K/V cache (:class:`EvalMethod`, written ``exact:base=0.6``). Every finished item is a
line of ``results.jsonl`` (its key hashes everything that changes its pixels) and a PNG under
``images/``; running the same evaluation again skips finished items, so an interrupted run
resumes. :func:`rpg.eval.report.write_report` then writes ``summary.csv`` and ``index.html``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from rpg.errors import ConfigurationError
from rpg.eval.prompts import EvalPrompt
from rpg.models import GenerationRequest, RegionPlan

if TYPE_CHECKING:
    from PIL import Image

    from rpg.eval.scorers import Scorer
    from rpg.orchestrator import RPG

__all__ = [
    "RESULTS_NAME",
    "EvalMethod",
    "parse_method",
    "read_results",
    "region_canvas",
    "run_eval",
]

RESULTS_NAME = "results.jsonl"


class EvalMethod(BaseModel):
    """How one column of the report renders: stock, a planner, or the exact plans."""

    model_config = ConfigDict(frozen=True)

    kind: str = Field(description="'stock', 'exact' (the set's plans) or 'rpg' (a planner)")
    planner: str | None = Field(default=None, description="planner name for kind 'rpg'")
    base_ratio: float | None = Field(
        default=None, ge=0, le=1, description="override of the plan's base ratio"
    )
    kv_cache: bool = Field(default=True, description="the backbone's K/V cache on or off")
    options: dict[str, str | int | float] = Field(
        default_factory=dict,
        exclude_if=lambda v: not v,  # keeps the keys (and resumes) of runs made without any
        description="the model family's options for rpg's requests (e.g. group_norm='region')",
    )

    @property
    def label(self) -> str:
        """``stock``, ``rpg:rules``, ``exact``, ``exact:base=0.6``, ``exact:kv=off``,
        ``exact:group_norm=region``."""
        head = f"rpg:{self.planner}" if self.kind == "rpg" else self.kind
        extra = []
        if self.base_ratio is not None:
            extra.append(f"base={self.base_ratio:g}")
        if not self.kv_cache:
            extra.append("kv=off")
        for name, value in self.options.items():
            extra.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
        return head + (":" + ",".join(extra) if extra else "")


def parse_method(text: str, default_planner: str = "rules") -> EvalMethod:
    """``stock``, ``rpg``, ``rpg:ollama``, ``exact``, ``exact:base=0.6``, ``rpg:rules:kv=off``;
    any other ``name=value`` is one of the model family's options
    (``exact:image_attention=region,group_norm=region``), checked against the loaded model
    when rendering."""
    from rpg.backbones.options import cli_option_fields

    family_options = {f.name: f for f in cli_option_fields()}
    parts = [p.strip() for p in text.strip().split(":") if p.strip()]
    if not parts or parts[0] not in ("stock", "rpg", "exact"):
        raise ConfigurationError(
            f"method {text!r}: start with stock, rpg or exact (e.g. 'rpg:rules', "
            "'exact:base=0.6', 'exact:kv=off')"
        )
    kind, rest = parts[0], parts[1:]
    planner = default_planner if kind == "rpg" else None
    options: dict[str, Any] = {}
    for part in rest:
        for opt in part.split(","):
            key, eq, value = opt.partition("=")
            if not eq:
                if kind != "rpg":
                    raise ConfigurationError(f"method {text!r}: only 'rpg' takes a planner name")
                planner = key
            elif key == "base":
                try:
                    options["base_ratio"] = float(value)
                except ValueError:
                    raise ConfigurationError(f"method {text!r}: base= takes a number") from None
            elif key == "kv":
                if value not in ("on", "off"):
                    raise ConfigurationError(f"method {text!r}: kv= takes on or off")
                options["kv_cache"] = value == "on"
            elif key in family_options:
                # typed as the family declares it, as the CLI's option flags are
                cast: Any = {"float": float, "int": int}.get(family_options[key].kind, str)
                try:
                    options.setdefault("options", {})[key] = cast(value)
                except ValueError:
                    raise ConfigurationError(
                        f"method {text!r}: {key}= takes {family_options[key].kind}"
                    ) from None
            else:
                raise ConfigurationError(
                    f"method {text!r}: unknown option {key!r} (base, kv, or a model family's "
                    f"option: {', '.join(family_options)})"
                )
    if kind == "stock" and options:
        raise ConfigurationError(f"method {text!r}: the stock pipeline takes no options")
    try:
        return EvalMethod(kind=kind, planner=planner, **options)
    except ValueError as exc:
        raise ConfigurationError(f"method {text!r}: {exc}") from None


def item_key(item: EvalPrompt, seed: int, method: EvalMethod, settings: Mapping[str, Any]) -> str:
    """A hash of everything that decides an item's pixels and scores' inputs."""
    payload = {
        "item": item.model_dump(mode="json"),
        "seed": seed,
        "method": method.model_dump(mode="json"),
        "settings": dict(settings),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def region_canvas(plan: RegionPlan, region_size: int, multiple: int = 8) -> tuple[int, int]:
    """The smallest canvas ``(width, height)`` on which every region of ``plan`` is at least
    ``region_size`` pixels wide and high, each side rounded up to a multiple of ``multiple``.

    A model draws a region best at the size it was trained on: two halves of a 128×64 canvas
    are two 64×64 canvases for a model trained at 64×64, where a 64×64 canvas gives each half
    32×64.
    """
    if region_size < multiple:
        raise ConfigurationError(
            f"region size must be at least {multiple} pixels, got {region_size}"
        )
    boxes = plan.boxes()
    narrowest = min(x1 - x0 for x0, _, x1, _ in boxes)
    shortest = min(y1 - y0 for _, y0, _, y1 in boxes)

    def side(fraction: float) -> int:
        pixels = math.ceil(region_size / fraction - 1e-6)
        return -(-pixels // multiple) * multiple

    return side(narrowest), side(shortest)


def read_results(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The finished records of an evaluation folder (a torn last line is ignored)."""
    path = Path(out_dir) / RESULTS_NAME
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _render(
    pipe: RPG,
    item: EvalPrompt,
    seed: int,
    method: EvalMethod,
    settings: Mapping[str, Any],
) -> tuple[Image.Image, RegionPlan | None]:
    import torch

    backbone = pipe.backbone
    width, height = settings["width"], settings["height"]
    if method.kind == "stock":
        # the scheduler rpg's requests get, for this call only: the pipeline is left as found
        with backbone.using_scheduler(backbone.request_scheduler()):
            images = backbone.pipe(
                prompt=item.prompt,
                num_inference_steps=settings["steps"],
                guidance_scale=settings["guidance_scale"],
                generator=torch.Generator(device="cpu").manual_seed(seed),
                width=width,
                height=height,
            ).images
        return images[0], None
    plan = None
    if method.kind == "exact":
        if item.plan is None:
            raise ConfigurationError(
                f"prompt {item.prompt!r} has no exact plan; use a .jsonl prompt set with plans, "
                "or the method 'rpg'"
            )
        plan = item.plan
        if method.base_ratio is not None:
            plan = plan.with_base_ratio(method.base_ratio)
    request = GenerationRequest(
        prompt=item.prompt,
        plan=plan,
        planner=method.planner,
        seed=seed,
        steps=settings["steps"],
        guidance_scale=settings["guidance_scale"],
        width=width,
        height=height,
        base_ratio=method.base_ratio if method.kind == "rpg" else None,
        options=dict(method.options),
    )
    backbone.cache_kv = method.kv_cache
    result = pipe.generate(request)
    return result.images[0], result.plan


def run_eval(
    pipe: RPG,
    items: Sequence[EvalPrompt],
    *,
    seeds: Sequence[int],
    methods: Sequence[EvalMethod],
    scorers: Sequence[Scorer],
    out_dir: str | os.PathLike[str],
    steps: int = 20,
    guidance_scale: float = 7.5,
    width: int | None = None,
    height: int | None = None,
    region_size: int | None = None,
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Render and score every (prompt, seed, method) not already in ``out_dir``; all records.

    Records are appended to ``results.jsonl`` as each item finishes and its image is written
    atomically under ``images/``, so a run stopped at any point resumes where it was.

    The canvas is ``width`` × ``height`` (the model's native size by default) for every prompt;
    with ``region_size``, each prompt that has an exact plan gets the canvas on which every
    region of that plan is at least ``region_size`` pixels wide and high
    (:func:`region_canvas`), and every method renders that canvas, so stock and rpg still
    compare on the same pixels.
    """
    from tqdm import tqdm

    if not items:
        raise ConfigurationError("the prompt set is empty")
    if not methods:
        raise ConfigurationError("no methods to compare; give e.g. --methods stock,rpg,exact")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if region_size is not None and (width or height):
        raise ConfigurationError("give a region size or a width and height, not both")
    native_w, native_h = pipe.backbone.native_size
    common = {"model": pipe.model, "steps": steps, "guidance_scale": guidance_scale}

    def settings_for(item: EvalPrompt) -> dict[str, Any]:
        if region_size is not None and item.plan is not None:
            w, h = region_canvas(item.plan, region_size)
        else:
            w, h = width or native_w, height or native_h
        return {**common, "width": w, "height": h}

    done = {r["key"]: r for r in read_results(out) if (out / r.get("image", "")).is_file()}
    jobs = [
        (index, item, seed, method)
        for index, item in enumerate(items)
        for seed in seeds
        for method in methods
    ]
    bar = tqdm(total=len(jobs), disable=not progress, unit="image", desc="rpg eval")
    records: list[dict[str, Any]] = []
    results = out / RESULTS_NAME
    if results.is_file() and results.stat().st_size:
        with results.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        if torn:  # a run killed mid-line: end that line so the next record stands alone
            with results.open("a", encoding="utf-8") as end:
                end.write("\n")
    with results.open("a", encoding="utf-8") as log:
        for index, item, seed, method in jobs:
            settings = settings_for(item)
            key = item_key(item, seed, method, settings)
            if key in done:
                records.append(done[key])
                bar.update(1)
                continue
            started = time.perf_counter()
            image, plan = _render(pipe, item, seed, method, settings)
            seconds = time.perf_counter() - started
            name = f"images/{key}.png"
            part = out / (name + ".part")
            image.save(part, format="PNG")
            os.replace(part, out / name)
            scores: dict[str, float] = {}
            for scorer in scorers:
                scores.update(scorer.score(image, item, plan))
            record = {
                "key": key,
                "index": index,
                "prompt": item.prompt,
                "category": item.category,
                "objects": list(item.objects),
                "seed": seed,
                "method": method.label,
                "image": name,
                "plan": plan.model_dump(mode="json") if plan is not None else None,
                "scores": scores,
                "seconds": round(seconds, 3),
                "settings": settings,
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            records.append(record)
            if on_record is not None:
                on_record(record)
            bar.update(1)
    bar.close()
    return records
