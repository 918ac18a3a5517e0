"""Region isolation in a UNet (``image_attention`` / ``group_norm`` = ``"region"``): exact against
per-region definitions, the stock UNet for one region, installed and undone cleanly, refused
for soft canvases, and reachable from a request and the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from PIL import Image

from attention_helpers import two_by_two
from compile_helpers import canvas_plan
from rpg import GenerationRequest, RegionPlan
from rpg.attention import RegionalAttnProcessor, RegionalConditioning, RegionalLayout, regional
from rpg.attention.region_isolation import RegionGroupNorm, RegionSelfAttnProcessor
from rpg.attention.regions import region_labels
from rpg.cli import main
from rpg.errors import ConfigurationError
from rpg.metadata import read_metadata
from rpg.orchestrator import RPG
from test_cli_failfast import PROMPT, run_rpg

ISOLATED = {"image_attention": "region", "group_norm": "region"}


def _source(height: int = 64, width: int = 64) -> RegionalAttnProcessor:
    cond, layout = two_by_two(height, width)
    return RegionalAttnProcessor(cond, layout, guidance=True)


def test_self_attention_sees_only_its_own_region() -> None:
    """Equal to full attention with an ``h·w × h·w`` same-region mask (the definition)."""
    torch.manual_seed(0)
    attn = Attention(query_dim=32, heads=4, dim_head=8).eval()
    source = _source(64, 64)  # an 8x8 latent grid, four unequal cells: a real permutation
    x = torch.randn(2, 64, 32)
    labels = region_labels(source.layout, 8, 8).reshape(-1)
    assert source.index_for(8, 8, x.device).perm is not None
    with torch.no_grad():
        ours = RegionSelfAttnProcessor(source)(attn, x)
        q, k, v = (
            t.view(2, 64, 4, 8).transpose(1, 2) for t in (attn.to_q(x), attn.to_k(x), attn.to_v(x))
        )
        same = labels[:, None] == labels[None, :]
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=same)
        ref = attn.to_out[0](ref.transpose(1, 2).reshape(2, 64, 32))
        stock = attn(x)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, stock, atol=1e-3)  # the mask really cuts something


def test_group_norm_statistics_come_from_each_region() -> None:
    torch.manual_seed(1)
    norm = torch.nn.GroupNorm(4, 16)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    source = _source(48, 80)  # a 6x10 grid: cells of unequal sizes
    x = torch.randn(2, 16, 6, 10) * 3 + torch.linspace(-4, 4, 10)  # statistics differ by column
    labels = region_labels(source.layout, 6, 10)
    ref = torch.empty_like(x)
    for r in range(4):
        where = labels == r
        part = F.group_norm(x[:, :, where], 4, norm.weight, norm.bias, norm.eps)
        ref[:, :, where] = part
    with torch.no_grad():
        ours = RegionGroupNorm(norm, source)(x)
    torch.testing.assert_close(ours, ref.detach(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, norm(x), atol=1e-2)
    flat = torch.randn(2, 16, 60)  # not an image: normalised as the wrapped norm would
    torch.testing.assert_close(RegionGroupNorm(norm, source)(flat), norm(flat))


def _single(height: int, width: int) -> tuple[RegionalConditioning, RegionalLayout]:
    layout = RegionalLayout(rows=((1.0, (1.0,)),), base_weights=(0.0,), height=height, width=width)
    cond = RegionalConditioning(
        prompt_embeds=torch.zeros(1, 77, 32), region_spans=((0, 77),), negative_span=(0, 77)
    )
    return cond, layout


def test_one_region_is_the_stock_unet(tiny_unet) -> None:
    torch.manual_seed(2)
    cond, layout = _single(72, 136)
    sample = torch.randn(2, 4, 9, 17)
    ctx = torch.randn(2, 77, 32)
    with torch.no_grad():
        stock = tiny_unet(sample, 5, ctx).sample
        with regional(tiny_unet, cond, layout, guidance=True, **ISOLATED):
            ours = tiny_unet(sample, 5, ctx).sample
    torch.testing.assert_close(ours, stock, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "options", [ISOLATED, {"image_attention": "region"}, {"group_norm": "region"}]
)
def test_installed_for_the_block_and_undone_also_when_it_raises(tiny_unet, options: dict) -> None:
    before = dict(tiny_unet.attn_processors)
    modules = dict(tiny_unet.named_modules())
    keys = list(tiny_unet.state_dict())
    norms = [n for n, m in modules.items() if isinstance(m, torch.nn.GroupNorm)]
    cond, layout = two_by_two(64, 64)
    torch.manual_seed(3)
    sample, ctx = torch.randn(2, 4, 8, 8), torch.randn(2, 25, 32)
    with torch.no_grad():
        with regional(tiny_unet, cond, layout, guidance=True):
            rpg_only = tiny_unet(sample, 5, ctx).sample
        with (
            pytest.raises(RuntimeError, match="boom"),
            regional(tiny_unet, cond, layout, guidance=True, **options),
        ):
            inside = tiny_unet.attn_processors
            self_attention = [p for k, p in inside.items() if ".attn1." in k]
            wrapped = [m for m in tiny_unet.modules() if isinstance(m, RegionGroupNorm)]
            isolated = tiny_unet(sample, 5, ctx).sample
            raise RuntimeError("boom")
    if options.get("image_attention") == "region":
        assert self_attention and all(
            isinstance(p, RegionSelfAttnProcessor) for p in self_attention
        )
    else:
        assert all(p is before[k] for k, p in inside.items() if ".attn1." in k)
    assert len(wrapped) == (len(norms) if options.get("group_norm") == "region" else 0)
    assert not torch.allclose(isolated, rpg_only, atol=1e-4)
    after = dict(tiny_unet.named_modules())
    assert all(after[n] is modules[n] for n in modules) and after.keys() == modules.keys()
    assert all(tiny_unet.attn_processors[k] is p for k, p in before.items())
    assert list(tiny_unet.state_dict()) == keys


def test_a_soft_canvas_is_refused_and_nothing_is_installed(tiny_rpg: RPG) -> None:
    unet = tiny_rpg.pipe.unet
    before = dict(unet.attn_processors)
    request = GenerationRequest(
        prompt=PROMPT, plan=canvas_plan("soft", base=False), steps=1, seed=0, options=ISOLATED
    )
    with pytest.raises(ConfigurationError, match=r"need hard region edges.*soft edge"):
        tiny_rpg.generate(request)
    assert all(unet.attn_processors[k] is p for k, p in before.items())
    assert not any(isinstance(m, RegionGroupNorm) for m in unet.modules())
    hard = request.model_copy(update={"plan": canvas_plan("hard", base=False)})
    assert tiny_rpg.generate(hard).request.options == ISOLATED


def test_requests_carry_the_options_to_the_unet(tiny_rpg: RPG) -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"])
    request = GenerationRequest(prompt=PROMPT, plan=plan, steps=2, seed=1, width=64, height=64)

    def latents(options: dict) -> torch.Tensor:
        out = tiny_rpg.generate(
            request.model_copy(update={"options": options}), output_type="latent"
        )
        return out.images[0]

    rpg_latents = latents({})
    assert not torch.allclose(latents({"image_attention": "region"}), rpg_latents, atol=1e-4)
    assert not torch.allclose(latents({"group_norm": "region"}), rpg_latents, atol=1e-4)
    torch.testing.assert_close(latents({"group_norm": "global"}), rpg_latents)
    with pytest.raises(
        ConfigurationError, match="group_norm: Input should be 'global' or 'region'"
    ):
        tiny_rpg.generate(request.model_copy(update={"options": {"group_norm": "row"}}))


def test_the_cli_takes_the_flags_for_unet_families_only(tmp_path: Path) -> None:
    code, heavy, err = run_rpg(
        ["generate", PROMPT, "--model", "tiny-sd3", "--group-norm", "region"], tmp_path
    )
    assert code == 2 and heavy == [] and "--group-norm does not apply to tiny-sd3" in err


def test_cli_flags_are_recorded_and_rerender_the_same_pixels(
    rpg_cache: Path, tmp_path: Path
) -> None:
    x, y = tmp_path / "x.png", tmp_path / "y.png"
    args = ["generate", PROMPT, "--model", "tiny-sd", "--seed", "2", "--steps", "2"]
    flags = ["--image-attention", "region", "--group-norm", "region"]
    assert main([*args, *flags, "--out", str(x)]) == 0
    assert read_metadata(x)["request"]["options"] == ISOLATED
    assert main(["generate", "--from", str(x), "--out", str(y)]) == 0
    with Image.open(x) as a, Image.open(y) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
