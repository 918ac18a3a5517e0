"""Tiny ControlNets for tiny UNets: ``tiny-controlnet``, ``tiny-sdxl-controlnet``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rpg.backbones.tiny.components import staged_folder
from rpg.backbones.tiny.sd import write_tiny_sd
from rpg.backbones.tiny.sdxl import sdxl_unet

__all__ = ["write_tiny_controlnet", "write_tiny_sd_controlnet", "write_tiny_sdxl_controlnet"]


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

    with staged_folder(path) as (tmp, staging):
        if sdxl:
            unet_config = dict(sdxl_unet().config)
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


def write_tiny_sd_controlnet(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """``tiny-controlnet``: a ControlNet for ``tiny-sd`` (see :func:`write_tiny_controlnet`)."""
    return write_tiny_controlnet(path, sdxl=False, seed=seed)


def write_tiny_sdxl_controlnet(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """``tiny-sdxl-controlnet``: a tiny ControlNet for ``tiny-sdxl``."""
    return write_tiny_controlnet(path, sdxl=True, seed=seed)
