"""The fused log-sum-exp kernels' CUDA branches, checked without a GPU, and their fallback.

Under ``FakeTensorMode`` the CPU wheel of torch accepts ``device="cuda"`` tensors and the fused
attention ops return fake outputs with their CUDA shapes, so the calls rpg makes are bound
against the ops' real schemas here: a signature change in torch fails these tests, not a
user's first GPU run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from rpg.attention import lse
from rpg.attention.lse import attention_with_lse

B, H, L, S, D = 2, 3, 37, 50, 16  # L is not a multiple of 32: the efficient lse is padded


@pytest.fixture(autouse=True)
def _no_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lse, "_refused", set())


def _qkv(dtype: torch.dtype, device: str = "cuda", dv: int = D) -> tuple[torch.Tensor, ...]:
    q = torch.randn(B, H, L, D, dtype=dtype, device=device)
    k = torch.randn(B, H, S, D, dtype=dtype, device=device)
    v = torch.randn(B, H, S, dv, dtype=dtype, device=device)
    return q, k, v


@pytest.fixture
def fake() -> Iterator[FakeTensorMode]:
    with FakeTensorMode() as mode:
        yield mode


def test_the_ops_schemas_are_the_ones_called() -> None:
    flash = torch.ops.aten._scaled_dot_product_flash_attention.default._schema
    names = [a.name for a in flash.arguments]
    assert names[:6] == ["query", "key", "value", "dropout_p", "is_causal", "return_debug_mask"]
    assert [a.name for a in flash.arguments if a.kwarg_only] == ["scale"]
    assert flash.returns[1].name == "logsumexp"
    eff = torch.ops.aten._scaled_dot_product_efficient_attention.default._schema
    names = [a.name for a in eff.arguments]
    assert names[:7] == [
        "query", "key", "value", "attn_bias", "compute_log_sumexp", "dropout_p", "is_causal",
    ]  # fmt: skip
    assert [a.name for a in eff.arguments if a.kwarg_only] == ["scale"]
    assert eff.returns[1].name == "log_sumexp"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_flash_branch_shapes(fake: FakeTensorMode, dtype: torch.dtype) -> None:
    q, k, v = _qkv(dtype)
    out, lse_ = lse._cuda_flash(q, k, v, 0.25)
    assert out.device.type == "cuda" and out.shape == (B, H, L, D) and out.dtype == dtype
    assert lse_.shape == (B, H, L) and lse_.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_efficient_branch_trims_the_padded_lse(
    fake: FakeTensorMode, dtype: torch.dtype
) -> None:
    q, k, v = _qkv(dtype, dv=24)
    raw = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True, 0.0, False)
    assert raw[1].shape == (B, H, 64)  # rounded up to a multiple of 32: the reason for the trim
    out, lse_ = lse._cuda_efficient(q, k, v, 0.25)
    assert out.shape == (B, H, L, 24) and out.dtype == dtype
    assert lse_.shape == (B, H, L) and lse_.dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_attention_with_lse_on_cuda_takes_a_fused_kernel(
    fake: FakeTensorMode, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    used: list[str] = []
    kernels = [(n, _spy(n, f, used)) for n, f in lse.KERNELS["cuda"]]
    monkeypatch.setitem(lse.KERNELS, "cuda", kernels)
    q, k, v = _qkv(dtype)
    out, lse_ = attention_with_lse(q, k, v)
    assert used == (["cuda_flash"] if dtype == torch.float16 else ["cuda_efficient"])
    assert out.shape == (B, H, L, D) and out.dtype == dtype and out.device.type == "cuda"
    assert lse_.shape == (B, H, L) and lse_.dtype == torch.float32


def _spy(name: str, kernel, used: list[str]):  # type: ignore[no-untyped-def]
    def run(*args):  # type: ignore[no-untyped-def]
        used.append(name)
        return kernel(*args)

    return run


def _refusing(calls: list[str], name: str):  # type: ignore[no-untyped-def]
    def run(*args):  # type: ignore[no-untyped-def]
        calls.append(name)
        raise RuntimeError(f"{name}: no kernel image is available for these inputs")

    return run


def test_a_refusing_cuda_kernel_falls_back_once_with_a_debug_line(
    fake: FakeTensorMode, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    efficient = lse.KERNELS["cuda"][1]
    monkeypatch.setitem(
        lse.KERNELS, "cuda", [("cuda_flash", _refusing(calls, "cuda_flash")), efficient]
    )
    q, k, v = _qkv(torch.float16)
    with caplog.at_level(logging.DEBUG, logger="rpg.attention.lse"):
        for _ in range(3):
            out, lse_ = attention_with_lse(q, k, v)
    assert calls == ["cuda_flash"]  # tried once, then skipped for this dtype and head size
    assert out.shape == (B, H, L, D) and lse_.shape == (B, H, L)
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "cuda_flash" in lines[0] and "no kernel image" in lines[0]
    # another head size is tried again: a refusal is about those inputs, not the kernel
    attention_with_lse(*_qkv(torch.float16, dv=32))
    assert calls == ["cuda_flash", "cuda_flash"]


def test_when_every_kernel_refuses_the_exact_reference_answers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []
    monkeypatch.setitem(lse.KERNELS, "cpu", [("cpu_flash", _refusing(calls, "cpu_flash"))])
    torch.manual_seed(0)
    q, k, v = _qkv(torch.float32, device="cpu")
    with caplog.at_level(logging.DEBUG, logger="rpg.attention.lse"):
        out, lse_ = attention_with_lse(q, k, v)
        again, _ = attention_with_lse(q, k, v)
    ref_out, ref_lse = lse._reference(q, k, v, 1 / D**0.5)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    torch.testing.assert_close(lse_, ref_lse, rtol=0, atol=0)
    torch.testing.assert_close(again, ref_out, rtol=0, atol=0)
    assert calls == ["cpu_flash"]
    assert sum("refused" in r.getMessage() for r in caplog.records) == 1
    # and the reference is attention: it matches SDPA
    torch.testing.assert_close(
        out, torch.nn.functional.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-5
    )
