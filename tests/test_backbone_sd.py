"""The SD 1.x/2.x backbone: token windows, packed spans, negatives, schedulers, detection."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from rpg.backbones.base import pack_segments, pad_tokens, token_windows
from rpg.backbones.loading import ModelInfo, resolve_model
from rpg.backbones.schedulers import (
    SCHEDULERS,
    check_scheduler,
    default_for_config,
    make_scheduler,
)
from rpg.backbones.sd import StableDiffusionBackbone
from rpg.errors import ConfigurationError
from rpg.models import GenerationRequest, Region, RegionPlan, Row
from rpg.plugins import backbone_registry

WINDOW = 77


def words(n: int, *, last: str = "zebra") -> str:
    """A prompt of ``n`` words ending in ``last``: each short word is one or two tokens."""
    return " ".join(["cat"] * (n - 1) + [last])


def test_token_windows_equal_the_stock_tokenization(tiny_rpg: Any) -> None:
    tok = tiny_rpg.pipe.tokenizer
    for text in ["A red cat, on the LEFT!", "", "smörgåsbord 日本"]:
        windows = token_windows(tok, text)
        stock = tok(text, padding="max_length", max_length=WINDOW, truncation=True).input_ids
        assert windows == [stock]


def test_long_text_becomes_full_windows_not_truncated(tiny_rpg: Any) -> None:
    tok = tiny_rpg.pipe.tokenizer
    text = words(60)  # "cat" is several byte-level tokens: well over 75 in all
    content = tok(text, add_special_tokens=False).input_ids
    windows = token_windows(tok, text)
    assert len(windows) == -(-len(content) // (WINDOW - 2))
    assert all(len(w) == WINDOW for w in windows)
    assert all(w[0] == tok.bos_token_id for w in windows)
    joined = [t for w in windows for t in w[1 : 1 + (WINDOW - 2)]]
    assert joined[: len(content)] == content  # every token kept, in order


def test_stock_equivalent_embeddings_for_a_short_prompt(tiny_rpg: Any) -> None:
    backbone = tiny_rpg.backbone
    cond = backbone.encode(RegionPlan.single("a red cat"), "blurry", guidance=True)
    stock_pos, stock_neg = tiny_rpg.pipe.encode_prompt(
        "a red cat", torch.device("cpu"), 1, True, "blurry"
    )
    assert cond.region_spans == ((0, WINDOW),)
    assert cond.negative_span == (0, WINDOW)
    torch.testing.assert_close(cond.prompt_embeds, stock_pos, rtol=0, atol=0)
    torch.testing.assert_close(cond.negative_prompt_embeds, stock_neg, rtol=0, atol=0)


def test_region_prompt_over_77_tokens_is_encoded_in_full(tiny_rpg: Any) -> None:
    backbone = tiny_rpg.backbone
    tok = tiny_rpg.pipe.tokenizer
    long_a, long_b = words(40, last="zebra"), words(40, last="horse")
    assert WINDOW < len(tok(long_a).input_ids) <= 2 * (WINDOW - 2)
    plan_a = RegionPlan(rows=[Row(regions=[Region(prompt="a dog"), Region(prompt=long_a)])])
    plan_b = RegionPlan(rows=[Row(regions=[Region(prompt="a dog"), Region(prompt=long_b)])])
    cond_a = backbone.encode(plan_a, guidance=False)
    cond_b = backbone.encode(plan_b, guidance=False)
    assert cond_a.region_spans == ((0, WINDOW), (WINDOW, 3 * WINDOW))
    assert cond_a.prompt_embeds.shape[1] == 3 * WINDOW
    assert cond_a.negative_prompt_embeds is None
    first, second = slice(WINDOW, 2 * WINDOW), slice(2 * WINDOW, 3 * WINDOW)
    # The last word sits after token 77: only the second window of that region sees it.
    assert torch.equal(cond_a.prompt_embeds[:, first], cond_b.prompt_embeds[:, first])
    assert not torch.allclose(cond_a.prompt_embeds[:, second], cond_b.prompt_embeds[:, second])


def test_base_first_and_repeated_prompts_share_a_span(tiny_rpg: Any) -> None:
    plan = RegionPlan(
        rows=[Row(regions=[Region(prompt="a cat"), Region(prompt="a dog")])],
        base_prompt="two pets",
    )
    cond = tiny_rpg.backbone.encode(plan, guidance=False)
    assert cond.base_span == (0, WINDOW)
    assert cond.region_spans == ((WINDOW, 2 * WINDOW), (2 * WINDOW, 3 * WINDOW))
    same = RegionPlan(rows=[Row(regions=[Region(prompt="a cat"), Region(prompt="a cat")])])
    cond = tiny_rpg.backbone.encode(same, guidance=False)
    assert cond.region_spans == ((0, WINDOW), (0, WINDOW))
    assert cond.prompt_embeds.shape[1] == WINDOW


def test_shared_negative_is_padded_to_the_positive_length(tiny_rpg: Any) -> None:
    plan = RegionPlan.from_split_ratio("1,1,1", ["a cat", "a dog", "a cow"], base_prompt="farm")
    cond = tiny_rpg.backbone.encode(plan, "blurry", guidance=True)
    assert cond.prompt_embeds.shape == cond.negative_prompt_embeds.shape
    assert cond.negative_span == (0, WINDOW)
    assert cond.negative_region_spans is None
    neg = cond.negative_prompt_embeds
    assert torch.equal(neg[:, WINDOW : 2 * WINDOW], neg[:, :WINDOW])  # padding copies


def test_per_region_negative_prompts_change_the_uncond_embeddings(tiny_rpg: Any) -> None:
    backbone = tiny_rpg.backbone
    shared = RegionPlan(rows=[Row(regions=[Region(prompt="a cat"), Region(prompt="a dog")])])
    own = RegionPlan(
        rows=[Row(regions=[Region(prompt="a cat"), Region(prompt="a dog", negative_prompt="fur")])]
    )
    cond_shared = backbone.encode(shared, "blurry", guidance=True)
    cond_own = backbone.encode(own, "blurry", guidance=True)
    assert cond_own.negative_region_spans is not None
    cat_span, dog_span = cond_own.negative_region_spans
    neg_own, neg_shared = cond_own.negative_prompt_embeds, cond_shared.negative_prompt_embeds
    # The cat keeps the request's negative; the dog reads its own, different embeddings.
    assert torch.equal(neg_own[:, slice(*cat_span)], neg_shared[:, :WINDOW])
    assert not torch.allclose(neg_own[:, slice(*dog_span)], neg_shared[:, :WINDOW])
    assert neg_own.shape == cond_own.prompt_embeds.shape


def test_per_region_negatives_with_a_base_have_a_negative_base_span(tiny_rpg: Any) -> None:
    plan = RegionPlan(
        rows=[Row(regions=[Region(prompt="a cat", negative_prompt="dog"), Region(prompt="a dog")])],
        base_prompt="pets",
    )
    cond = tiny_rpg.backbone.encode(plan, "blurry", guidance=True)
    assert cond.negative_base_span == (0, WINDOW)
    assert cond.negative_region_spans == ((WINDOW, 2 * WINDOW), (0, WINDOW))


def test_pack_and_pad_helpers() -> None:
    def encode(texts: list[str]) -> list[torch.Tensor]:
        return [torch.full((1, len(t), 2), float(len(t))) for t in texts]

    packed, spans = pack_segments(["aa", "bbb", "aa"], encode)
    assert spans == [(0, 2), (2, 5), (0, 2)]
    assert packed.shape == (1, 5, 2)
    padded = pad_tokens(packed, 12)
    assert padded.shape == (1, 12, 2)
    assert torch.equal(padded[:, 5:10], packed)


def test_unknown_scheduler_lists_the_names() -> None:
    with pytest.raises(ConfigurationError) as info:
        check_scheduler("dpm-fancy")
    for name in ("dpm++2m-karras", "euler-a", "euler", "ddim", "unipc", "lcm"):
        assert name in str(info.value)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_renders(tiny_rpg: Any, name: str) -> None:
    request = GenerationRequest(
        prompt="a cat", plan=RegionPlan.single("a cat"), steps=2, seed=0, scheduler=name
    )
    result = tiny_rpg.generate(request, output_type="np")
    assert result.images[0].shape == (64, 64, 3)
    assert torch.isfinite(torch.from_numpy(result.images[0])).all()


def test_schedulers_are_built_from_the_original_config(tiny_rpg: Any) -> None:
    backbone = tiny_rpg.backbone
    with backbone.using_scheduler("dpm++2m-karras"):  # the shared pipeline is left as found
        assert backbone.pipe.scheduler.config.use_karras_sigmas is True
    with backbone.using_scheduler("euler"):
        assert type(backbone.pipe.scheduler).__name__ == "EulerDiscreteScheduler"
        assert not backbone.pipe.scheduler.config.use_karras_sigmas
        assert backbone.pipe.scheduler.config.beta_schedule == "scaled_linear"
    default = make_scheduler("default", backbone.scheduler_config)
    assert type(default).__name__ == "PNDMScheduler"


def test_a_zero_terminal_snr_model_defaults_to_evenly_spaced_dpm(tiny_rpg: Any) -> None:
    """Karras sigmas would start at the clipped sigma of a zero-SNR last step (4096) and spend
    half of 12 steps on timesteps 985-999; such a model gets plain DPM++ 2M by default."""
    backbone = tiny_rpg.backbone
    assert backbone.request_scheduler() == "dpm++2m-karras"
    config = dict(backbone.scheduler_config)
    zero_snr = dict(config, rescale_betas_zero_snr=True, timestep_spacing="trailing")
    assert default_for_config("dpm++2m-karras", zero_snr) == "dpm++2m"
    assert default_for_config("euler-a", zero_snr) == "euler-a"  # a family's own choice stays
    backbone.scheduler_config = zero_snr
    backbone._schedulers.pop("dpm++2m", None)
    try:
        assert backbone.request_scheduler() == "dpm++2m"
        karras = make_scheduler("dpm++2m-karras", zero_snr)
        karras.set_timesteps(12)
        even = backbone.scheduler_named("dpm++2m")
        assert even.config.rescale_betas_zero_snr and not even.config.use_karras_sigmas
        even.set_timesteps(12)
        assert int(even.timesteps[0]) == 999 and int(even.timesteps[1]) < 950
        assert int((karras.timesteps >= 985).sum()) >= 5  # what the default avoids
    finally:
        backbone.scheduler_config = config
        backbone._schedulers.pop("dpm++2m", None)


def test_detection_and_registration(tiny_sd_path: Path) -> None:
    info = resolve_model(tiny_sd_path)
    assert StableDiffusionBackbone.detect(info)
    xl = ModelInfo("x", "folder", None, {"_class_name": "StableDiffusionXLPipeline"})
    assert not StableDiffusionBackbone.detect(xl)
    assert backbone_registry().get("sd").target is StableDiffusionBackbone


def test_native_size_and_latent_factor(tiny_rpg: Any) -> None:
    assert tiny_rpg.backbone.native_size == (64, 64)
    assert tiny_rpg.backbone.latent_factor == 8


def test_guidance_follows_the_stock_rule(tiny_rpg: Any) -> None:
    backbone = tiny_rpg.backbone
    assert backbone.uses_guidance(7.0)
    assert not backbone.uses_guidance(1.0)
    assert not backbone.uses_guidance(0.0)
