"""Options a model family owns: typed, declared by its backbone, recorded in the request.

A :class:`~rpg.models.GenerationRequest` holds only what every model understands; what one family
adds (the MM-DiT joint-attention scope, FLUX's true CFG, ...) is that backbone's
:attr:`~rpg.backbones.base.Backbone.options_model`, a pydantic model, and travels in
``request.options`` as plain JSON. The backbone validates it against the loaded model
(:meth:`~rpg.backbones.base.Backbone.parse_options`), so a misspelt or foreign option is an error
naming what the model takes, and a new family adds no field to the request. The CLI and the
editor list the options from these declarations (:func:`option_fields`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rpg.errors import ConfigurationError
from rpg.pydantic_errors import problems

__all__ = [
    "BUILTIN_OPTIONS",
    "BackboneOptions",
    "FluxOptions",
    "JointOptions",
    "NoOptions",
    "OptionField",
    "UNetOptions",
    "cli_option_fields",
    "families_taking",
    "option_fields",
    "options_error",
]


class BackboneOptions(BaseModel):
    """Base of every family's options: frozen, no unknown keys, JSON round-trip."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class NoOptions(BackboneOptions):
    """A family with no options of its own (the default of a new backbone)."""


#: Shared by every family that offers it, so the CLI's one ``--image-attention`` flag reads true.
_IMAGE_ATTENTION = (
    "What the image at a position sees of the image in attention: 'global' all of it (RPG), "
    "'region' only its own region's cell."
)


_REGIONAL_STEPS = (
    "Fraction of the denoising steps that are regional; later steps follow the base (or whole) "
    "prompt."
)


class UNetOptions(BackboneOptions):
    """The UNet families' options (SD 1.x/2.x, SDXL, ControlNet): what crosses region edges
    besides the text, and for how many steps the text is regional.

    RPG confines only the *text* a position reads; self-attention and the GroupNorm statistics
    still see the whole image, so one region's content can leak into another's (a blue object
    shifting its neighbour's colour, a region left empty because the object elsewhere
    "counts"). ``"region"`` cuts those paths too, at the cost of RPG's exact semantics (see
    :mod:`rpg.attention.region_isolation`); ``regional_steps`` is
    :mod:`rpg.attention.regional_steps`.
    """

    image_attention: Literal["global", "region"] = Field(
        default="global", description=_IMAGE_ATTENTION
    )
    group_norm: Literal["global", "region"] = Field(
        default="global",
        description="Where the UNet's GroupNorm statistics come from: 'global' the whole image "
        "(RPG, the stock UNet), 'region' each region's own cell.",
    )
    regional_steps: float = Field(default=1.0, gt=0, le=1, description=_REGIONAL_STEPS)

    @property
    def needs_whole_prompt(self) -> bool:
        """Whether some steps are not regional, so (without a base prompt) the whole prompt is
        packed for them to read."""
        return self.regional_steps < 1


class JointOptions(BackboneOptions):
    """Regional joint attention on the MM-DiT families (FLUX.1, SD3, FLUX.2 klein)."""

    image_attention: Literal["global", "region"] = Field(
        default="global", description=_IMAGE_ATTENTION
    )
    regional_steps: float = Field(default=1.0, gt=0, le=1, description=_REGIONAL_STEPS)
    regional_blocks: int = Field(
        default=1, ge=1, description="Every k-th joint-attention block is regional."
    )

    def attention(self) -> Any:
        """These options as :class:`rpg.attention.joint.JointAttentionOptions`."""
        from rpg.attention.joint import JointAttentionOptions

        return JointAttentionOptions(
            image_attention=self.image_attention,
            regional_steps=self.regional_steps,
            regional_blocks=self.regional_blocks,
        )

    @property
    def needs_whole_prompt(self) -> bool:
        """Whether some calls are not regional, so (without a base prompt) the whole prompt is
        packed for them to read."""
        return self.regional_steps < 1 or self.regional_blocks > 1


