"""Overhead of regional attention against the stock diffusers pipeline.

Builds the real Stable Diffusion 1.5 architecture (UNet, VAE, CLIP text encoder) with random
weights from configs written here, so nothing is downloaded, and times the stock
``StableDiffusionPipeline`` given 77-token ``prompt_embeds`` against the same pipeline inside
``rpg.attention.regional`` with packed embeddings for 1, 2, 4 and 8 regions, with and without a
base prompt, each with the key/value cache off and on (``kv`` rows: each layer projects the text
context once per call instead of once per step). Runs are interleaved (every repeat runs every
configuration once) after one warm-up round; a time ratio is the median over rounds of the run's
time over the stock run's time in the same round. A reference row re-runs
full attention once per region plus once for the base, as the paper's reference code does.

Timing covers denoising (``output_type="latent"``): the VAE decode and text encoding are the
same for every configuration and would only dilute the ratio; pass ``--decode`` to include the
decode.

Peak memory, two ways. *Call peak* (``mem ×``): on CUDA ``torch.cuda.max_memory_allocated``
after a reset, minus the memory allocated before the call; on CPU the process's peak resident set
size during the call minus its resident size before it — the activations and anything else the
call allocates, weights excluded. *Total peak* (``total ×``): the same peak without subtracting
what was there before, i.e. weights included — what decides whether a run fits on a device.
On CPU the kernel's peak (``VmHWM``) is reset before every call by writing ``5`` to
``/proc/self/clear_refs`` (Linux ≥ 4.0), and glibc's mmap threshold is pinned so that large
tensors are mapped and unmapped rather than kept in the heap; without that, freed memory stays
resident and later peaks are hidden. Pinning slows CPU runs, so memory is measured in
separate two-step rounds after all timing rounds (from the second step on, a step's peak is the
same: the key/value cache is full), and the smallest of those rounds is kept, since noise only
adds to a peak.
Where ``/proc`` or glibc is unavailable the memory columns are left empty.

Floating-point work (``--flops``): one more call per configuration under
``torch.utils.flop_counter.FlopCounterMode`` counts the matmul, convolution and attention FLOPs
(``flops ×``). It is exact and immune to a noisy machine, but blind to memory-bound elementwise
work (gathers, copies), so it complements the timings rather than replacing them.

    python bench/overhead.py                 # 256×256, 3 repeats, CPU
    python bench/overhead.py --full --device cuda --repeats 5
    python bench/overhead.py --arch sdxl --device cuda    # SDXL's UNet at 512×512
    python bench/overhead.py --arch flux --flops          # FLUX / SD3: see overhead_dit.py
    python bench/overhead.py --compile --threads 2        # compiled UNet: rpg vs stock
    python bench/overhead.py --canvas --tiny --repeats 1  # canvas plans: see overhead_canvas.py

``--compile`` compiles the UNet once (``unet.compile()``, inductor unless ``--compile-backend``)
before the warm-up round, which compiles one graph per configuration (the stock one and every
regional one); the timed rounds then compare compiled rpg with the compiled stock pipeline. It
defaults to 4 and 8 regions, the key/value cache on (as the backbones run), no naive rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from rpg.attention import RegionalConditioning, RegionalLayout, regional
from rpg.attention.install import cross_attention_names
from rpg.backbones.tiny.components import (
    SD_SCHEDULE,
    byte_level_tokenizer,
    clip_text_config,
    four_level_vae,
    sd_pipeline,
    sdxl_pipeline,
)
from rpg.layout import grid_cells, latent_grid_for_tokens

sys.path.insert(0, str(Path(__file__).parent))
from measure import PeakMemory, flop_counter

GRIDS: dict[int, tuple[tuple[float, tuple[float, ...]], ...]] = {
    1: ((1.0, (1.0,)),),
    2: ((1.0, (1.0, 1.0)),),
    4: ((1.0, (1.0, 1.0)), (1.0, (1.0, 1.0))),
    8: ((1.0, (1.0, 1.0, 1.0, 1.0)), (1.0, (1.0, 1.0, 1.0, 1.0))),
}
BASE_RATIO = 0.3
#: CLIP's vocabulary size: the text encoders' embedding tables have the real size.
CLIP_VOCAB_SIZE = 49408
PROMPTS = [
    "a red apple",
    "a blue mug",
    "a yellow banana",
    "a green pear",
    "a white cat",
    "a black dog",
    "an orange fox",
    "a purple flower",
]


# --------------------------------------------------------------------------- architectures
@dataclass
class Bench:
    """A pipeline with random weights and how to turn a prompt into one 77-token embedding."""

    pipe: Any
    encode: Callable[[str], torch.Tensor]
    models: list[Any]  # the models whose cross-attention becomes regional
    call_kwargs: dict[str, Any] = field(default_factory=dict)


def build_sd15(device: torch.device, dtype: torch.dtype) -> Bench:
    """Stable Diffusion 1.5's architecture, random weights."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=(
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = four_level_vae((128, 256, 512, 512), layers_per_block=2, sample_size=512)
    text_encoder = CLIPTextModel(
        clip_text_config(
            tokenizer, 768, 12, heads=12, intermediate=3072, vocab_size=CLIP_VOCAB_SIZE
        )
    )
    pipe = sd_pipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SD_SCHEDULE),
    )
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def encode(prompt: str) -> torch.Tensor:
        ids = tokenizer(
            prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        return text_encoder(ids)[0].to(dtype)

    return Bench(pipe=pipe, encode=encode, models=[unet])


def build_sdxl(device: torch.device, dtype: torch.dtype) -> Bench:
    """SDXL base 1.0's UNet and VAE architecture, random weights.

    Timing covers denoising only, so the text encoders are two-layer stand-ins with SDXL's
    widths (768 + 1280 = 2048-wide token embeddings, a 1280-wide pooled embedding) rather than
    CLIP ViT-L and the 700M-parameter OpenCLIP bigG: they run once per prompt, outside the
    timed call, and only their output shapes matter to the UNet.
    """
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        cross_attention_dim=2048,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        norm_num_groups=32,
    )
    vae = four_level_vae(
        (128, 256, 512, 512), layers_per_block=2, sample_size=1024, scaling_factor=0.13025
    )

    def text_config(hidden: int, heads: int) -> Any:
        return clip_text_config(
            tokenizer, hidden, 2, heads=heads, intermediate=4 * hidden, vocab_size=CLIP_VOCAB_SIZE
        )

    text_encoder = CLIPTextModel(text_config(768, 12))
    text_encoder_2 = CLIPTextModelWithProjection(text_config(1280, 20))
    pipe = sdxl_pipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SD_SCHEDULE, timestep_spacing="leading"),
    )
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def encode_both(prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokenizer(
            prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        first = text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        second = text_encoder_2(ids, output_hidden_states=True)
        tokens = torch.cat([first, second.hidden_states[-2]], dim=-1)
        return tokens.to(dtype), second.text_embeds.to(dtype)

    # The pooled embedding conditions the whole image; every configuration uses the same one.
    pooled = encode_both("a still life on a table")[1]
    negative_pooled = torch.zeros_like(pooled)
    return Bench(
        pipe=pipe,
        encode=lambda prompt: encode_both(prompt)[0],
        models=[unet],
        call_kwargs={
            "pooled_prompt_embeds": pooled,
            "negative_pooled_prompt_embeds": negative_pooled,
        },
    )


ARCHITECTURES: dict[str, Callable[[torch.device, torch.dtype], Bench]] = {
    "sd15": build_sd15,
    "sdxl": build_sdxl,
}
#: Image size per architecture: ``--full`` size, and the default size.
SIZES: dict[str, tuple[int, int]] = {"sd15": (512, 256), "sdxl": (1024, 512)}


# --------------------------------------------------------------------------- naive reference
class NaiveRegionalProcessor:
    """The paper's cost structure: full-canvas attention once per region and once for the base.

    Each pass runs ``to_q``, attention over the whole canvas and ``to_out`` with one prompt's
    tokens (the negative half attends to the negative span in every pass), and the passes are
    blended with region masks. Written for this benchmark as a reference row only.
    """

    def __init__(self, cond: RegionalConditioning, layout: RegionalLayout) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.cond, self.layout = cond, layout
        self.stock = AttnProcessor2_0()
        self._masks: dict[tuple[int, int], list[torch.Tensor]] = {}

    def _region_masks(self, n: int, like: torch.Tensor) -> list[torch.Tensor]:
        h, w = latent_grid_for_tokens(n, self.layout.height, self.layout.width)
        if (h, w) not in self._masks:
            masks = []
            for y0, y1, x0, x1 in grid_cells(self.layout.rows, h, w):
                m = torch.zeros(h, w, dtype=like.dtype, device=like.device)
                m[y0:y1, x0:x1] = 1
                masks.append(m.reshape(1, h * w, 1))
            self._masks[h, w] = masks
        return self._masks[h, w]

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if encoder_hidden_states is None:
            return self.stock(attn, hidden_states, None, attention_mask, temb)
        half = hidden_states.shape[0] // 2
        n0, n1 = self.cond.negative_span or (0, 77)
        negative = encoder_hidden_states[:half, n0:n1]

        def full(span: tuple[int, int]) -> torch.Tensor:
            ctx = torch.cat([negative, encoder_hidden_states[half:, span[0] : span[1]]])
            return self.stock(attn, hidden_states, ctx)

        masks = self._region_masks(hidden_states.shape[1], hidden_states)
        base = full(self.cond.base_span) if self.cond.base_span is not None else None
        out = torch.zeros_like(hidden_states)
        for mask, span, beta in zip(
            masks, self.cond.region_spans, self.layout.base_weights, strict=True
        ):
            part = full(span)
            if base is not None and beta > 0:
                part = (1 - beta) * part + beta * base
            out = out + mask * part
        return out


@contextlib.contextmanager
def naive(models: list[Any], cond: RegionalConditioning, layout: RegionalLayout) -> Iterator[None]:
    proc = NaiveRegionalProcessor(cond, layout)
    saved = [(m, dict(m.attn_processors)) for m in models]
    try:
        for m, before in saved:
            cross = set(cross_attention_names(m))
            m.set_attn_processor({k: proc if k in cross else v for k, v in before.items()})
        yield
    finally:
        for m, before in saved:
            m.set_attn_processor(dict(before))


# --------------------------------------------------------------------------- configurations
@dataclass
class Config:
    name: str
    regions: int  # 0 for the stock pipeline
    base: bool
    kind: str  # "stock" | "rpg" | "naive"
    cache_kv: bool = False
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    peak_bytes: list[int] = field(default_factory=list)
    total_peak_bytes: list[int] = field(default_factory=list)
    flops: int | None = None


def pack(
    bench: Bench, regions: int, base: bool, height: int, width: int
) -> tuple[RegionalConditioning, RegionalLayout, torch.Tensor, torch.Tensor]:
    """Packed ``[base | region 0 | …]`` embeddings, a shared negative padded to the same length."""
    pieces = [bench.encode("a still life on a table")] if base else []
    pieces += [bench.encode(PROMPTS[i % len(PROMPTS)]) for i in range(regions)]
    positive = torch.cat(pieces, dim=1)
    negative_one = bench.encode("")
    negative = negative_one.repeat(1, len(pieces), 1)
    offset = 77 if base else 0
    cond = RegionalConditioning(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        region_spans=tuple((offset + 77 * i, offset + 77 * (i + 1)) for i in range(regions)),
        base_span=(0, 77) if base else None,
        negative_span=(0, 77),
    )
    layout = RegionalLayout(
        rows=GRIDS[regions],
        base_weights=(BASE_RATIO if base else 0.0,) * regions,
        height=height,
        width=width,
    )
    return cond, layout, positive, negative


def run_once(
    bench: Bench,
    config: Config,
    args: argparse.Namespace,
    prepared: dict[str, Any],
    *,
    steps: int,
    memory: PeakMemory | None = None,
) -> tuple[float, float, tuple[int, int] | None]:
    positive, negative, scope = prepared[config.name]
    generator = torch.Generator(device="cpu").manual_seed(0)
    before = memory.start() if memory is not None else None
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu_start = time.perf_counter(), time.process_time()
    with scope(), torch.no_grad():
        bench.pipe(
            prompt_embeds=positive,
            negative_prompt_embeds=negative,
            height=args.size,
            width=args.size,
            num_inference_steps=steps,
            guidance_scale=7.0,
            generator=generator,
            output_type="np" if args.decode else "latent",
            **bench.call_kwargs,
        )
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return seconds, cpu, memory.stop(before) if memory is not None else None


#: MM-DiT architectures, benchmarked per transformer forward by ``overhead_dit.py``.
DIT_ARCHITECTURES = ("flux", "sd3")


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else list(argv)
    if "--canvas" in args_list:
        sys.path.insert(0, str(Path(__file__).parent))
        from overhead_canvas import main as canvas_main

        return int(canvas_main([a for a in args_list if a != "--canvas"]))
    if any(a in args_list for a in DIT_ARCHITECTURES) and "--arch" in args_list:
        sys.path.insert(0, str(Path(__file__).parent))
        from overhead_dit import main as dit_main

        return int(dit_main(args_list))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--arch", choices=sorted([*ARCHITECTURES, *DIT_ARCHITECTURES]), default="sd15"
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="native size: 512×512 for sd15 (default 256×256), 1024×1024 for sdxl "
        "(default 512×512)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed rounds (median reported; 0: no timing)"
    )
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads; 1 makes CPU-time ratios robust on a shared machine",
    )
    parser.add_argument(
        "--memory-rounds",
        type=int,
        default=2,
        help="separate 2-step rounds measuring peak memory after the timing (0 skips them)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        default=None,
        help="default: float16 on CUDA, float32 elsewhere",
    )
    parser.add_argument("--regions", default="1,2,4,8", help="comma-separated region counts")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive reference rows")
    parser.add_argument(
        "--kv-cache",
        choices=["off", "on", "both"],
        default="both",
        help="regional rows without and/or with the key/value cache (default: both)",
    )
    parser.add_argument("--decode", action="store_true", help="include the VAE decode in timing")
    parser.add_argument(
        "--flops",
        action="store_true",
        help="also count each configuration's FLOPs in one more --steps call (exact, noise-free)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="compile the UNet (unet.compile()) and compare compiled rpg with compiled stock; "
        "defaults to --regions 4,8 --kv-cache on --no-naive",
    )
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--out", type=Path, default=None, help="JSON path")
    if "--compile" in args_list:
        parser.set_defaults(regions="4,8", kv_cache="on", no_naive=True)
    args = parser.parse_args(argv)
    args.size = SIZES[args.arch][0 if args.full else 1]
    if args.repeats < 0:
        parser.error("--repeats must be 0 (no timing: --flops and memory only) or more")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype_name = args.dtype or ("float16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_path = args.out or Path("bench/results") / f"overhead-{args.arch}-{stamp}.json"
    memory = PeakMemory(device)

    print(f"building {args.arch} with random weights on {device} ({dtype_name}) ...", flush=True)
    bench = ARCHITECTURES[args.arch](device, dtype)

    if args.compile:
        # one graph per configuration: stock plus every regional one, each compiled once
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        for model in bench.models:
            model.compile(backend=args.compile_backend)
        print(f"compiled the UNet ({args.compile_backend}); warm-up compiles each config")

    counts = [int(c) for c in args.regions.split(",")]
    configs = [Config("stock", 0, False, "stock")]
    prepared: dict[str, Any] = {}
    stock_pos = bench.encode("a still life on a table")
    prepared["stock"] = (stock_pos, bench.encode(""), contextlib.nullcontext)
    caches = {"off": (False,), "on": (True,), "both": (False, True)}[args.kv_cache]
    for n in counts:
        for base in (False, True):
            cond, layout, pos, neg = pack(bench, n, base, args.size, args.size)
            for cache_kv in caches:
                name = f"rpg {n}r{' +base' if base else ''}{' kv' if cache_kv else ''}"
                configs.append(Config(name, n, base, "rpg", cache_kv))

                def scope(
                    c: RegionalConditioning = cond,
                    lay: RegionalLayout = layout,
                    kv: bool = cache_kv,
                ) -> AbstractContextManager[Any]:
                    return regional(bench.models, c, lay, guidance=True, cache_kv=kv)

                prepared[name] = (pos, neg, scope)
    if not args.no_naive:
        for n in [c for c in counts if c in (4, 8)]:
            cond, layout, pos, neg = pack(bench, n, True, args.size, args.size)
            name = f"naive {n}r +base"
            configs.append(Config(name, n, True, "naive"))

            def naive_scope(
                c: RegionalConditioning = cond, lay: RegionalLayout = layout
            ) -> AbstractContextManager[None]:
                return naive(bench.models, c, lay)

            prepared[name] = (pos, neg, naive_scope)

    for round_ in range(args.repeats + 1 if args.repeats else 0):
        label = "warm-up" if round_ == 0 else f"round {round_}/{args.repeats}"
        for config in configs:
            seconds, cpu, _ = run_once(bench, config, args, prepared, steps=args.steps)
            print(
                f"  {label:>10}  {config.name:<18} {seconds:7.2f} s  cpu {cpu:7.2f} s", flush=True
            )
            if round_:
                config.seconds.append(seconds)
                config.cpu_seconds.append(cpu)

    if args.flops:
        for config in configs:
            with flop_counter() as counter:
                run_once(bench, config, args, prepared, steps=args.steps)
            config.flops = int(counter.get_total_flops())
            print(f"  flops     {config.name:<18} {config.flops / 1e12:8.3f} TFLOP", flush=True)

    # Memory after timing: pinning glibc's allocator slows CPU runs, so it must not touch them.
    if memory.available and args.memory_rounds > 0:
        memory.pin_allocator()
        for round_ in range(args.memory_rounds):
            for config in configs:
                _, _, peaks = run_once(bench, config, args, prepared, steps=2, memory=memory)
                if peaks is not None:
                    config.peak_bytes.append(peaks[0])
                    config.total_peak_bytes.append(peaks[1])
                    print(
                        f"  memory {round_ + 1}  {config.name:<18} {peaks[0] / 2**20:7.0f} MiB "
                        f"(total {peaks[1] / 2**20:.0f} MiB)"
                    )

    stock = configs[0]

    def median(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    def paired(values: list[float], reference: list[float]) -> float | None:
        """Median over rounds of this run's time over the stock run's time in the same round.

        A shared machine drifts over minutes; runs in one round are minutes apart at most.
        """
        ratios = [v / r for v, r in zip(values, reference, strict=True)]
        return median(ratios)

    # Noise (other allocations, page-cache effects) only adds to a peak, so take the smallest.
    stock_mem = min(stock.peak_bytes) if stock.peak_bytes else None
    stock_total = min(stock.total_peak_bytes) if stock.total_peak_bytes else None
    stock_flops = stock.flops
    rows = []
    for c in configs:
        med = median(c.seconds)
        cpu_med = median(c.cpu_seconds)
        mem = min(c.peak_bytes) if c.peak_bytes else None
        total = min(c.total_peak_bytes) if c.total_peak_bytes else None
        rows.append(
            {
                "config": c.name,
                "kind": c.kind,
                "regions": c.regions,
                "base": c.base,
                "cache_kv": c.cache_kv,
                "seconds_median": med,
                "seconds": c.seconds,
                "time_ratio": paired(c.seconds, stock.seconds),
                "cpu_seconds_median": cpu_med,
                "cpu_seconds": c.cpu_seconds,
                "cpu_time_ratio": paired(c.cpu_seconds, stock.cpu_seconds),
                "peak_bytes_min": mem,
                "peak_bytes": c.peak_bytes,
                "memory_ratio": (mem / stock_mem) if mem is not None and stock_mem else None,
                "total_peak_bytes_min": total,
                "total_peak_bytes": c.total_peak_bytes,
                "total_memory_ratio": (
                    (total / stock_total) if total is not None and stock_total else None
                ),
                "flops": c.flops,
                "flops_ratio": (c.flops / stock_flops) if c.flops and stock_flops else None,
            }
        )

    print()
    print(
        f"{args.arch} {args.size}x{args.size}, {args.steps} steps, CFG on, {device} "
        f"{dtype_name}, median of {args.repeats} (denoise{' + decode' if args.decode else ''})"
        + (f", UNet compiled ({args.compile_backend})" if args.compile else "")
    )
    print(
        f"{'config':<20}{'seconds':>9}{'× stock':>9}{'cpu s':>9}{'cpu ×':>8}"
        f"{'peak MiB':>10}{'mem ×':>8}{'total MiB':>11}{'total ×':>9}{'flops ×':>9}"
    )

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in rows:
        mib = None if r["peak_bytes_min"] is None else r["peak_bytes_min"] / 2**20
        total_mib = None if r["total_peak_bytes_min"] is None else r["total_peak_bytes_min"] / 2**20
        print(
            f"{r['config']:<20}{fmt(r['seconds_median'], '.2f'):>9}"
            f"{fmt(r['time_ratio'], '.3f'):>9}"
            f"{fmt(r['cpu_seconds_median'], '.2f'):>9}{fmt(r['cpu_time_ratio'], '.3f'):>8}"
            f"{fmt(mib, '.0f'):>10}{fmt(r['memory_ratio'], '.3f'):>8}"
            f"{fmt(total_mib, '.0f'):>11}{fmt(r['total_memory_ratio'], '.3f'):>9}"
            f"{fmt(r['flops_ratio'], '.3f'):>9}"
        )

    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "arch": args.arch,
        "size": args.size,
        "steps": args.steps,
        "repeats": args.repeats,
        "device": str(device),
        "dtype": dtype_name,
        "decode_timed": args.decode,
        "compiled": args.compile_backend if args.compile else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "memory_method": (
            "cuda max_memory_allocated after reset, minus allocated before (total: not minus)"
            if device.type == "cuda"
            else "peak RSS (VmHWM reset via /proc/self/clear_refs) minus RSS before the call "
            "(total: not minus), glibc mmap/trim thresholds pinned at 128 KiB, malloc_trim "
            "before each call"
            if memory.available
            else None
        ),
        "memory_rounds": args.memory_rounds,
        "memory_steps": 2,
        "timestamp": stamp,
    }
    out_path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"\nwrote {out_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
