"""Whole-image LoRA: stock equivalence on SD, SDXL and FLUX, recorded hashes, offline errors, the
pipeline left as found, and the key/value cache noticing adapter and scale changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from attention_helpers import two_by_two
from lora_helpers import write_lora
from rpg import RPG, GenerationRequest, RegionPlan
from rpg.attention import cross_attention_names, regional
from rpg.backbones.schedulers import make_scheduler
from rpg.errors import ConfigurationError, ModelNotFoundError
from rpg.lora import file_sha256
from rpg.models import LoraInput

PROMPT = "a red cat"


@pytest.fixture(scope="module")
def sd_lora(tiny_rpg: RPG, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA on every UNet attention projection and on the text encoder."""
    path = tmp_path_factory.mktemp("lora") / "style.safetensors"
    return write_lora(tiny_rpg.pipe, path, seed=1, text_encoder=True)


def _request(lora: Path | None, scale: float = 0.7, **kw: Any) -> GenerationRequest:
    fields: dict[str, Any] = {
        "prompt": PROMPT,
        "plan": RegionPlan.single(PROMPT),
        "steps": 3,
        "seed": 5,
        "width": 64,
        "height": 64,
        "loras": [(str(lora), scale)] if lora is not None else [],
    }
    fields.update(kw)
    return GenerationRequest(**fields)


def _stock(rpg: RPG, cls: type, lora: Path, scale: float, request: GenerationRequest) -> Any:
    """The stock pipeline (same modules, the request's scheduler) with the LoRA at ``scale``."""
    components = dict(rpg.pipe.components)
    components["scheduler"] = make_scheduler(request.scheduler, rpg.backbone.scheduler_config)
    stock = cls(**components)
    stock.set_progress_bar_config(disable=True)
    stock.load_lora_weights(str(lora), adapter_name="stock")
    stock.set_adapters(["stock"], [scale])
    try:
        return stock(
            PROMPT,
            num_inference_steps=request.steps,
            guidance_scale=request.guidance_scale,
            generator=torch.Generator().manual_seed(5),
            output_type="np",
            height=64,
            width=64,
        ).images[0]
    finally:
        stock.unload_lora_weights()


