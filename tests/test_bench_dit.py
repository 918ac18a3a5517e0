"""The DiT overhead bench's code paths (FLOPs, memory subprocesses, paired timing) at tiny widths.

The numbers of a tiny run mean nothing; these tests check that every measurement runs, lands in
the table and the JSON, and is consistent with what it measures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def overhead_dit():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(BENCH))
    try:
        import overhead_dit

        yield overhead_dit
    finally:
        sys.path.remove(str(BENCH))


def test_flux_flops_memory_and_time(overhead_dit, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "flux.json"
    argv = ["--arch", "flux", "--tiny", "--size", "64", "--regions", "2", "--base", "on",
            "--image-attention", "global", "--flops", "--memory", "--time", "--repeats", "1",
            "--warmup", "0", "--memory-jobs", "2", "--out", str(out)]  # fmt: skip
    assert overhead_dit.main(argv) == 0
    printed = capsys.readouterr().out
    assert "per-block ratios carry over" in printed
    assert "activation peak" in printed
    results = {r["config"]: r for r in json.loads(out.read_text())["results"]}
    assert list(results) == ["stock", "rpg 2 base"]
    stock, rpg = results["stock"], results["rpg 2 base"]
    # The base prompt adds region text on top of the stock padding: more text, more FLOPs.
    assert rpg["text_tokens"] > stock["text_tokens"]
    assert rpg["flops"] > stock["flops"] > 0
    for row in (stock, rpg):
        memory = row["memory"]
        assert memory["weights_bytes"] > 0
        assert memory["total_peak_bytes"] > memory["weights_bytes"]
        if memory["activation_peak_bytes"] is not None:  # Linux: the peak is resettable
            assert 0 <= memory["activation_peak_bytes"] < memory["total_peak_bytes"]
    # Paired rounds: stock before and after the one configuration, one ratio per round.
    assert len(stock["cpu_seconds"]) == 2 and len(rpg["cpu_seconds"]) == 1
    assert len(rpg["ratios"]) == 1 and rpg["ratios"][0] > 0


def test_sd3_default_is_flops_and_chooses_rows(overhead_dit, capsys) -> None:  # type: ignore[no-untyped-def]
    argv = ["--arch", "sd3", "--tiny", "--size", "64", "--regions", "2,4", "--base", "off"]
    assert overhead_dit.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [ln for ln in lines if ln.startswith(("stock ", "rpg "))]
    names = [ln[:20].strip() for ln in table]  # the name column is 20 wide
    assert names == ["stock", "rpg 2", "rpg 2 region", "rpg 4", "rpg 4 region"]
    # FLOPs (the default) are filled in; memory and time columns are not.
    stock = table[0][20:].split()
    assert stock[1] == "1.000" and stock[2:] == ["-"] * 7


def test_dispatch_from_overhead_py(overhead_dit, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import overhead

    argv = ["--arch", "sd3", "--tiny", "--size", "64", "--regions", "2", "--base", "off",
            "--image-attention", "region", "--time", "--repeats", "1", "--warmup", "0",
            "--out", str(tmp_path / "sd3.json")]  # fmt: skip
    assert overhead.main(argv) == 0
    printed = capsys.readouterr().out
    row = next(ln for ln in printed.splitlines() if ln.startswith("rpg 2 region"))
    assert row.split()[-1] != "-"  # a paired ratio was measured
