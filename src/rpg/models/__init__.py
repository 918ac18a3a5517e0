"""Typed core of rpg: plans, recaptions, requests and results.

The models are frozen pydantic v2 models, and frozen all the way down: their sequences are
tuples, so a plan or request cannot change after it was validated (JSON still holds arrays, and
lists are accepted on input). Their field descriptions are the reference documentation and end
up in the JSON Schema that planners hand to language models, so they are written for both
readers.

One module per concept, all importable from here: :mod:`~rpg.models.limits` (sizes and
defaults), :mod:`~rpg.models.grid` (rows and regions), :mod:`~rpg.models.canvas` (layers and
masks), :mod:`~rpg.models.parts` (what a region and a layer share), :mod:`~rpg.models.plan`
(``RegionPlan``), :mod:`~rpg.models.reply` (recaption and ``PlanResult``),
:mod:`~rpg.models.request` and :mod:`~rpg.models.result`.
"""

from rpg.lora_spec import LoraInput as LoraInput  # importable from here, not in __all__
from rpg.models.canvas import Layer, LayerMask, LayerWarning
from rpg.models.grid import Region, Row
from rpg.models.limits import (
    DEFAULT_BASE_RATIO,
    DEFAULT_HIRES_STRENGTH,
    DEFAULT_STRENGTH,
    MAX_CONTROL_SCALE,
    MAX_LAYERS,
    MAX_PLAN_JSON_BYTES,
    MAX_PROMPT_CHARS,
    MAX_REQUEST_JSON_BYTES,
    MAX_SEED,
)
from rpg.models.limits import (
    MAX_HIRES_SCALE as MAX_HIRES_SCALE,
)
from rpg.models.plan import RegionPlan, whole_image_text
from rpg.models.reply import Entity, PlanResult, Recaption
from rpg.models.request import (
    LEGACY_REQUEST_OPTIONS as LEGACY_REQUEST_OPTIONS,
)
from rpg.models.request import (
    ControlInput,
    GenerationRequest,
    HiresFix,
)
from rpg.models.result import GenerationResult

__all__ = [
    "DEFAULT_BASE_RATIO",
    "DEFAULT_HIRES_STRENGTH",
    "DEFAULT_STRENGTH",
    "MAX_CONTROL_SCALE",
    "MAX_LAYERS",
    "MAX_PLAN_JSON_BYTES",
    "MAX_PROMPT_CHARS",
    "MAX_REQUEST_JSON_BYTES",
    "MAX_SEED",
    "ControlInput",
    "Entity",
    "GenerationRequest",
    "GenerationResult",
    "HiresFix",
    "Layer",
    "LayerMask",
    "LayerWarning",
    "PlanResult",
    "Recaption",
    "Region",
    "RegionPlan",
    "Row",
    "whole_image_text",
]