def _lora_free(pipe: Any) -> bool:
    """No peft layer and no adapter config anywhere in the pipeline."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name in ("unet", "text_encoder", "text_encoder_2", "transformer"):
        model = getattr(pipe, name, None)
        if model is None:
            continue
        if getattr(model, "peft_config", None):
            return False
        if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
            return False
    return True


# ----------------------------------------------------------------- SD: stock equivalence, record


def test_sd_global_lora_equals_the_stock_pipeline_with_that_lora(
    tiny_rpg: RPG, sd_lora: Path
) -> None:
    result = tiny_rpg.generate(_request(sd_lora), output_type="np")
    ours = result.images[0]
    stock = _stock(tiny_rpg, StableDiffusionPipeline, sd_lora, 0.7, result.request)
    plain = tiny_rpg.generate(_request(None), output_type="np").images[0]
    assert np.abs(ours - stock).max() == 0.0
    assert np.abs(ours - plain).max() > 0.02  # the LoRA does change the image
    assert _lora_free(tiny_rpg.pipe)


def test_the_request_records_path_scale_and_hash_and_re_renders(
    tiny_rpg: RPG, sd_lora: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(sd_lora.parent)
    request = _request(None, loras=[f"{sd_lora.name}:0.5"])  # a relative name, CLI syntax
    result = tiny_rpg.generate(request, output_type="np")
    (recorded,) = result.request.loras
    assert recorded == LoraInput(name=str(sd_lora), scale=0.5, sha256=file_sha256(sd_lora))
    # through a PNG and back: the same pixels
    result_pil = tiny_rpg.generate(request)
    saved = result_pil.save(tmp_path / "x.png")
    from rpg.metadata import load_request

    loaded = load_request(saved)
    assert loaded.loras == result.request.loras
    again = tiny_rpg.generate(loaded)
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(result_pil.images[0]))


def test_call_api_takes_name_scale_pairs(tiny_rpg: RPG, sd_lora: Path) -> None:
    plan = RegionPlan.single(PROMPT)
    result = tiny_rpg(
        plan=plan, num_inference_steps=3, seed=5, loras=[(str(sd_lora), 0.7)], output_type="np"
    )
    want = tiny_rpg.generate(_request(sd_lora), output_type="np").images[0]
    assert np.array_equal(result.images[0], want)
    assert result.request.loras[0].scale == 0.7


def test_a_changed_or_missing_file_is_a_clear_error(
    tiny_rpg: RPG, sd_lora: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(sd_lora.read_bytes())
    recorded = tiny_rpg.generate(_request(copy, steps=1), output_type="latent").request
    copy.write_bytes(sd_lora.read_bytes() + b" ")
    with pytest.raises(ConfigurationError, match="has changed since the image was rendered"):
        tiny_rpg.generate(recorded, output_type="latent")
    copy.unlink()
    with pytest.raises(ModelNotFoundError, match="no such file or folder"):
        tiny_rpg.generate(recorded, output_type="latent")
    assert _lora_free(tiny_rpg.pipe)


def test_an_uncached_hub_id_is_refused_offline(
    tiny_rpg: RPG, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="LoRA 'someone/no-such-lora' is not in the local"):
        tiny_rpg.generate(_request(None, loras=["someone/no-such-lora"]), output_type="latent")


def test_a_folder_with_the_diffusers_file_name_is_found(
    tiny_rpg: RPG, sd_lora: Path, tmp_path: Path
) -> None:
    (tmp_path / "pytorch_lora_weights.safetensors").write_bytes(sd_lora.read_bytes())
    result = tiny_rpg.generate(_request(tmp_path, steps=1), output_type="latent")
    assert result.request.loras[0].name == str(tmp_path)
    assert result.request.loras[0].sha256 == file_sha256(sd_lora)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelNotFoundError, match=r"has no pytorch_lora_weights\.safetensors"):
        tiny_rpg.generate(_request(empty, steps=1), output_type="latent")


# ----------------------------------------------------------------- left as found


def test_the_users_own_adapters_come_back_as_they_were(
    tiny_rpg: RPG, sd_lora: Path, tmp_path: Path
) -> None:
    pipe = tiny_rpg.pipe
    own = write_lora(pipe, tmp_path / "own.safetensors", seed=7)
    pipe.load_lora_weights(str(own), adapter_name="mine")
    pipe.set_adapters(["mine"], [0.3])
    try:
        layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k
        before = (list(layer.active_adapters), dict(layer.scaling), layer.disable_adapters)
        with_own = tiny_rpg.generate(_request(None), output_type="np").images[0]
        ours = tiny_rpg.generate(_request(sd_lora), output_type="np").images[0]
        after = (list(layer.active_adapters), dict(layer.scaling), layer.disable_adapters)
        assert after == before
        assert pipe.get_list_adapters() == {"unet": ["mine"]}
        # the user's adapter renders as before; ours rendered without it (the request says all)
        assert np.array_equal(tiny_rpg.generate(_request(None), output_type="np").images[0],
                              with_own)  # fmt: skip
        pipe.disable_lora()
        alone = tiny_rpg.generate(_request(sd_lora), output_type="np").images[0]
        assert np.array_equal(ours, alone)
        assert layer.disable_adapters  # still disabled, as the user left it
    finally:
        pipe.unload_lora_weights()
    assert _lora_free(pipe)


def test_a_failed_load_leaves_no_adapter(tiny_rpg: RPG, tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({"unet.nothing.lora_A.weight": torch.zeros(2, 2)}, str(bad))
    with pytest.raises(Exception):  # noqa: B017 - diffusers' own error for a malformed file
        tiny_rpg.generate(_request(bad, steps=1), output_type="latent")
    assert _lora_free(tiny_rpg.pipe)


# ----------------------------------------------------------------- the K/V cache


def _unet_call(unet: Any, sample: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    return unet(sample, 5, ctx).sample


def test_the_kv_cache_reprojects_when_the_lora_scale_changes(
    tiny_rpg: RPG, sd_lora: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same plan and context, the adapter's scale changed between two calls in one block."""
    import rpg.attention.kv_cache as kv_cache

    pipe, unet = tiny_rpg.pipe, tiny_rpg.pipe.unet
    dim = unet.config.cross_attention_dim
    cond, layout = two_by_two()
    torch.manual_seed(0)
    sample, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 25, dim)

    def render(cache_kv: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        pipe.set_adapters(["t"], [1.0])
        with torch.no_grad(), regional(unet, cond, layout, guidance=True, cache_kv=cache_kv) as p:
            first = _unet_call(unet, sample, ctx)
            pipe.set_adapters(["t"], [0.25])
            second = _unet_call(unet, sample, ctx)
            return first, second, p.cache_hits

    pipe.load_lora_weights(str(sd_lora), adapter_name="t")
    try:
        first, cached, hits = render(cache_kv=True)
        _, plain, _ = render(cache_kv=False)
        # the old fingerprint (weights and context only) answers the second call from the cache
        monkeypatch.setattr(kv_cache, "_adapter_state", lambda layer: ())
        _, stale, stale_hits = render(cache_kv=True)
        # and a scale given through cross_attention_kwargs (applied inside the UNet's forward)
        monkeypatch.undo()
        pipe.set_adapters(["t"], [1.0])
        with torch.no_grad(), regional(unet, cond, layout, guidance=True, cache_kv=True):
            _unet_call(unet, sample, ctx)
            kw_cached = unet(sample, 5, ctx, cross_attention_kwargs={"scale": 0.25}).sample
        with torch.no_grad(), regional(unet, cond, layout, guidance=True):
            kw_plain = unet(sample, 5, ctx, cross_attention_kwargs={"scale": 0.25}).sample
    finally:
        pipe.unload_lora_weights()
    layers = len(cross_attention_names(unet))
    assert hits == 0 and stale_hits == 2 * layers  # the stale cache was really used
    assert torch.equal(cached, plain)
    assert not torch.allclose(stale, plain, atol=1e-4)
    assert not torch.allclose(first, plain, atol=1e-4)
    assert torch.equal(kw_cached, kw_plain)


# ----------------------------------------------------------------- SDXL and FLUX


@pytest.fixture(scope="module")
def sdxl_rpg(tmp_path_factory: pytest.TempPathFactory) -> RPG:
    from rpg.backbones.tiny.sdxl import write_tiny_sdxl

    path = write_tiny_sdxl(tmp_path_factory.mktemp("rpg-xl") / "tiny-sdxl", seed=0)
    pipe = RPG.from_pretrained(path, device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sdxl_global_lora_equals_the_stock_pipeline(sdxl_rpg: RPG, tmp_path: Path) -> None:
    lora = write_lora(sdxl_rpg.pipe, tmp_path / "xl.safetensors", seed=2)
    result = sdxl_rpg.generate(_request(lora, 0.8), output_type="np")
    stock = _stock(sdxl_rpg, StableDiffusionXLPipeline, lora, 0.8, result.request)
    plain = sdxl_rpg.generate(_request(None), output_type="np").images[0]
    assert np.abs(result.images[0] - stock).max() <= 1e-5
    assert np.abs(result.images[0] - plain).max() > 0.02
    assert _lora_free(sdxl_rpg.pipe)


def test_flux_global_lora_equals_the_stock_pipeline(tmp_path_factory: Any) -> None:
    from tiny_helpers import write_tiny_models

    root = tmp_path_factory.mktemp("rpg-flux")
    folder = write_tiny_models(root, ["tiny-flux"])["tiny-flux"]
    flux = RPG.from_pretrained(folder, device="cpu", dtype="float32")
    flux.pipe.set_progress_bar_config(disable=True)
    lora = write_lora(flux.pipe, root / "flux.safetensors", seed=3)
    h, w = 32, 48
    request = GenerationRequest(
        prompt=PROMPT, plan=RegionPlan.single(PROMPT), steps=2, seed=3, width=w, height=h,
        loras=[(str(lora), 0.9)],
    )  # fmt: skip
    ours = flux.generate(request, output_type="latent").images[0]
    plain = flux.generate(request.model_copy(update={"loras": ()}), output_type="latent")
    flux.pipe.load_lora_weights(str(lora), adapter_name="stock")
    flux.pipe.set_adapters(["stock"], [0.9])
    try:
        stock = flux.pipe(
            PROMPT, height=h, width=w, num_inference_steps=2, output_type="latent",
            generator=torch.Generator().manual_seed(3),
        ).images[0]  # fmt: skip
    finally:
        flux.pipe.unload_lora_weights()
    assert (ours - stock).abs().max().item() <= 1e-5
    assert (ours - plain.images[0]).abs().max().item() > 1e-3
    assert _lora_free(flux.pipe)


def test_compiled_prefill_projects_under_the_calls_lora_scale(tiny_rpg: RPG, sd_lora: Path) -> None:
    """A compiled model reads keys and values projected before the loop: they must be what its
    forward computes under ``cross_attention_kwargs={"scale": s}``, and the scales come back."""
    from diffusers.utils import scale_lora_layers

    from rpg.attention import RegionalConditioning, RegionalLayout

    pipe, unet = tiny_rpg.pipe, tiny_rpg.pipe.unet
    dim = unet.config.cross_attention_dim
    torch.manual_seed(0)
    cond = RegionalConditioning(
        prompt_embeds=torch.randn(1, 10, dim), region_spans=((0, 5), (5, 10)),
        negative_prompt_embeds=torch.randn(1, 10, dim), negative_span=(0, 10),
    )  # fmt: skip
    layout = RegionalLayout(rows=((1.0, (1.0, 1.0)),), base_weights=(0.0, 0.0), height=64, width=64)
    name = cross_attention_names(unet)[0].removesuffix(".processor")
    attn = dict(unet.named_modules())[name]
    pipe.load_lora_weights(str(sd_lora), adapter_name="t")
    unet._compiled_call_impl = unet._call_impl  # marks it compiled; nothing is compiled here
    try:
        before = dict(attn.to_k.scaling)
        with regional(unet, cond, layout, guidance=True, cache_kv=True, lora_scale=0.25) as proc:
            slot_key, _ = proc._slots[(id(attn), "positive")]
        assert attn.to_k.scaling == before
        with torch.no_grad():
            scale_lora_layers(unet, 0.25)
            want, _ = proc._project(attn, cond.prompt_embeds, (0, 10))
            attn.to_k.scaling.update(before)
            unscaled, _ = proc._project(attn, cond.prompt_embeds, (0, 10))
    finally:
        del unet._compiled_call_impl
        pipe.unload_lora_weights()
    assert torch.equal(slot_key, want)
    assert not torch.allclose(slot_key, unscaled, atol=1e-4)
