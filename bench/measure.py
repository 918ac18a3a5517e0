"""Peak memory and FLOP counting shared by the overhead benches (overhead.py, overhead_dit.py).

Kept apart from the benches so a measuring subprocess imports only this and torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
from pathlib import Path
from typing import Any

import torch


# --------------------------------------------------------------------------- memory
class PeakMemory:
    """Peak memory of one call above what was in use before it (bytes), or ``None``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.libc: Any = None
        if device.type == "cpu" and sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                Path("/proc/self/clear_refs").write_text("5")
                self.libc = ctypes.CDLL("libc.so.6")

    @property
    def available(self) -> bool:
        return self.device.type == "cuda" or self.libc is not None

    def pin_allocator(self) -> None:
        """Make glibc map and unmap large blocks, so RSS follows live memory (costs speed)."""
        if self.libc is not None:
            self.libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD (also stops it adapting)
            self.libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD

    @staticmethod
    def _status_kib(field_name: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise KeyError(field_name)

    def start(self) -> int | None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return torch.cuda.memory_allocated(self.device)
        if self.libc is not None:
            self.libc.malloc_trim(0)
            Path("/proc/self/clear_refs").write_text("5")
            return self._status_kib("VmRSS") * 1024
        return None

    def stop(self, before: int | None) -> tuple[int, int] | None:
        """``(call peak, total peak)`` in bytes: the peak above ``before``, and the peak itself."""
        if before is None:
            return None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = self._status_kib("VmHWM") * 1024
        return peak - before, peak


# --------------------------------------------------------------------------- FLOPs
def flop_counter() -> Any:
    """A ``FlopCounterMode`` that also counts the CPU flash-attention kernel.

    PyTorch's counter knows the CUDA attention kernels but not the CPU one, which would make the
    attention work of every configuration read as zero on CPU.
    """
    from torch.utils import flop_counter as fc

    def cpu_flash(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
        return int(fc.sdpa_flop_count(query, key, value))

    mapping = {}
    cpu_op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_op is not None:
        mapping[cpu_op] = cpu_flash
    return fc.FlopCounterMode(display=False, custom_mapping=mapping)
