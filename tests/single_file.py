"""Test-only: export a tiny SDXL as one original-layout (SGM) ``.safetensors`` file.

The original SDXL checkpoint layout (Stability's "SGM" names). diffusers converts it to its own
layout when loading; this is the inverse for the tiny architectures, so a tiny SDXL can be
shared and loaded exactly like a fine-tune downloaded as one file, and ``from_single_file`` is
tested for real.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# The original SDXL checkpoint layout (Stability's "SGM" names). diffusers converts it to its
# own layout when loading; this is the inverse for the architectures written above, so a tiny
# SDXL can be shared and loaded exactly like a fine-tune downloaded as one file.

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet_key(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET.get(head, head)}.{tail}"


def _layer_key(blocks: str, index: int, kind: str, rest: str) -> str:
    """A resnet's (``kind == "resnets"``) or attention's parameter in original block ``index``."""
    if kind == "resnets":
        return f"{blocks}.{index}.0.{_resnet_key(rest)}"
    return f"{blocks}.{index}.1.{rest}"


def _unet_key(key: str, layers: int, up_with_attention: set[int]) -> str:
    """One diffusers UNet parameter name in the original layout."""
    for new, old in _UNET_FIXED.items():
        if key.startswith(new + "."):
            return old + key[len(new) :]
    parts = key.split(".")
    if parts[0] == "down_blocks":
        block = int(parts[1])
        first = 1 + block * (layers + 1)
        if parts[2] == "downsamplers":  # down_blocks.b.downsamplers.0.conv.* → op
            return f"input_blocks.{first + layers}.0.op.{'.'.join(parts[5:])}"
        return _layer_key("input_blocks", first + int(parts[3]), parts[2], ".".join(parts[4:]))
    if parts[0] == "mid_block":
        rest = ".".join(parts[3:])
        if parts[1] == "resnets":
            return f"middle_block.{2 * int(parts[2])}.{_resnet_key(rest)}"
        return f"middle_block.1.{rest}"
    if parts[0] == "up_blocks":
        block = int(parts[1])
        first = block * (layers + 1)
        if parts[2] == "upsamplers":
            # after the last layer's resnet (.0) and attention (.1) when the block has one
            slot = 2 if block in up_with_attention else 1
            return f"output_blocks.{first + layers}.{slot}.conv.{'.'.join(parts[5:])}"
        return _layer_key("output_blocks", first + int(parts[3]), parts[2], ".".join(parts[4:]))
    raise ValueError(f"no original-layout name for UNet parameter {key!r}")


def _unet_state_dict(unet: Any) -> dict[str, torch.Tensor]:
    state = unet.state_dict()
    layers = int(unet.config.layers_per_block)
    with_attention = {
        int(k.split(".")[1]) for k in state if k.startswith("up_blocks.") and ".attentions." in k
    }
    return {
        "model.diffusion_model." + _unet_key(k, layers, with_attention): v for k, v in state.items()
    }


def _vae_key(key: str, n_blocks: int) -> str:
    parts = key.split(".")
    coder = parts[0]
    if parts[1] in ("conv_in", "conv_out"):
        return key
    if parts[1] == "conv_norm_out":
        return f"{coder}.norm_out.{parts[2]}"
    if coder in ("quant_conv", "post_quant_conv"):
        return key
    if parts[1] == "mid_block":
        if parts[2] == "resnets":
            rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{coder}.mid.block_{int(parts[3]) + 1}.{rest}"
        name = {
            "group_norm": "norm",
            "to_q": "q",
            "to_k": "k",
            "to_v": "v",
            "to_out": "proj_out",
        }[parts[4]]
        tail = parts[-1]
        return f"{coder}.mid.attn_1.{name}.{tail}"
    if parts[1] in ("down_blocks", "up_blocks"):
        block = int(parts[2])
        level, word = (block, "down") if parts[1] == "down_blocks" else (n_blocks - 1 - block, "up")
        if parts[3] == "resnets":
            rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
            return f"{coder}.{word}.{level}.block.{parts[4]}.{rest}"
        sampler = "downsample" if word == "down" else "upsample"
        return f"{coder}.{word}.{level}.{sampler}.conv.{parts[-1]}"
    raise ValueError(f"no original-layout name for VAE parameter {key!r}")


def _vae_state_dict(vae: Any) -> dict[str, torch.Tensor]:
    n_blocks = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        new = _vae_key(key, n_blocks)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original attention uses 1×1 convolutions
        out["first_stage_model." + new] = value
    return out


def _clip_l_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    prefix = "conditioner.embedders.0.transformer."
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("position_ids"):
            continue
        name = key if key.startswith("text_model.") else "text_model." + key
        out[prefix + name] = value
    return out


def _open_clip_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    prefix = "conditioner.embedders.1.model."
    state = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
    out = {
        prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": state.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": state.pop("final_layer_norm.bias"),
        # OpenCLIP multiplies by the projection from the right: store the transpose.
        prefix + "text_projection": state.pop("text_projection.weight").T.contiguous(),
    }
    state.pop("embeddings.position_ids", None)
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            )
            out[f"{dst}attn.out_proj.{kind}"] = state.pop(f"{src}self_attn.out_proj.{kind}")
            out[f"{dst}ln_1.{kind}"] = state.pop(f"{src}layer_norm1.{kind}")
            out[f"{dst}ln_2.{kind}"] = state.pop(f"{src}layer_norm2.{kind}")
            out[f"{dst}mlp.c_fc.{kind}"] = state.pop(f"{src}mlp.fc1.{kind}")
            out[f"{dst}mlp.c_proj.{kind}"] = state.pop(f"{src}mlp.fc2.{kind}")
    if state:
        raise ValueError(f"text_encoder_2 parameters with no original-layout name: {sorted(state)}")
    return out


def sdxl_to_single_file_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """All weights of an SDXL pipeline under their original single-file (SGM) names."""
    parts: list[Mapping[str, torch.Tensor]] = [
        _unet_state_dict(pipe.unet),
        _vae_state_dict(pipe.vae),
        _clip_l_state_dict(pipe.text_encoder),
        _open_clip_state_dict(pipe.text_encoder_2),
    ]
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        for key, value in part.items():
            if key in out:
                raise ValueError(f"two parameters map to the single-file name {key!r}")
            out[key] = value.detach().contiguous().cpu()
    return out


def save_sdxl_single_file(folder: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Save the SDXL pipeline in diffusers ``folder`` as one original-layout ``.safetensors``.

    Loading it back offline needs the architecture's configs:
    ``StableDiffusionXLPipeline.from_single_file(path, config=folder, local_files_only=True)``
    (rpg: ``RPG.from_pretrained(path, config=folder)``).
    """
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    pipe = StableDiffusionXLPipeline.from_pretrained(os.fspath(folder), local_files_only=True)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(sdxl_to_single_file_state_dict(pipe), str(target))
    return target
