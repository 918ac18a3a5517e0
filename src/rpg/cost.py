"""How long a render will take on the CPU, estimated before it starts (a lower bound).

The CLI warns before a render that would take very long (:func:`rpg.cli.checks.warn_if_slow`);
the estimate counts the UNet's self-attention, which grows with the square of the latent
positions, against this CPU's measured matrix-product rate.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["attention_work", "cpu_rate", "duration", "estimate_step_seconds"]


def attention_work(unet: Any, width: int, height: int) -> float:
    """Multiply-adds of the UNet's self-attention in one forward pass of one image.

    Self-attention grows with the square of the latent positions, so at large sizes it is most
    of a step; this counts ``2 · T² · C`` per layer (scores and weighted sum) for ``T`` positions
    at the layer's grid and ``C`` inner channels. Convolutions and cross-attention are left out,
    so the estimate is a lower bound.
    """
    from rpg.layout import latent_grids

    grids = latent_grids(height, width, levels=8)
    depth = len(getattr(unet.config, "block_out_channels", ())) or 1
    work = 0.0
    for name, module in unet.named_modules():
        if type(module).__name__ != "Attention" or getattr(module, "is_cross_attention", True):
            continue
        parts = name.split(".")
        if parts[0] == "down_blocks":
            level = int(parts[1])
        elif parts[0] == "up_blocks":
            level = depth - 1 - int(parts[1])
        elif parts[0] == "mid_block":
            level = depth - 1
        else:
            continue
        h, w = grids[min(level, len(grids) - 1)]
        tokens = h * w
        channels = int(getattr(module, "inner_dim", 0) or module.to_q.out_features)
        work += 2.0 * tokens * tokens * channels
    return work


def cpu_rate() -> float:
    """Multiply-adds per second this CPU manages in a float32 matrix product (about 50 ms)."""
    import torch

    a = torch.randn(384, 384)
    b = torch.randn(384, 384)
    torch.mm(a, b)  # warm-up
    rounds = 0
    started = time.perf_counter()
    while rounds < 3 or time.perf_counter() - started < 0.05:
        torch.mm(a, b)
        rounds += 1
    seconds = time.perf_counter() - started
    return float(384**3 * rounds / max(seconds, 1e-9))


def estimate_step_seconds(
    backbone: Any, width: int, height: int, *, images: int = 1
) -> float | None:
    """A lower bound on the seconds of one denoising step on the CPU, or ``None`` if unknown.

    Only UNet backbones are estimated (their self-attention is counted, see
    :func:`attention_work`); classifier-free guidance doubles the batch.
    """
    unet = getattr(getattr(backbone, "pipe", None), "unet", None)
    if unet is None or not hasattr(unet, "named_modules"):
        return None
    work = attention_work(unet, width, height) * 2 * images
    if work <= 0:
        return None
    return work / cpu_rate()


def duration(seconds: float) -> str:
    """``seconds`` as people say it: ``"40 s"``, ``"12 min"``, ``"1.5 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
