"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import UNet2DConditionModel


def build_tiny_unet(seed: int = 0) -> UNet2DConditionModel:
    """A ~1M-parameter SD-style UNet with cross-attention at two resolutions (random weights)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    return unet.eval()


@pytest.fixture
def tiny_unet() -> UNet2DConditionModel:
    """A fresh tiny random-weight ``UNet2DConditionModel`` (cross_attention_dim 32)."""
    return build_tiny_unet()


# ---------------------------------------------------------------- tiny Stable Diffusion pipeline


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete tiny SD diffusers folder (random weights), written once per session.

    It lies at ``<tmp>/rpg-cache/tiny-sd``, where rpg looks for the reserved model name
    ``tiny-sd`` when ``RPG_CACHE_DIR`` points at ``<tmp>/rpg-cache`` (see ``rpg_cache``).
    """
    from rpg.backbones.tiny.sd import write_tiny_sd

    return write_tiny_sd(tmp_path_factory.mktemp("rpg-cache") / "tiny-sd", seed=0)


@pytest.fixture
def rpg_cache(tiny_sd_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point rpg's cache at the session's tiny model, so ``--model tiny-sd`` loads it."""
    monkeypatch.setenv("RPG_CACHE_DIR", str(tiny_sd_path.parent))
    return tiny_sd_path.parent


@pytest.fixture(scope="session")
def tiny_rpg(tiny_sd_path: Path) -> Any:
    """An ``rpg.RPG`` on the tiny SD model (CPU, float32, rules planner, no progress bars)."""
    from rpg.orchestrator import RPG

    pipe = RPG.from_pretrained(tiny_sd_path, device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    return pipe
