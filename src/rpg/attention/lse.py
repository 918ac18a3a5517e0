"""Attention that also returns its log-sum-exp, so partial attentions can be merged exactly.

Softmax attention over a key set ``A ∪ B`` is the two partial attentions over ``A`` and over
``B`` weighted by their normalisers: with ``lse_X = log Σ_{k∈X} exp(q·k·scale)``,

    attn(A ∪ B) = σ(lse_A − lse_B) · attn(A) + σ(lse_B − lse_A) · attn(B).

The regional joint attention uses this to compute the expensive image-to-image part once and share
it between a region's own prompt and the base prompt (see :mod:`rpg.attention.joint`).

PyTorch's public ``scaled_dot_product_attention`` does not return the log-sum-exp; its fused
kernels do, through the ATen ops used here (CPU flash, CUDA flash and memory-efficient). Where
none applies (other devices, an op that refuses the shapes) an exact chunked reference is used;
on the ``meta`` device that reference is what FLOP counters see (two matmuls, as SDPA counts).

The CUDA branches run in CI without a GPU: under ``FakeTensorMode`` the CPU wheel accepts
``device="cuda"`` tensors and the fused ops return outputs with their CUDA shapes, so the tests
check the calls against the ops' schemas (argument order, output shapes and dtypes, the padded
log-sum-exp of the memory-efficient kernel trimmed to the query length).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch

__all__ = ["attention_with_lse", "merge_weight"]

log = logging.getLogger(__name__)

#: Queries per chunk of the reference path, so its score matrix stays small.
_CHUNK = 1024


def _reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    outs, lses = [], []
    for start in range(0, q.shape[-2], _CHUNK):
        scores = q[..., start : start + _CHUNK, :].float() @ k.float().transpose(-1, -2) * scale
        lse = scores.logsumexp(dim=-1)
        weights = (scores - lse.unsqueeze(-1)).exp()
        outs.append((weights @ v.float()).to(q.dtype))
        lses.append(lse)
    return torch.cat(outs, dim=-2), torch.cat(lses, dim=-1)


Fused = tuple[torch.Tensor, torch.Tensor]


def _cpu_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> Fused:
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        q, k, v, 0.0, False, scale=scale
    )[:2]
    return out, lse


def _cuda_flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> Fused:
    # (query, key, value, dropout_p, is_causal, return_debug_mask, *, scale) ->
    # (output [B, H, L, Dv], logsumexp [B, H, L] float32, ...)
    found = torch.ops.aten._scaled_dot_product_flash_attention(
        q, k, v, 0.0, False, False, scale=scale
    )
    return found[0], found[1]


def _cuda_efficient(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> Fused:
    # (query, key, value, attn_bias, compute_log_sumexp, dropout_p, is_causal, *, scale) ->
    # (output [B, H, L, Dv], log_sumexp [B, H, L rounded up to a multiple of 32] float32, ...)
    found = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, None, True, 0.0, False, scale=scale
    )
    # the padding rows hold no log-sum-exp (narrow: a view, as slicing, but traceable on fakes)
    return found[0], found[1].narrow(-1, 0, q.shape[-2])


#: The fused kernels returning the log-sum-exp, per device, in the order they are tried.
KERNELS: dict[str, list[tuple[str, Callable[..., Fused]]]] = {
    "cpu": [("cpu_flash", _cpu_flash)],
    "cuda": [("cuda_flash", _cuda_flash), ("cuda_efficient", _cuda_efficient)],
}
#: Kernels that refused a (dtype, head dims) once: not tried again for those in this process.
_refused: set[tuple[str, torch.dtype, int, int]] = set()


def _usable(name: str, q: torch.Tensor, v: torch.Tensor) -> bool:
    if name == "cuda_flash" and q.dtype not in (torch.float16, torch.bfloat16):
        return False  # the CUDA flash kernel is half precision only
    return (name, q.dtype, q.shape[-1], v.shape[-1]) not in _refused


def _fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> Fused | None:
    """The first fused kernel of ``q``'s device that accepts the inputs, else ``None``.

    A kernel that raises is noted (with one debug log line) and not tried again for the same
    dtype and head sizes, so a refusal costs one failed launch per process, never an error:
    the caller falls back to the next kernel, then to the exact reference.
    """
    for name, kernel in KERNELS.get(q.device.type, ()):
        if not _usable(name, q, v):
            continue
        try:
            return kernel(q, k, v, scale)
        except (RuntimeError, NotImplementedError) as err:
            _refused.add((name, q.dtype, q.shape[-1], v.shape[-1]))
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.debug(
                "attention with log-sum-exp: kernel %s refused %s q%s k%s v%s (%s); "
                "falling back for this dtype and head size from now on",
                name, q.dtype, tuple(q.shape), tuple(k.shape), tuple(v.shape), first,
            )  # fmt: skip
    return None


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q kᵀ · scale) v`` and its log-sum-exp, for ``[B, H, L, D]`` inputs.

    Returns ``(out, lse)``: ``out`` is ``[B, H, L, D]`` in ``q``'s dtype, ``lse`` is ``[B, H, L]``
    in float32. No gradient flows through ``lse``; callers that need one use plain attention.
    An empty key set gives zeros and ``lse = -inf`` (it then weighs nothing in a merge).
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if k.shape[-2] == 0:
        out = q.new_zeros((*q.shape[:-1], v.shape[-1]))
        return out, q.new_full(q.shape[:-1], float("-inf"), dtype=torch.float32)
    if q.device.type != "meta":
        found = _fused(q, k, v, scale)
        if found is not None:
            return found[0], found[1].float()
    return _reference(q, k, v, scale)


def merge_weight(lse_a: torch.Tensor, lse_b: torch.Tensor) -> torch.Tensor:
    """The weight of part ``A`` when attentions over disjoint key sets ``A`` and ``B`` merge."""
    return torch.sigmoid(lse_a - lse_b)
