"""Overhead of regional joint attention on MM-DiT transformers: ``--arch flux|sd3``.

Builds the real transformer architecture — FLUX.1-dev (width 3072 = 24 heads × 128, T5 width
4096, stock text 512 tokens) or SD3.5-large (width 2432 = 38 heads × 64, stock text 77 + 256
tokens) — with **fewer blocks** (``--blocks``; FLUX: that many double- *and* single-stream
blocks). Every block of a kind is the same computation, so per-block ratios carry over to the
full 57 / 38 blocks; only the embedders and the final layer (identical in stock and rpg) are
over-weighted by fewer blocks, which pulls ratios slightly towards 1.

Compared per denoising step (one transformer forward; the pipeline around it is the same):

* ``stock`` — the stock processors with the stock padded prompt;
* ``rpg N [base] [region]`` — ``N`` regions on a grid, packed as rpg packs them: region prompts
  at their real length (``--region-tokens``, default 24 T5 tokens; SD3 adds 14 CLIP tokens), and
  with ``base`` the base prompt at the stock padding and β = 0.3; ``region`` is
  ``image_attention="region"``.

``--flops`` counts matmul and attention FLOPs exactly under ``FlopCounterMode`` on the ``meta``
device (no memory, no compute; seconds per row), at the real size (default 1024×1024).
``--repeats R`` times real CPU/GPU forwards (random weights) at ``--time-size``: interleaved
rounds after a warm-up, ratio = median over rounds of (time / stock time in the same round).

    python bench/overhead.py --arch flux --flops --repeats 0          # FLOP table at 1024×1024
    python bench/overhead.py --arch sd3 --flops --repeats 3 --time-size 512 --blocks 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from rpg.attention.joint import JointAttentionOptions, JointRegions, regional_joint
from rpg.attention.spec import RegionalLayout

GRIDS: dict[int, tuple[tuple[float, tuple[float, ...]], ...]] = {
    1: ((1.0, (1.0,)),),
    2: ((1.0, (1.0, 1.0)),),
    4: ((1.0, (1.0, 1.0)), (1.0, (1.0, 1.0))),
    8: ((1.0, (1.0, 1.0, 1.0, 1.0)), (1.0, (1.0, 1.0, 1.0, 1.0))),
}
BASE_WEIGHT = 0.3


@dataclass(frozen=True)
class Arch:
    name: str
    stock_tokens: int
    clip_tokens: int  # a region's CLIP tokens (SD3 only)
    build: Callable[[int], Any]
    inputs: Callable[[int, int, torch.device, torch.dtype], dict[str, Any]]


def _flux(blocks: int) -> Any:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(num_layers=blocks, num_single_layers=blocks, guidance_embeds=True)


def _flux_inputs(size: int, text: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    side = size // 16
    ids = torch.zeros(side, side, 3, device=device)
    if device.type != "meta":
        ids[..., 1] = torch.arange(side, device=device)[:, None]
        ids[..., 2] = torch.arange(side, device=device)[None]
    return {
        "hidden_states": torch.randn(1, side * side, 64, device=device, dtype=dtype),
        "encoder_hidden_states": torch.randn(1, text, 4096, device=device, dtype=dtype),
        "pooled_projections": torch.randn(1, 768, device=device, dtype=dtype),
        "timestep": torch.ones(1, device=device, dtype=dtype),
        "guidance": torch.ones(1, device=device, dtype=dtype),
        "img_ids": ids.reshape(-1, 3),
        "txt_ids": torch.zeros(text, 3, device=device),
    }


def _sd3(blocks: int) -> Any:
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, num_layers=blocks, attention_head_dim=64,
        num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
        pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm",
    )  # fmt: skip


def _sd3_inputs(size: int, text: int, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    side = size // 8
    return {
        "hidden_states": torch.randn(1, 16, side, side, device=device, dtype=dtype),
        "encoder_hidden_states": torch.randn(1, text, 4096, device=device, dtype=dtype),
        "pooled_projections": torch.randn(1, 2048, device=device, dtype=dtype),
        "timestep": torch.ones(1, device=device, dtype=dtype),
    }


ARCHES = {
    "flux": Arch("flux", 512, 0, _flux, _flux_inputs),
    "sd3": Arch("sd3", 77 + 256, 14, _sd3, _sd3_inputs),
}


@dataclass
class Config:
    name: str
    text_tokens: int
    regions: JointRegions | None
    flops: int | None = None
    times: list[float] = field(default_factory=list)


def configs(arch: Arch, size: int, counts: list[int], region_tokens: int) -> list[Config]:
    out = [Config("stock", arch.stock_tokens, None)]
    per_region = region_tokens + arch.clip_tokens
    for n in counts:
        for base in (False, True):
            for scope in ("global", "region"):
                start = arch.stock_tokens if base else 0
                spans = tuple(
                    (start + i * per_region, start + (i + 1) * per_region) for i in range(n)
                )
                layout = RegionalLayout(
                    GRIDS[n], (BASE_WEIGHT if base else 0.0,) * n, size, size, latent_factor=16
                )
                total = start + n * per_region
                regions = JointRegions(
                    region_spans=spans, layout=layout, text_length=total,
                    base_span=(0, arch.stock_tokens) if base else None,
                    options=JointAttentionOptions(image_attention=scope),  # type: ignore[arg-type]
                )  # fmt: skip
                name = (
                    f"rpg {n}"
                    + (" base" if base else "")
                    + (" region" if scope == "region" else "")
                )
                out.append(Config(name, total, regions))
    return out


def forward(model: Any, config: Config, inputs: dict[str, Any]) -> None:
    ctx = nullcontext() if config.regions is None else regional_joint(model, config.regions)
    with ctx, torch.no_grad():
        model(**inputs)


def count_flops(arch: Arch, blocks: int, size: int, config: Config) -> int:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from overhead import flop_counter

    device = torch.device("meta")
    with device:
        model = arch.build(blocks)
    inputs = arch.inputs(size, config.text_tokens, device, torch.float32)
    with flop_counter() as counter:
        forward(model, config, inputs)
    return int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=sorted(ARCHES), required=True)
    parser.add_argument("--blocks", type=int, default=1, help="blocks per kind (real: 19+38 / 38)")
    parser.add_argument("--size", type=int, default=1024, help="image side for --flops")
    parser.add_argument("--regions", default="2,4,8")
    parser.add_argument("--region-tokens", type=int, default=24, help="T5 tokens per region")
    parser.add_argument("--flops", action="store_true")
    parser.add_argument("--repeats", type=int, default=0, help="timing rounds (0: none)")
    parser.add_argument("--time-size", type=int, default=256, help="image side for timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args, _ = parser.parse_known_args(argv)
    arch = ARCHES[args.arch]
    counts = [int(x) for x in args.regions.split(",")]
    rows = configs(arch, args.size, counts, args.region_tokens)
    print(f"{arch.name}: {args.blocks} block(s) per kind, FLOPs at {args.size}x{args.size}")
    if args.flops:
        for c in rows:
            c.flops = count_flops(arch, args.blocks, args.size, c)
    if args.repeats:
        device = torch.device(args.device)
        dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
        torch.manual_seed(0)
        model = arch.build(args.blocks).to(device, dtype).eval()
        timed = configs(arch, args.time_size, counts, args.region_tokens)
        by_name = {c.name: c for c in timed}
        inputs = {c.name: arch.inputs(args.time_size, c.text_tokens, device, dtype) for c in timed}
        for round_ in range(args.repeats + 1):  # round 0 warms up
            for c in timed:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                forward(model, c, inputs[c.name])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if round_:
                    c.times.append(time.perf_counter() - started)
        for c in rows:
            c.times = by_name[c.name].times
    stock = rows[0]
    print(f"{'config':<20}{'text':>6}{'flops ×':>9}{'time ×':>9}")
    for c in rows:
        flops = f"{c.flops / stock.flops:.3f}" if c.flops and stock.flops else "-"
        ratio = "-"
        if c.times and stock.times:
            ratio = (
                f"{statistics.median(t / s for t, s in zip(c.times, stock.times, strict=True)):.3f}"
            )
        print(f"{c.name:<20}{c.text_tokens:>6}{flops:>9}{ratio:>9}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