class FluxOptions(JointOptions):
    """FLUX.1: the joint-attention options and true classifier-free guidance."""

    true_cfg_scale: float = Field(
        default=1.0,
        ge=1,
        le=100,
        json_schema_extra={"flag": "--true-cfg"},
        description="True classifier-free guidance with the negative prompt when above 1 "
        "(guidance_scale stays FLUX's distilled guidance embedding).",
    )


class OptionField(BaseModel):
    """One option as the CLI and the editor offer it."""

    model_config = ConfigDict(frozen=True)

    name: str
    flag: str
    description: str
    default: Any
    choices: tuple[str, ...] | None = None
    kind: Literal["float", "int", "str", "bool"] = "str"


def option_fields(model: type[BackboneOptions]) -> list[OptionField]:
    """The options ``model`` declares, with their CLI flag (``--regional-steps``)."""
    out = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        choices = getattr(annotation, "__args__", None)
        kind: Literal["float", "int", "str", "bool"] = "str"
        if annotation is float:
            kind = "float"
        elif annotation is int:
            kind = "int"
        elif annotation is bool:
            kind = "bool"
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        out.append(
            OptionField(
                name=name,
                flag=str(extra.get("flag") or "--" + name.replace("_", "-")),
                description=info.description or "",
                default=info.default,
                choices=tuple(str(c) for c in choices) if choices else None,
                kind=kind,
            )
        )
    return out


#: The built-in families' options by the pipeline class they drive, for checks that run before
#: torch is imported (the CLI's flags); each backbone's ``options_model`` is the truth, and a
#: test holds this table to it.
BUILTIN_OPTIONS: dict[str, type[BackboneOptions]] = {
    "StableDiffusionPipeline": UNetOptions,
    "StableDiffusionXLPipeline": UNetOptions,
    "StableDiffusionControlNetPipeline": UNetOptions,
    "StableDiffusionXLControlNetPipeline": UNetOptions,
    "FluxPipeline": FluxOptions,
    "StableDiffusion3Pipeline": JointOptions,
    "Flux2KleinPipeline": JointOptions,
}


def cli_option_fields() -> list[OptionField]:
    """Every option a built-in family declares, once each (what the CLI offers as flags)."""
    seen: dict[str, OptionField] = {}
    for model in BUILTIN_OPTIONS.values():
        for f in option_fields(model):
            seen.setdefault(f.name, f)
    return list(seen.values())


def families_taking(name: str) -> list[str]:
    """The built-in pipelines whose family declares option ``name``."""
    return [p for p, m in BUILTIN_OPTIONS.items() if name in m.model_fields]


def options_error(
    family: str, model: type[BackboneOptions], err: ValidationError, *, flags: bool = False
) -> ConfigurationError:
    """A validation error of ``model`` as one line naming each option (or its CLI flag)."""
    fields = option_fields(model)
    by_name = {f.name: f for f in fields}
    parts = []
    for problem in problems(err):
        name = problem.field or "options"
        shown = by_name[name].flag if flags and name in by_name else name
        if problem.type == "extra_forbidden":
            parts.append(f"{shown} does not apply to {family!r}")
        else:
            parts.append(f"{shown}: {problem.message}")
    takes = ", ".join((f.flag if flags else f.name) for f in fields) or "no options of its own"
    return ConfigurationError(f"{'; '.join(parts)} ({family!r} takes {takes})")


def validate_options(
    family: str, model: type[BackboneOptions], value: Mapping[str, Any] | BackboneOptions | None
) -> BackboneOptions:
    """``value`` as ``model``: an instance passes, a mapping is validated, ``None`` is defaults."""
    if isinstance(value, model):
        return value
    if isinstance(value, BackboneOptions):
        value = value.model_dump(exclude_defaults=True)
    try:
        return model.model_validate(dict(value or {}))
    except ValidationError as err:
        raise options_error(family, model, err) from None
