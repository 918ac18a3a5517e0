"""Split-ratio grammar and the tiling of latent grids."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rpg.errors import SplitRatioError
from rpg.layout import (
    cell_edges,
    format_split_ratio,
    grid_cells,
    latent_grid_for_tokens,
    latent_grids,
    parse_split_ratio,
    split_prompts,
)
from rpg.models import RegionPlan

weights = st.floats(min_value=0.01, max_value=100, allow_nan=False, allow_infinity=False)
rows_strategy = st.lists(
    st.tuples(weights, st.lists(weights, min_size=1, max_size=5)), min_size=1, max_size=5
)


def test_parse_examples() -> None:
    assert parse_split_ratio("1,1") == [(1.0, [1.0, 1.0])]
    assert parse_split_ratio("1;1;1") == [(1.0, [1.0])] * 3
    assert parse_split_ratio("0.3;0.7,1,2") == [(0.3, [1.0]), (0.7, [1.0, 2.0])]
    assert parse_split_ratio(" 2 , 3 ") == [(1.0, [2.0, 3.0])]


@pytest.mark.parametrize("text", ["", " ", "1,a", "1;;1", "0", "1,inf", "1,nan", "-1"])
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(SplitRatioError):
        parse_split_ratio(text)


def test_split_prompts_handles_break_at_line_ends() -> None:
    assert split_prompts("a cat BREAK\na dog BREAK a bird") == ["a cat", "a dog", "a bird"]
    assert split_prompts("BREAKFAST table BREAK eggs") == ["BREAKFAST table", "eggs"]


@given(rows_strategy)
def test_format_then_parse_round_trips(rows: list[tuple[float, list[float]]]) -> None:
    parsed = parse_split_ratio(format_split_ratio(rows))
    if len(rows) == 1:
        assert parsed == [(1.0, rows[0][1])]  # a single row's height is not written
    else:  # a row of one region is written as its height alone
        assert parsed == [(h, ws if len(ws) > 1 else [1.0]) for h, ws in rows]


@given(rows_strategy)
def test_plan_round_trips_through_split_ratio(rows: list[tuple[float, list[float]]]) -> None:
    prompts = [f"p{i}" for i in range(sum(len(ws) for _, ws in rows))]
    plan = RegionPlan.from_split_ratio(format_split_ratio(rows), prompts)
    again = RegionPlan.from_split_ratio(plan.to_split_ratio(), plan.prompts)
    assert again.prompts == plan.prompts
    for a, b in zip(again.boxes(), plan.boxes(), strict=True):
        assert a == pytest.approx(b, abs=1e-12)


@settings(max_examples=300)
@given(st.lists(weights, min_size=1, max_size=8), st.integers(min_value=0, max_value=300))
def test_cell_edges_tile_exactly(ws: list[float], n: int) -> None:
    edges = cell_edges(ws, n)
    assert edges[0] == 0
    assert edges[-1] == n
    assert len(edges) == len(ws) + 1
    assert all(a <= b for a, b in itertools.pairwise(edges))
    if n >= len(ws):  # every region keeps at least one latent cell when there is room
        assert all(a < b for a, b in itertools.pairwise(edges))


def test_narrow_region_is_widened_at_coarse_layers() -> None:
    # a 2 % sliver would round to zero cells on an 8-wide grid; it keeps one cell instead
    assert cell_edges([0.02, 0.98], 8) == [0, 1, 8]
    assert cell_edges([0.98, 0.02], 8) == [0, 7, 8]
    # with fewer cells than regions some regions are empty at that resolution
    assert cell_edges([1, 1, 1], 2) in ([0, 1, 1, 2], [0, 0, 1, 2], [0, 1, 2, 2])


@settings(max_examples=200)
@given(
    rows_strategy,
    st.integers(min_value=1, max_value=256).map(lambda v: v * 8),
    st.integers(min_value=1, max_value=256).map(lambda v: v * 8),
)
def test_grid_cells_cover_every_position_once(rows, height: int, width: int) -> None:
    for h, w in latent_grids(height, width, levels=4):
        count = [[0] * w for _ in range(h)]
        for y0, y1, x0, x1 in grid_cells(rows, h, w):
            for y in range(y0, y1):
                for x in range(x0, x1):
                    count[y][x] += 1
        assert all(c == 1 for line in count for c in line)


def test_latent_grids_round_up_like_strided_convs() -> None:
    assert latent_grids(1000, 600, levels=4) == [(125, 75), (63, 38), (32, 19), (16, 10)]
    assert latent_grid_for_tokens(63 * 38, 1000, 600) == (63, 38)
    assert latent_grid_for_tokens(9 * 17, 72, 136) == (9, 17)
    with pytest.raises(ValueError, match="matches no latent grid"):
        latent_grid_for_tokens(1234, 512, 512)
