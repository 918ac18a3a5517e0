"""What a request says about LoRA adapters: a name, a scale and the file's hash.

Pure data, no torch: :mod:`rpg.models` uses :class:`LoraInput` for ``GenerationRequest.loras``
(adapters for the whole image) and ``Region.loras`` (adapters that act on one region's text
only, see :mod:`rpg.lora`). Loading and applying them is :mod:`rpg.lora`'s job.

Everywhere a LoRA is accepted it may be given as a :class:`LoraInput`, a dict of its fields,
a ``(name, scale)`` pair, or a ``"NAME[:SCALE]"`` string (the CLI's ``--lora`` syntax).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["MAX_LORA_SCALE", "LoraInput", "coerce_loras", "parse_lora"]

#: Largest LoRA scale (in absolute value) a request accepts; typical values are 0.3 to 1.5,
#: negative ones invert a LoRA (slider LoRAs).
MAX_LORA_SCALE = 10.0


class LoraInput(BaseModel):
    """One LoRA adapter and its scale, recorded so a render can be repeated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(
        description="The LoRA: a .safetensors file, a folder holding "
        "pytorch_lora_weights.safetensors, or a hub id ('org/name' or 'org/name/file.safetensors') "
        "read from the local Hugging Face cache; local paths are recorded as absolute paths.",
    )
    scale: float = Field(
        default=1.0,
        ge=-MAX_LORA_SCALE,
        le=MAX_LORA_SCALE,
        allow_inf_nan=False,
        description="How strongly the LoRA acts (diffusers' adapter weight); 0 turns it off.",
    )
    sha256: str | None = Field(
        default=None,
        pattern="^[0-9a-f]{64}$",
        description="SHA-256 of the LoRA file's bytes, recorded at render time; a re-render with "
        "a file that hashes differently is refused. Null when not yet rendered.",
    )

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("a LoRA name must not be empty")
        return v


def parse_lora(text: str) -> LoraInput:
    """``"NAME[:SCALE]"`` as a :class:`LoraInput` (``--lora style.safetensors:0.7``).

    The scale is what follows the last colon when that parses as a number; anything else (a
    Windows drive letter, a colon in a file name) stays part of the name.
    """
    name, colon, tail = text.strip().rpartition(":")
    if colon:
        try:
            scale = float(tail)
        except ValueError:
            pass
        else:
            if not math.isfinite(scale):
                raise ValueError(f"LoRA scale must be a finite number, got {tail!r} in {text!r}")
            return LoraInput(name=name, scale=scale)
    return LoraInput(name=text)


def _one(item: Any) -> Any:
    if isinstance(item, str):
        return parse_lora(item)
    if isinstance(item, (tuple, list)):
        if len(item) != 2 or not isinstance(item[0], str):
            raise ValueError(f"a LoRA given as a pair is (name, scale), got {item!r}")
        return {"name": item[0], "scale": item[1]}
    return item


def coerce_loras(value: Any) -> Any:
    """A ``loras`` field value with pairs and ``"NAME:SCALE"`` strings turned into inputs.

    Used as a ``mode="before"`` validator, so pydantic validates what it returns.
    """
    if value is None:
        return ()
    if isinstance(value, (str, LoraInput, dict)):
        value = [value]
    if isinstance(value, Sequence):
        return [_one(item) for item in value]
    return value
