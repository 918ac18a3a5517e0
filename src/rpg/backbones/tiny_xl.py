"""Tiny SDXL and ControlNet components with random weights, written as real diffusers folders.

The SDXL and ControlNet code paths (two text encoders, pooled embeddings, ``add_time_ids``,
ControlNet residuals, ``from_single_file``) need real models to be tested, and real ones are
gigabytes. These writers produce the same architectures at toy size: a 64×64 render takes about a
second on two CPU cores, the same seed writes the same weights, and the images are noise.

* :func:`write_tiny_sdxl` — ``StableDiffusionXLPipeline`` folder (CLIP-L-style and
  OpenCLIP-G-style text encoders of different widths, a ``text_time`` UNet, a four-level VAE).
* :func:`write_tiny_controlnet` — a ``ControlNetModel`` matching the tiny SD or SDXL UNet.
* :func:`save_sdxl_single_file` — one ``.safetensors`` in the original (SGM) key layout, the
  format of SDXL fine-tunes shared as a single file, so ``from_single_file`` is tested for real.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "TINY_CONTROLNET",
    "TINY_SDXL",
    "TINY_SDXL_CONTROLNET",
    "TINY_XL_MODELS",
    "save_sdxl_single_file",
    "sdxl_to_single_file_state_dict",
    "write_tiny_controlnet",
    "write_tiny_sdxl",
]

#: Reserved model name of the tiny SDXL model.
TINY_SDXL = "tiny-sdxl"
#: Reserved name of a tiny ControlNet for ``tiny-sd``.
TINY_CONTROLNET = "tiny-controlnet"
#: Reserved name of a tiny ControlNet for ``tiny-sdxl``.
TINY_SDXL_CONTROLNET = "tiny-sdxl-controlnet"

#: Reserved names and what each is, for error messages and ``rpg plugins``.
TINY_XL_MODELS: dict[str, str] = {
    TINY_SDXL: "tiny SDXL architecture with random weights (64×64, offline)",
    TINY_CONTROLNET: "tiny ControlNet for tiny-sd with random weights (offline)",
    TINY_SDXL_CONTROLNET: "tiny ControlNet for tiny-sdxl with random weights (offline)",
}

# The two encoders must differ in width: diffusers' single-file loader tells SDXL's CLIP-L
# and OpenCLIP-G apart by the width of their position embeddings, as in the real 768 / 1280.
_HIDDEN_1 = 32
_HIDDEN_2 = 64
# Ten layers: diffusers recognises an SDXL single file by OpenCLIP-G's tenth block.
_LAYERS_2 = 10
_TIME_EMBED_DIM = 8


def _sdxl_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        # Like SDXL: no attention at the finest level, two transformer layers below it.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=_HIDDEN_1 + _HIDDEN_2,
        addition_embed_type="text_time",
        addition_time_embed_dim=_TIME_EMBED_DIM,
        # six time ids (original size, crop corner, target size) + the pooled text embedding
        projection_class_embeddings_input_dim=6 * _TIME_EMBED_DIM + _HIDDEN_2,
        norm_num_groups=16,
    )


def write_tiny_sdxl(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write a complete tiny SDXL-architecture diffusers folder to ``path`` and return it.

    Text encoders: a ``CLIPTextModel`` of width 32 and a ten-layer
    ``CLIPTextModelWithProjection`` of width 64 (its pooled, projected output feeds the UNet's
    ``text_time`` embedding), each with the byte-level tokenizer of :mod:`rpg.backbones.tiny`.
    UNet: block_out_channels (32, 64), cross-attention dimension 96 (= 32 + 64), attention only
    below the finest level, as in SDXL. VAE: four levels (latent factor 8). Scheduler: SDXL's
    Euler settings. An existing folder is replaced.
    """
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    # lazy: rpg.backbones.tiny imports this module
    from rpg.backbones.tiny import (
        SD_SCHEDULE,
        clip_text_config,
        four_level_vae,
        sdxl_pipeline,
        staged_folder,
        write_tokenizer,
    )

    with staged_folder(path) as (tmp, staging):
        tok_dir = tmp / "tokenizer"
        write_tokenizer(tok_dir)
        tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
        tokenizer_2 = CLIPTokenizer.from_pretrained(tok_dir)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = _sdxl_unet()
            vae = four_level_vae(
                (16, 16, 32, 32),
                layers_per_block=1,
                sample_size=64,
                norm_num_groups=16,
                scaling_factor=0.13025,
            )
            text_encoder = CLIPTextModel(clip_text_config(tokenizer, _HIDDEN_1, 2))
            text_encoder_2 = CLIPTextModelWithProjection(
                clip_text_config(tokenizer_2, _HIDDEN_2, _LAYERS_2)
            )
        scheduler = EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="leading")
        pipe = sdxl_pipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=unet,
            scheduler=scheduler,
        )
        pipe.save_pretrained(staging)
        for sub in ("tokenizer", "tokenizer_2"):
            for name in ("vocab.json", "merges.txt"):
                shutil.copyfile(tok_dir / name, staging / sub / name)
    return Path(path)


def _randomise_zero_convs(controlnet: torch.nn.Module, std: float) -> None:
    """Give ControlNet's zero-initialised output convolutions random weights.

    A freshly made ControlNet adds exactly zero to the UNet (its output convolutions start at
    zero, as in training), so a test could not tell whether the control image was used.
    """
    for name, param in controlnet.named_parameters():
        if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")) or (
            name.startswith("controlnet_cond_embedding.conv_out")
        ):
            with torch.no_grad():
                param.normal_(0.0, std)


def write_tiny_controlnet(path: str | os.PathLike[str], *, sdxl: bool, seed: int = 0) -> Path:
    """Write a tiny ``ControlNetModel`` folder matching the tiny SD (or, with ``sdxl``, SDXL) UNet.

    The ControlNet copies the UNet's configuration (``ControlNetModel.from_unet``) with a
    four-level condition encoder (image → latent size, factor 8) and random weights everywhere,
    including the output convolutions that real ControlNets start at zero, so that it changes
    the image. An existing folder is replaced.
    """
    from diffusers import ControlNetModel, UNet2DConditionModel

    from rpg.backbones.tiny import staged_folder, write_tiny_sd

    with staged_folder(path) as (tmp, staging):
        if sdxl:
            unet_config = dict(_sdxl_unet().config)
        else:
            # The tiny SD UNet's architecture is whatever write_tiny_sd writes; read it back.
            sd_dir = write_tiny_sd(tmp / "sd", seed=seed)
            unet_config = dict(UNet2DConditionModel.load_config(sd_dir / "unet"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            unet = UNet2DConditionModel.from_config(unet_config)
            controlnet = ControlNetModel.from_unet(
                unet,
                conditioning_embedding_out_channels=(8, 8, 16, 16),
                load_weights_from_unet=False,
            )
            _randomise_zero_convs(controlnet, std=0.05)
        controlnet.save_pretrained(staging)
    return Path(path)


# --- single-file export -----------------------------------------------------------------------
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
