"""What rpg does to a pipeline's peft adapters, apart from finding and loading LoRA files.

:class:`_Snapshot` remembers the user's adapters (which were active, their scales, enabled or
not) so that :func:`rpg.lora.applied_loras` can put them back; :func:`region_lora_refusal` and
:func:`_check_region_adapter` decide whether a model and an adapter can act on one region's text
(the semantics are in :mod:`rpg.lora`); :func:`lora_delta` is the low-rank update a region's
adapters add to its text, shared by the UNet processor and the MM-DiT hooks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rpg.errors import ConfigurationError
from rpg.lora_delta import lora_delta

if TYPE_CHECKING:
    from rpg.backbones.base import Backbone

__all__ = ["lora_delta", "region_lora_refusal"]


# ----------------------------------------------------------------- the pipeline's adapter state


def _components(pipe: Any) -> dict[str, Any]:
    names = getattr(pipe, "_lora_loadable_modules", None) or ()
    found = {n: getattr(pipe, n, None) for n in names}
    return {n: m for n, m in found.items() if m is not None}


def _tuner_layers(model: Any) -> Iterator[tuple[str, Any]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            yield name, module


@dataclass
class _Snapshot:
    """Everything about the pipeline's adapters that loading and activating ours changes."""

    had_adapters: dict[str, bool]
    layers: list[tuple[Any, list[str], dict[str, float], bool]] = field(default_factory=list)
    grads: list[tuple[Any, bool]] = field(default_factory=list)

    @classmethod
    def take(cls, pipe: Any) -> _Snapshot:
        components = _components(pipe)
        snap = cls({n: bool(getattr(m, "peft_config", None)) for n, m in components.items()})
        for name, model in components.items():
            if not snap.had_adapters[name]:
                continue
            for _, layer in _tuner_layers(model):
                snap.layers.append(
                    (
                        layer,
                        list(layer.active_adapters),
                        dict(layer.scaling),
                        layer.disable_adapters,
                    )
                )
            snap.grads += [
                (p, p.requires_grad) for k, p in model.named_parameters() if "lora_" in k
            ]
        return snap

    def restore(self, pipe: Any, ours: Sequence[str]) -> None:
        """Remove our adapters and put the user's back as they were."""
        from diffusers.utils import recurse_remove_peft_layers
        from diffusers.utils.peft_utils import delete_adapter_layers

        for name, model in _components(pipe).items():
            config = getattr(model, "peft_config", None)
            if not config:
                continue
            if not self.had_adapters.get(name, False):
                if hasattr(model, "unload_lora"):  # diffusers models (offloading-aware)
                    model.unload_lora()
                    continue
                recurse_remove_peft_layers(model)  # what unload_lora_weights does to encoders
                del model.peft_config
                if hasattr(model, "_hf_peft_config_loaded"):
                    model._hf_peft_config_loaded = None
                continue
            for adapter in ours:
                if adapter in config:
                    delete_adapter_layers(model, adapter)
                    config.pop(adapter, None)
        for layer, active, scaling, disabled in self.layers:
            layer.set_adapter(active)
            layer.enable_adapters(not disabled)
            layer.scaling.update(scaling)
        for param, wanted in self.grads:
            param.requires_grad_(wanted)


# ----------------------------------------------------------------- per-region checks


def region_lora_refusal(backbone: Backbone) -> str | None:
    """Why this backbone cannot take per-region LoRAs (``None``: it can).

    UNet models and MM-DiT models whose transformer has a text stream (FLUX.1, SD3 / SD3.5,
    FLUX.2) can; anything else is refused before a LoRA is loaded.
    """
    pipe = backbone.pipe
    if getattr(pipe, "unet", None) is not None:
        return None
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None:
        from rpg.attention.joint_lora import text_stream_layers

        if text_stream_layers(transformer):
            return None
    return (
        f"per-region LoRA needs a UNet model (SD 1.x/2.x, SDXL) or an MM-DiT model with a text "
        f"stream (FLUX.1, SD3, FLUX.2 klein); {backbone.name!r} has neither, so its text cannot "
        "be told apart per region: give the LoRA to the whole image (--lora, "
        "GenerationRequest.loras)"
    )


#: What a region LoRA may hold, said in the refusal (UNet, MM-DiT).
_WHERE = {
    "unet": "the keys and values of its own text in cross-attention (attn2.to_k / attn2.to_v "
    "of the UNet)",
    "transformer": "its own text tokens: the text stream's layers of double-stream / joint "
    "blocks (attn.add_q_proj, add_k_proj, add_v_proj, to_add_out, ff_context) and the "
    "attention and MLP layers of single-stream blocks (on the text rows)",
}


def _region_layers(pipe: Any) -> tuple[str, set[int]]:
    """The denoiser's name and the ids of the layers a region adapter may hold weights on."""
    from diffusers.models.attention_processor import Attention

    if getattr(pipe, "unet", None) is not None:
        allowed: set[int] = set()
        for module in pipe.unet.modules():
            if isinstance(module, Attention) and module.is_cross_attention:
                allowed.update((id(module.to_k), id(module.to_v)))
        return "unet", allowed
    from rpg.attention.joint_lora import text_stream_layers

    return "transformer", set(text_stream_layers(pipe.transformer))


def _check_region_adapter(pipe: Any, adapter: str, shown: str) -> None:
    """Refuse a region adapter with weights on layers every region shares (see ``_WHERE``)."""
    denoiser, allowed = _region_layers(pipe)
    wrong: dict[str, None] = {}
    for component, model in _components(pipe).items():
        for name, layer in _tuner_layers(model):
            if adapter not in getattr(layer, "lora_A", {}):
                continue
            if component == denoiser and id(layer) in allowed:
                if adapter in getattr(layer, "lora_magnitude_vector", {}):
                    raise ConfigurationError(
                        f"region LoRA {shown!r} is a DoRA adapter; per-region LoRA takes plain "
                        "LoRA weights only (give it to the whole image instead)"
                    )
                continue
            generic = [p for p in name.split(".") if not p.isdigit()]
            # a UNet's layer type is its last two parts; a transformer's needs its block kind
            shown_name = ".".join(generic if component == "transformer" else generic[-2:])
            wrong[f"{component}: {shown_name}"] = None
    if wrong:
        listed = sorted(wrong)
        more = f" and {len(listed) - 8} more" if len(listed) > 8 else ""
        raise ConfigurationError(
            f"region LoRA {shown!r} has weights on layers that every region shares "
            f"({', '.join(listed[:8])}{more}); a region's LoRA can act only on "
            f"{_WHERE[denoiser]}. Give this LoRA to the whole image (--lora, "
            "GenerationRequest.loras), or use one trained on those layers only"
        )
