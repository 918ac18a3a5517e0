"""bench/gpu.py's code paths at tiny size on the CPU (its numbers need a GPU and real sizes)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def gpu_bench() -> Iterator[ModuleType]:
    sys.path.insert(0, str(BENCH))
    try:
        import gpu

        yield gpu
    finally:
        sys.path.remove(str(BENCH))


def test_real_sizes_are_refused_without_cuda(gpu_bench: ModuleType) -> None:
    with pytest.raises(SystemExit):
        gpu_bench.parse(["--device", "cpu", "--arch", "sd15"])
    with pytest.raises(SystemExit):
        gpu_bench.parse(["--tiny", "--arch", "sd2"])


def test_tiny_rows_for_a_unet_and_a_dit(
    gpu_bench: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "rows.json"
    argv = ["--tiny", "--device", "cpu", "--arch", "sd15,flux", "--steps", "1", "--repeats",
            "1", "--regions", "4", "--no-compile", "--out", str(out)]  # fmt: skip
    assert gpu_bench.main(argv) == 0
    table = capsys.readouterr().out.split("| arch |", 1)[1]
    rows = [line.split("|")[1:-1] for line in table.splitlines()[2:] if line.startswith("|")]
    assert [(r[0].strip(), r[2].strip()) for r in rows] == [
        (arch, name) for arch in ("sd15", "flux") for name in ("stock", "rpg 4", "rpg 4 base")
    ]
    assert all(float(r[3]) > 0 for r in rows) and all(r[4].strip() != "nan" for r in rows)
    assert out.exists()


def test_compiled_rows_use_a_compiled_denoiser(gpu_bench: ModuleType) -> None:
    args = gpu_bench.parse(["--tiny", "--device", "cpu", "--arch", "flux", "--steps", "1",
                            "--repeats", "1", "--regions", "4", "--no-eager",
                            "--compile-backend", "eager"])  # fmt: skip
    import torch

    from rpg.attention.diagnostics import graph_breaks

    rows = gpu_bench.run_arch("flux", args, torch.device("cpu"))
    assert [r.compiled for r in rows] == [True] * 3
    assert not graph_breaks()
