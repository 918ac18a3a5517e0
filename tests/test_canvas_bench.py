"""``bench/overhead.py --canvas`` at tiny widths: every row runs, lands in the table and the JSON.

The numbers of a tiny run mean nothing; this checks the code paths (dispatch from overhead.py,
both architectures, grid / canvas / boxes / soft rows, paired ratios against stock and grid).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_canvas_bench_runs_every_row(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))
    try:
        import overhead

        out = tmp_path / "canvas.json"
        argv = ["--canvas", "--tiny", "--repeats", "1", "--warmup", "0", "--counts", "4"]
        assert overhead.main([*argv, "--out", str(out)]) == 0
    finally:
        sys.path.remove(str(BENCH))
    printed = capsys.readouterr().out
    assert "sd15: median cpu-time ratios" in printed and "flux: median" in printed
    data = json.loads(out.read_text())
    names = ["stock", "grid 4", "canvas 4", "boxes 4", "grid 4 base", "canvas 4 base",
             "boxes 4 base", "soft 4", "soft 4 base"]  # fmt: skip
    for arch in ("sd15", "flux"):
        rows = {r["config"]: r for r in data[arch]}
        assert list(rows) == names
        assert rows["stock"]["x_stock"] == 1.0
        assert rows["grid 4"]["x_grid"] == 1.0
        for name in names[1:]:
            assert len(rows[name]["ratios"]) == 1 and rows[name]["ratios"][0] > 0
            assert rows[name]["x_grid"] is not None


def test_canvas_bench_counts_flops_without_timing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``--repeats 0 --flops``: exact counts; a grid given as layers does the grid's work.

    The hard-box claim (each position computed once, so a canvas costs what a grid costs) is a
    statement about work done, which the FLOP counter sees exactly where timings are noisy.
    """
    sys.path.insert(0, str(BENCH))
    try:
        import overhead_canvas

        out = tmp_path / "flops.json"
        argv = ["--tiny", "--repeats", "0", "--flops", "--counts", "4", "--out", str(out)]
        assert overhead_canvas.main(argv) == 0
    finally:
        sys.path.remove(str(BENCH))
    data = json.loads(out.read_text())
    for arch in ("sd15", "flux"):
        rows = {r["config"]: r for r in data[arch]}
        assert all(r["flops"] > 0 for r in rows.values())
        assert all(r["ratios"] == [] for r in rows.values())  # no timing asked for
        for name in ("canvas 4", "canvas 4 base", "boxes 4 base"):
            assert rows[name]["flops_x_grid"] == 1.0, (arch, name)
        # a soft canvas attends shared positions once per layer painting them: more work
        assert rows["soft 4"]["flops_x_grid"] > 1.0
    # UNet: the background is one more painter over positions the boxes leave, same token count
    assert {r["config"]: r for r in data["sd15"]}["boxes 4"]["flops_x_grid"] == 1.0
