"""Conditioning and layouts shared by the attention tests."""

from __future__ import annotations

import torch

from rpg.attention import RegionalConditioning, RegionalLayout


def two_by_two(height: int = 64, width: int = 64) -> tuple[RegionalConditioning, RegionalLayout]:
    """Four regions on two rows of unequal cells, a base prompt; 32-wide tokens, spans of 5."""
    layout = RegionalLayout(
        rows=((1.0, (1.0, 2.0)), (1.0, (2.0, 1.0))),
        base_weights=(0.3,) * 4,
        height=height,
        width=width,
    )
    cond = RegionalConditioning(
        prompt_embeds=torch.zeros(1, 25, 32),
        region_spans=((5, 10), (10, 15), (15, 20), (20, 25)),
        base_span=(0, 5),
        negative_span=(0, 5),
    )
    return cond, layout
