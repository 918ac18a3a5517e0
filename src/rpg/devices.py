"""Device and dtype names, resolved in one place for the diffusion models and the LLM planner.

``"auto"`` picks CUDA, else Apple MPS, else the CPU. Dtype names accept the usual spellings
(``"bf16"``, ``"bfloat16"``, ``"torch.float16"``, ``"fp32"``...), the same for
``RPG.from_pretrained(dtype=...)``, ``--dtype`` and the ``hf`` planner.
"""

from __future__ import annotations

import warnings

import torch

from rpg.errors import ConfigurationError

__all__ = ["DTYPES", "dtype_named", "resolve_device", "resolve_dtype"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA, else Apple MPS, else CPU; anything else as ``torch.device``."""
    if isinstance(device, torch.device):
        return device
    name = device.strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError:
        raise ConfigurationError(
            f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"device {device!r} asked for, but CUDA is not available")
    return resolved


DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``"auto"`` → float16 on CUDA and MPS, float32 on CPU; names like ``"bf16"`` accepted.

    float16 on the CPU is slow and partly unsupported, so it falls back to float32 with a
    warning rather than failing half-way through a render; bfloat16 on the CPU is kept.
    """
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    else:
        name = dtype.strip().lower().removeprefix("torch.")
        if name == "auto":
            return torch.float16 if device.type in ("cuda", "mps") else torch.float32
        resolved = dtype_named(name)
    if resolved == torch.float16 and device.type == "cpu":
        warnings.warn(
            "float16 is not supported well on the CPU; using float32 (pass --dtype bfloat16 for "
            "a half-precision CPU run)",
            stacklevel=2,
        )
        return torch.float32
    return resolved


def dtype_named(name: str) -> torch.dtype:
    """The dtype a name stands for (``"bf16"``, ``"float16"``, ``"torch.float32"``...)."""
    key = name.strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ConfigurationError(f"unknown dtype {name!r}; use auto, float16, bfloat16 or float32")
    return DTYPES[key]
