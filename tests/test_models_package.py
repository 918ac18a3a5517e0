"""``rpg.models`` as a package: the JSON it writes and the schema planners send are pinned.

``rpg.models`` was one 1,193-line module; it is a package of one module per concept now, and
``Region`` and ``Layer`` take their four shared fields from one home (``rpg.models.parts``).
Pydantic orders fields parents first, and field order is the order of a plan's JSON and of the
JSON Schema, so a careless base class would reorder every saved plan. The golden file holds what
rpg wrote before the split (commit db04ccc); a deliberate schema change regenerates it with
``python tests/test_models_package.py --write`` and says so in the changelog.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(__file__).parent / "data" / "models_golden.json"

#: Every name ``rpg.models`` exported before it became a package, ``__all__`` and the rest that
#: code imports from it.
NAMES = [
    "DEFAULT_BASE_RATIO", "DEFAULT_HIRES_STRENGTH", "DEFAULT_STRENGTH", "MAX_CONTROL_SCALE",
    "MAX_LAYERS", "MAX_PLAN_JSON_BYTES", "MAX_PROMPT_CHARS", "MAX_REQUEST_JSON_BYTES", "MAX_SEED",
    "ControlInput", "Entity", "GenerationRequest", "GenerationResult", "HiresFix", "Layer",
    "LayerMask", "LayerWarning", "PlanResult", "Recaption", "Region", "RegionPlan", "Row",
    "whole_image_text",
]  # fmt: skip
EXTRA_NAMES = ["LoraInput", "MAX_HIRES_SCALE", "LEGACY_REQUEST_OPTIONS"]

MODELS = ["Entity", "Recaption", "Region", "Row", "Layer", "RegionPlan", "PlanResult",
          "ControlInput", "HiresFix", "GenerationRequest"]  # fmt: skip


def _samples() -> dict[str, Any]:
    from rpg.models import (
        ControlInput,
        Entity,
        GenerationRequest,
        Layer,
        PlanResult,
        Recaption,
        Region,
        RegionPlan,
        Row,
    )

    grid = RegionPlan(
        rows=[
            Row(
                height=2,
                regions=[
                    Region(
                        prompt=" a ",
                        width=2,
                        negative_prompt="n",
                        base_weight=0.2,
                        loras=["xl:0.5"],
                    ),
                    Region(prompt="b"),
                ],
            ),
            Row(regions=[Region(prompt="c")]),
        ],
        base_prompt="base",
    )
    canvas = RegionPlan(
        layers=[
            Layer(
                prompt="x", box=(0, 0, 0.5, 0.5), negative_prompt="q", base_weight=0.1, loras=["yl"]
            ),
            Layer(prompt="y", box=(0.25, 0.25, 1, 1)),
        ],
        base_prompt="bg",
    )
    request = GenerationRequest(
        prompt="p", plan=grid, seed=3, controls=[ControlInput(controlnet="tiny-controlnet")],
        hires=2, loras=[("zl", 0.7)], true_cfg_scale=2.0,
    )  # fmt: skip
    result = PlanResult(
        recaption=Recaption(original_prompt="p", entities=[Entity(name="e", attributes=["a"])]),
        plan=canvas,
    )
    return {"grid": grid, "canvas": canvas, "to_canvas": grid.to_canvas(), "request": request,
            "plan_result": result}  # fmt: skip


def snapshot() -> dict[str, str]:
    """Schemas (both modes) of every model, the planners' schemas, and sample JSON."""
    import rpg.models
    from rpg.planners import schema

    out: dict[str, str] = {}
    for name in MODELS:
        cls = getattr(rpg.models, name)
        out[f"{name}.schema"] = json.dumps(cls.model_json_schema())
        out[f"{name}.schema.serialization"] = json.dumps(
            cls.model_json_schema(mode="serialization")
        )
    out["plan_schema"] = json.dumps(schema.plan_schema())
    out["plan_schema.strict"] = json.dumps(schema.plan_schema(strict=True, bounded=True))
    out["PlanReply.strict"] = json.dumps(schema.reply_schema(schema.PlanReply, strict=True))
    for key, obj in _samples().items():
        out[f"{key}.json"] = obj.model_dump_json()
        out[f"{key}.json.indent"] = obj.model_dump_json(indent=2, exclude_none=True)
    return out


def test_schemas_and_json_are_what_rpg_wrote_before_the_split() -> None:
    golden, now = json.loads(GOLDEN.read_text()), snapshot()
    assert sorted(now) == sorted(golden)
    changed = [key for key in golden if now[key] != golden[key]]
    assert not changed, f"changed since the split: {changed}"


def test_every_name_is_still_importable_from_rpg_models() -> None:
    import rpg.models

    assert sorted(rpg.models.__all__) == sorted(NAMES)
    for name in NAMES + EXTRA_NAMES:
        assert getattr(rpg.models, name) is not None, name


def test_region_and_layer_share_one_home_for_their_common_fields() -> None:
    from rpg.models import Layer, Region
    from rpg.models.parts import PromptedPart

    assert issubclass(Region, PromptedPart) and issubclass(Layer, PromptedPart)
    for name in ["prompt", "negative_prompt", "base_weight", "loras"]:
        region, layer = Region.model_fields[name], Layer.model_fields[name]
        assert region.metadata == layer.metadata, name  # the same constraints
        assert region.default == layer.default, name
        said = (region.description or "").replace("for this region:", "drawn in this layer:")
        assert said.replace("region", "layer") == layer.description, name


@pytest.mark.parametrize("model", ["Region", "Layer"])
def test_the_shared_validators_name_the_part(model: str) -> None:
    from pydantic import ValidationError

    import rpg.models

    cls = getattr(rpg.models, model)
    shape = {"box": (0, 0, 1, 1)} if model == "Layer" else {}
    with pytest.raises(ValidationError, match=f"a {model.lower()} prompt must not be empty"):
        cls(prompt="  ", **shape)
    part = cls(prompt=" cat ", loras=["style:0.5"], **shape)
    assert part.prompt == "cat"
    assert [(x.name, x.scale) for x in part.loras] == [("style", 0.5)]


def test_plans_and_requests_pickle_by_their_new_home() -> None:
    """Ray and the batch engine pickle requests: the classes must be found where they live."""
    for obj in _samples().values():
        again = pickle.loads(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        assert again == obj
        assert type(again).__module__.startswith("rpg.models.")


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    GOLDEN.write_text(json.dumps(snapshot(), indent=1, sort_keys=True) + "\n")
