"""The loaded family's own options in the editor, offered from its backbone's declaration.

A backbone declares its options as a pydantic model (:attr:`~rpg.backbones.base.Backbone.
options_model`, see :mod:`rpg.backbones.options`); the CLI makes its flags from that declaration,
and the editor makes its inputs from it too: :func:`option_controls` describes one input per
option for ``/api/config`` (name, kind, choices, bounds, default, help text), the page sends the
values as ``request.options``, and :func:`check_options` validates them against the loaded
family before a job is queued. A new family's options appear in the editor without a change
here.
"""

from __future__ import annotations

from typing import Any

from rpg.backbones.options import option_fields
from rpg.backbones.schedulers import SCHEDULERS
from rpg.errors import ConfigurationError

__all__ = ["check_options", "option_controls", "scheduler_choices"]


def option_controls(backbone: Any) -> list[dict[str, Any]]:
    """One input per option of ``backbone``'s family: ``name``, ``label``, ``kind`` (``float``,
    ``int``, ``str``, ``bool``), ``choices``, ``min``/``max`` (with ``exclusive_min`` /
    ``exclusive_max``), ``step``, ``default`` and ``description``. Empty for a family without
    options (SD, SDXL, ControlNet)."""
    model = backbone.options_model
    controls = []
    for field in option_fields(model):
        control: dict[str, Any] = {
            "name": field.name,
            "label": field.name.replace("_", " "),
            "kind": field.kind,
            "choices": list(field.choices) if field.choices else None,
            "default": field.default,
            "description": field.description,
            "min": None,
            "max": None,
            "exclusive_min": False,
            "exclusive_max": False,
            "step": 1 if field.kind == "int" else 0.05 if field.kind == "float" else None,
        }
        for bound in model.model_fields[field.name].metadata:  # pydantic's Ge, Gt, Le, Lt
            for key, side, exclusive in (("ge", "min", False), ("gt", "min", True),
                                         ("le", "max", False), ("lt", "max", True)):  # fmt: skip
                if getattr(bound, key, None) is not None:
                    control[side] = getattr(bound, key)
                    control[f"exclusive_{side}"] = exclusive
        controls.append(control)
    return controls


def check_options(backbone: Any, options: dict[str, Any]) -> None:
    """Refuse options the loaded family does not take, or values out of range, before a job is
    queued: a :class:`~rpg.errors.ConfigurationError` naming each option and what the family
    takes (:meth:`~rpg.backbones.base.Backbone.parse_options`)."""
    backbone.parse_options(options)


def scheduler_choices(backbone: Any) -> list[dict[str, str]]:
    """The schedulers ``backbone`` renders with (``name``, ``description``), its own default
    first: every known one for the UNet families, only ``"default"`` (the pipeline's own
    flow-matching scheduler) for FLUX, SD3 and klein. Asked of the backbone, which builds each
    scheduler once and keeps it."""
    usable = []
    for name, (_, _, description) in SCHEDULERS.items():
        try:
            backbone.scheduler_named(name)
        except ConfigurationError:
            continue
        usable.append({"name": name, "description": description})
    first = backbone.request_scheduler()
    return sorted(usable, key=lambda s: s["name"] != first)
