"""Offloaded pipelines with rpg: what a CPU can check of model, sequential and device-mapped runs.

rpg must never move a module (the offloading hooks do), must encode on the pipeline's execution
device and must make its own tensors (region indices, cached keys, text ids) on the device the
queries arrive on. The hooks here execute on the CPU, so nothing really moves between devices;
the GPU suite (``pytest -m gpu``) runs the same renders on CUDA.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers.models.attention_processor import Attention

from attention_helpers import two_by_two
from compile_helpers import denoiser_names, load, render, request, write_models
from rpg.attention import RegionalAttnProcessor

RPG_SOURCE = str(Path(inspect.getfile(RegionalAttnProcessor)).parents[1])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_models(tmp_path_factory.mktemp("rpg-offload"))


@pytest.fixture
def module_moves(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every ``Module.to`` / ``.cuda`` / ``.cpu`` call made from rpg's own source files."""
    moves: list[str] = []
    for name in ("to", "cuda", "cpu"):
        original = getattr(torch.nn.Module, name)

        def spy(self: Any, *args: Any, _original: Any = original, _name: str = name, **kw: Any):
            caller = inspect.stack(context=0)[1]
            if caller.filename.startswith(RPG_SOURCE):
                where = f"{caller.filename}:{caller.lineno}"
                moves.append(f"{type(self).__name__}.{_name} from {where}")
            return _original(self, *args, **kw)

        monkeypatch.setattr(torch.nn.Module, name, spy)
    yield moves


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sd-controlnet", "tiny-flux", "tiny-flux2-klein"])
def test_model_cpu_offload_renders_what_a_plain_pipeline_renders(
    models: Path, name: str, module_moves: list[str]
) -> None:
    req = request()
    plain = render(load(models, name), name, req)
    rpg = load(models, name)
    rpg.pipe.enable_model_cpu_offload(device="cpu")
    assert getattr(rpg.pipe, denoiser_names(rpg.pipe)[0])._hf_hook is not None
    assert rpg.backbone.device == rpg.pipe._execution_device
    offloaded = render(rpg, name, req)
    torch.testing.assert_close(offloaded, plain, rtol=1e-5, atol=1e-5)
    assert module_moves == []


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sd3", "tiny-flux"])
def test_sequentially_offloaded_denoiser_with_weights_on_meta(
    models: Path, name: str, module_moves: list[str]
) -> None:
    """What ``enable_sequential_cpu_offload`` does to each model, done to the denoisers: their
    weights live on ``meta`` and hooks bring them in per layer. (On the CPU, accelerate 1.16
    cannot offload the text encoders this way, for the stock pipeline as for rpg.)"""
    from accelerate import cpu_offload

    req = request()
    plain = render(load(models, name), name, req)
    rpg = load(models, name)
    for attr in denoiser_names(rpg.pipe):
        module = getattr(rpg.pipe, attr)
        cpu_offload(module, execution_device=torch.device("cpu"))
        assert next(module.parameters()).device.type == "meta"
    offloaded = render(rpg, name, req)
    torch.testing.assert_close(offloaded, plain, rtol=1e-5, atol=1e-5)
    assert module_moves == []


def test_compiled_unet_fills_its_key_value_slots_through_offloading_hooks(models: Path) -> None:
    """With weights on ``meta``, the slots filled before the loop are projected on the execution
    device through the layers' own hooks, and hold what the layers compute."""
    from accelerate import cpu_offload

    rpg = load(models, "tiny-sd")
    unet = rpg.pipe.unet
    cpu_offload(unet, execution_device=torch.device("cpu"))
    cond = rpg.backbone.encode(request().plan, guidance=True)
    layout = rpg.backbone.layout(request().plan, 64, 64)
    proc = RegionalAttnProcessor(cond, layout, guidance=True, cache_kv=True)
    layer = next(m for m in unet.modules() if isinstance(m, Attention) and m.is_cross_attention)
    proc.prefill(layer, cond, "cpu")
    key, _ = proc._slots[(id(layer), "positive")]
    assert key.device.type == "cpu" and not key.is_meta
    with torch.no_grad():
        expected = layer.to_k(cond.prompt_embeds)
    torch.testing.assert_close(key.transpose(1, 2).flatten(2), expected, rtol=1e-6, atol=1e-6)


def test_processor_makes_its_tensors_on_the_query_device() -> None:
    """Indices are prepared on the conditioning's device; queries elsewhere get their own."""
    cond, layout = two_by_two()
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=32, heads=4, dim_head=8).eval()
    proc = RegionalAttnProcessor(cond, layout, guidance=True)
    proc.prepare("cpu", levels=2)
    assert {d.type for _, _, d in proc._indices} == {"cpu"}
    attn = attn.to("meta")
    x, ctx = torch.randn(4, 64, 32, device="meta"), torch.randn(4, 25, 32, device="meta")
    out = proc(attn, x, ctx)
    assert out.device.type == "meta" and out.shape == x.shape
    assert all(i.perm is None or i.perm.device == d for (_, _, d), i in proc._indices.items())
    assert {d.type for _, _, d in proc._indices} == {"cpu", "meta"}
