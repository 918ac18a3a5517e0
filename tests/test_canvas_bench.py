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
