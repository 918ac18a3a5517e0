"""The GPU suite: what only a CUDA device can show (``nox -s gpu`` or ``pytest -m gpu``).

Every tiny backbone in float16 and bfloat16 (finite, one full region equals stock), the fused
log-sum-exp kernels against the exact reference, compiled denoisers (inductor,
``fullgraph=True``) against eager, both CPU offloads, and the host-sync count with real
device-to-host copies. Skipped, with the reason, where ``torch.cuda.is_available()`` is false.
Sized to finish in a few minutes on one GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from compile_helpers import (
    MODELS,
    PROMPT,
    SIZE,
    STEPS,
    call_inputs,
    count_host_syncs,
    denoiser_names,
    load,
    render,
    request,
    write_models,
)
from rpg import GenerationRequest, RegionPlan
from rpg.attention.diagnostics import graph_breaks

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="GPU suite: needs a CUDA device (torch.cuda.is_available() is False)",
    ),
]

#: The negative prompt a stock call and a one-region request share, per model.
NEGATIVE = {"tiny-flux2-klein": None, "tiny-flux": None}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("rpg-gpu"))


def _stock_latents(rpg: Any, name: str, prompt: str, negative: str | None) -> torch.Tensor:
    extra = {} if negative is None else {"negative_prompt": negative}
    out = rpg.pipe(
        prompt=prompt, height=SIZE, width=SIZE, num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(1), output_type="latent",
        **call_inputs(name), **extra,
    )  # fmt: skip
    latents: torch.Tensor = out.images[0]
    return latents


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", MODELS)
def test_half_precision_on_cuda(models: Path, name: str, dtype: str) -> None:
    rpg = load(models, name, device="cuda", dtype=dtype)
    regional = render(rpg, name, request())
    assert regional.is_cuda and bool(torch.isfinite(regional.float()).all())
    negative = NEGATIVE.get(name, "blurry")
    one = GenerationRequest(
        prompt="a red cat", plan=RegionPlan.single("a red cat"), steps=STEPS, seed=1,
        width=SIZE, height=SIZE, **({} if negative is None else {"negative_prompt": negative}),
    )  # fmt: skip
    ours = render(rpg, name, one).float()
    theirs = _stock_latents(rpg, name, "a red cat", negative).float()
    torch.testing.assert_close(ours, theirs, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_fused_lse_kernels_match_the_reference(dtype: torch.dtype) -> None:
    from rpg.attention import lse

    torch.manual_seed(0)
    q = torch.randn(2, 4, 77, 64, device="cuda", dtype=dtype)
    k = torch.randn(2, 4, 300, 64, device="cuda", dtype=dtype)
    v = torch.randn(2, 4, 300, 64, device="cuda", dtype=dtype)
    fused = lse._fused(q, k, v, 64**-0.5)
    assert fused is not None, "no fused kernel accepted these inputs"
    ref_out, ref_lse = lse._reference(q, k, v, 64**-0.5)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(fused[0].float(), ref_out.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(fused[1].float(), ref_lse, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sdxl", "tiny-flux", "tiny-sd3"])
def test_inductor_fullgraph_matches_eager(models: Path, name: str) -> None:
    torch._dynamo.reset()
    rpg = load(models, name, device="cuda", dtype="float16")
    req = request()
    eager = render(rpg, name, req)
    for attr in denoiser_names(rpg.pipe):
        getattr(rpg.pipe, attr).compile(fullgraph=True)
    first = render(rpg, name, req)
    again = render(rpg, name, req)
    assert not graph_breaks()
    torch.testing.assert_close(first.float(), eager.float(), rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(again, first, rtol=0, atol=0)


@pytest.mark.parametrize("offload", ["model", "sequential"])
@pytest.mark.parametrize("name", ["tiny-sd", "tiny-flux"])
def test_cpu_offload_on_cuda(models: Path, name: str, offload: str) -> None:
    req = request()
    plain = render(load(models, name, device="cuda", dtype="float16"), name, req)
    rpg = load(models, name, device="cpu", dtype="float16")
    if offload == "model":
        rpg.pipe.enable_model_cpu_offload()
    else:
        rpg.pipe.enable_sequential_cpu_offload()
    got = render(rpg, name, req)
    assert got.is_cuda
    torch.testing.assert_close(got.float(), plain.float(), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-flux2-klein"])
def test_no_device_to_host_copies_per_step(models: Path, name: str) -> None:
    rpg = load(models, name, device="cuda", dtype="float16")
    counters = []
    for run in (
        lambda: render(rpg, name, request()),
        lambda: _stock_latents(rpg, name, PROMPT, None),
    ):
        counters.append(count_host_syncs(rpg.pipe, run))
    ours, theirs = counters
    for kind in set(ours.counts) | set(theirs.counts):
        assert ours.counts[kind] <= theirs.counts[kind], (kind, ours.counts, theirs.counts)
    assert ours.host_to_device <= theirs.host_to_device
