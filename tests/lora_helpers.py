"""Tiny LoRA files the tests write themselves: peft adapters on copies of a pipeline's models,
saved with the pipeline class's own ``save_lora_weights``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

#: Every attention projection of a UNet or FLUX transformer (global LoRAs).
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
#: Cross-attention keys and values only: what a region's own LoRA may hold (UNet).
CROSS_KV = [r"attn2\.to_k", r"attn2\.to_v"]


def _adapter_layers(model: Any, targets: list[str] | str, seed: int, rank: int) -> dict:
    """Random LoRA weights on a fresh model of ``model``'s config (the original is untouched)."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    copy = type(model).from_config(model.config)
    if isinstance(targets, list) and any("\\" in t for t in targets):
        targets = "|".join(f".*{t}" for t in targets)  # a regex over full module names
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, init_lora_weights=False, target_modules=targets
    )
    torch.manual_seed(seed)
    copy.add_adapter(config, adapter_name="tiny")
    with torch.no_grad():  # larger B than peft's random init: the effect must show in 3 steps
        for name, p in copy.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    return get_peft_model_state_dict(copy, adapter_name="tiny")


def write_lora(
    pipe: Any,
    path: Path,
    *,
    targets: list[str] | str = ATTENTION,
    seed: int = 0,
    rank: int = 4,
    text_encoder: bool = False,
) -> Path:
    """Write a LoRA for ``pipe``'s denoiser (UNet or transformer) to ``path`` (a file name).

    ``text_encoder=True`` adds LoRA weights on the first text encoder's attention too.
    """
    denoiser = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    layers: dict[str, Any] = {
        f"{denoiser}_lora_layers": _adapter_layers(getattr(pipe, denoiser), targets, seed, rank)
    }
    if text_encoder:
        from peft import LoraConfig, get_peft_model
        from peft.utils import get_peft_model_state_dict

        torch.manual_seed(seed + 1)
        encoder = type(pipe.text_encoder)(pipe.text_encoder.config)
        config = LoraConfig(
            r=rank, init_lora_weights=False, target_modules=["q_proj", "k_proj", "v_proj"]
        )
        peft_model = get_peft_model(encoder, config)
        state = get_peft_model_state_dict(peft_model)
        layers["text_encoder_lora_layers"] = {
            k.removeprefix("base_model.model."): v for k, v in state.items()
        }
    type(pipe).save_lora_weights(path.parent, weight_name=path.name, **layers)
    return path
