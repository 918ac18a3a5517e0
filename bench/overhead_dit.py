"""Overhead of regional joint attention on MM-DiT transformers: ``--arch flux|sd3``.

Builds the real transformer architecture with random weights — FLUX.1-dev (width 3072 = 24
heads × 128, T5 width 4096, stock text 512 T5 tokens; 4096 image tokens at 1024×1024) or
SD3.5-large (width 2432 = 38 heads × 64, stock text 77 CLIP + 256 T5 tokens; 4096 image tokens
at 1024×1024) — with **fewer blocks** (``--blocks``; FLUX: that many double- *and*
single-stream blocks; SD3: that many regular joint blocks, leaving out the real model's last
block, which drops the text stream after attention). Every block of a kind is the same
computation, so per-block ratios carry over to the full 19 + 38 / 38 blocks; only the embedders
and the final layer (identical in stock and rpg) are over-weighted by fewer blocks, which pulls
ratios slightly towards 1.

Compared per denoising step (one transformer forward, batch 1; the pipeline around it is the
same):

* ``stock`` — the stock processors with the stock padded prompt;
* ``rpg N [base] [region]`` — ``N`` regions on a grid, packed as rpg packs them: region prompts
  at their real length (``--region-tokens``, default 24 T5 tokens; SD3 adds 14 CLIP tokens), and
  with ``base`` the base prompt at the stock padding and β = 0.3; ``region`` is
  ``image_attention="region"``. The regional processors are whatever
  ``rpg.attention.joint.regional_joint`` installs.

Three measurements, any combination (none given: ``--flops``, which takes seconds):

``--flops``: matmul and attention FLOPs, exact, under ``FlopCounterMode`` on the ``meta``
device (no memory, no compute; about a second per row).

``--memory``: peak memory of one forward. *Activation peak* (``act``): the peak above what is
held just before the forward (weights, inputs, runtime) — what rpg changes. *Total peak*
(``total``): the peak itself, weights and inputs included — what decides whether a run fits.
On CPU each configuration runs in a fresh subprocess (no allocator state carried over): glibc's
mmap threshold is pinned so freed tensors leave the resident set, the kernel's peak RSS
(``VmHWM``) is reset through ``/proc/self/clear_refs`` after the weights and inputs are made,
and act = ``VmHWM`` − RSS before the forward, total = ``VmHWM`` (the Python and torch runtime
included). On CUDA: ``torch.cuda.max_memory_allocated`` after a reset (total), minus
``memory_allocated`` before the forward (act), after one warm-up forward.

``--time``: paired time ratios. Every round runs ``stock, c1, stock, c2, …, cN, stock`` on the
same blocks; a configuration's ratio in a round is its time over the mean of the two stock runs
around it (linear drift cancels), and the reported ratio is the median over ``--repeats`` rounds
(after ``--warmup`` untimed stock forwards). On CPU the ratio is of process CPU time with
``--threads`` fixed (default 1), which a busy shared machine disturbs less than wall time; on
CUDA, of wall time.
Seconds per block-forward are a forward's seconds over its block count (embedders included).

    python bench/overhead.py --arch flux                       # FLOP table at 1024², seconds
    python bench/overhead.py --arch flux --memory              # + peak memory: ~2 min per row
    python bench/overhead.py --arch sd3 --time --size 256 --repeats 3      # quick CPU timing
    python bench/overhead.py --arch flux --flops --memory --time --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from rpg.attention.joint import JointAttentionOptions, JointRegions, regional_joint
from rpg.attention.spec import RegionalLayout

sys.path.insert(0, str(Path(__file__).parent))
from measure import PeakMemory, flop_counter

GRIDS: dict[int, tuple[tuple[float, tuple[float, ...]], ...]] = {
    1: ((1.0, (1.0,)),),
    2: ((1.0, (1.0, 1.0)),),
    4: ((1.0, (1.0, 1.0)), (1.0, (1.0, 1.0))),
    8: ((1.0, (1.0, 1.0, 1.0, 1.0)), (1.0, (1.0, 1.0, 1.0, 1.0))),
}
BASE_WEIGHT = 0.3
MEMORY_TAG = "MEMORY-RESULT "


# --------------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class Arch:
    name: str
    describe: str
    stock_tokens: int
    clip_tokens: int  # a region's CLIP tokens (SD3 only)
    text_width: int
    pooled_width: int
    real_blocks: str
    build: Callable[[int], Any]
    inputs: Callable[[Arch, int, int, torch.device, torch.dtype], dict[str, Any]]
    #: block-forwards in one transformer forward with ``--blocks b``
    block_forwards: Callable[[int], int]


def _flux(blocks: int, **dims: Any) -> Any:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        num_layers=blocks, num_single_layers=blocks, guidance_embeds=True, **dims
    )


def _flux_inputs(
    arch: Arch, size: int, text: int, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    side = size // 16
    ids = torch.zeros(side, side, 3, device=device)
    if device.type != "meta":
        ids[..., 1] = torch.arange(side, device=device)[:, None]
        ids[..., 2] = torch.arange(side, device=device)[None]
    return {
        "hidden_states": torch.randn(1, side * side, 64, device=device, dtype=dtype),
        "encoder_hidden_states": torch.randn(1, text, arch.text_width, device=device, dtype=dtype),
        "pooled_projections": torch.randn(1, arch.pooled_width, device=device, dtype=dtype),
        "timestep": torch.ones(1, device=device, dtype=dtype),
        "guidance": torch.ones(1, device=device, dtype=dtype),
        "img_ids": ids.reshape(-1, 3),
        "txt_ids": torch.zeros(text, 3, device=device),
    }


def _sd3(blocks: int, **dims: Any) -> Any:
    """``blocks`` regular joint blocks: the real model's last block (text dropped) is left out."""
    from diffusers import SD3Transformer2DModel

    real = dict(
        sample_size=128, patch_size=2, in_channels=16, attention_head_dim=64,
        num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
        pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm",
    )  # fmt: skip
    model = SD3Transformer2DModel(num_layers=blocks + 1, **{**real, **dims})
    # The last block is ``context_pre_only``; drop it so every block measured is a regular one.
    model.transformer_blocks = torch.nn.ModuleList(list(model.transformer_blocks)[:blocks])
    return model


def _sd3_inputs(
    arch: Arch, size: int, text: int, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    side = size // 8
    return {
        "hidden_states": torch.randn(1, 16, side, side, device=device, dtype=dtype),
        "encoder_hidden_states": torch.randn(1, text, arch.text_width, device=device, dtype=dtype),
        "pooled_projections": torch.randn(1, arch.pooled_width, device=device, dtype=dtype),
        "timestep": torch.ones(1, device=device, dtype=dtype),
    }


ARCHES = {
    "flux": Arch(
        "flux", "FLUX.1-dev dims: width 3072 = 24 heads x 128, 512 T5 tokens",
        512, 0, 4096, 768, "19 double + 38 single", _flux, _flux_inputs, lambda b: 2 * b,
    ),
    "sd3": Arch(
        "sd3", "SD3.5-large dims: width 2432 = 38 heads x 64, 77 CLIP + 256 T5 tokens",
        77 + 256, 14, 4096, 2048, "38 joint", _sd3, _sd3_inputs, lambda b: b,
    ),
}  # fmt: skip
#: Tiny widths (``--tiny``): exercise the bench's code paths in seconds; the numbers mean nothing.
TINY = {
    "flux": Arch(
        "flux", "tiny FLUX (code-path check only)", 32, 0, 32, 32, "-",
        lambda b: _flux(b, num_attention_heads=2, attention_head_dim=16, joint_attention_dim=32,
                        pooled_projection_dim=32, axes_dims_rope=(4, 6, 6)),
        _flux_inputs, lambda b: 2 * b,
    ),
    "sd3": Arch(
        "sd3", "tiny SD3 (code-path check only)", 24, 4, 32, 32, "-",
        lambda b: _sd3(b, sample_size=16, attention_head_dim=16, num_attention_heads=2,
                       joint_attention_dim=32, caption_projection_dim=32,
                       pooled_projection_dim=32, pos_embed_max_size=16),
        _sd3_inputs, lambda b: b,
    ),
}  # fmt: skip


# --------------------------------------------------------------------------- configurations
@dataclass
class Config:
    name: str
    text_tokens: int
    regions: JointRegions | None
    flops: int | None = None
    seconds: list[float] = field(default_factory=list)  # wall time per forward
    cpu_seconds: list[float] = field(default_factory=list)  # process CPU time per forward
    ratios: list[float] = field(default_factory=list)  # paired, per round
    memory: dict[str, Any] | None = None


def configs(
    arch: Arch,
    size: int,
    counts: list[int],
    region_tokens: int,
    bases: tuple[bool, ...] = (False, True),
    scopes: tuple[str, ...] = ("global", "region"),
) -> list[Config]:
    out = [Config("stock", arch.stock_tokens, None)]
    per_region = region_tokens + arch.clip_tokens
    for n in counts:
        for base in bases:
            for scope in scopes:
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
    device = torch.device("meta")
    with device:
        model = arch.build(blocks)
    inputs = arch.inputs(arch, size, config.text_tokens, device, torch.float32)
    with flop_counter() as counter:
        forward(model, config, inputs)
    return int(counter.get_total_flops())


def build(arch: Arch, blocks: int, device: torch.device, dtype: torch.dtype) -> Any:
    torch.manual_seed(0)
    model = arch.build(blocks).to(device)
    # Built in float32; only cast when asked (diffusers warns about any dtype cast).
    return (model if dtype == torch.float32 else model.to(dtype)).eval()


# --------------------------------------------------------------------------- memory
def _rss_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_child(args: argparse.Namespace, arch: Arch) -> dict[str, Any]:
    """One configuration's peak memory in this (fresh) process: see the module docstring."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    memory = PeakMemory(device)
    memory.pin_allocator()  # before anything is allocated: large tensors are mmapped from here on
    config = {c.name: c for c in _configs(args, arch, args.size)}[args.memory_child]
    model = build(arch, args.blocks, device, dtype)
    inputs = arch.inputs(arch, args.size, config.text_tokens, device, dtype)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    before = memory.start()
    forward(model, config, inputs)
    peaks = memory.stop(before)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "weights_bytes": weights,
        "before_bytes": before,
        "activation_peak_bytes": peaks[0] if peaks else None,
        # Without a resettable peak, the process peak (ru_maxrss) is all there is.
        "total_peak_bytes": peaks[1] if peaks else maxrss,
        "ru_maxrss_bytes": maxrss,
        "method": "VmHWM reset via clear_refs" if peaks else "ru_maxrss only",
    }


def measure_memory(args: argparse.Namespace, arch: Arch, rows: list[Config]) -> None:
    device = torch.device(args.device)
    if device.type == "cuda":
        model = build(arch, args.blocks, device, getattr(torch, args.dtype))
        forward(
            model, rows[0], arch.inputs(arch, args.size, rows[0].text_tokens, device, model.dtype)
        )
        memory = PeakMemory(device)
        for c in rows:
            inputs = arch.inputs(arch, args.size, c.text_tokens, device, model.dtype)
            before = memory.start()
            forward(model, c, inputs)
            peaks = memory.stop(before)
            assert peaks is not None
            c.memory = {
                "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
                "before_bytes": before,
                "activation_peak_bytes": peaks[0],
                "total_peak_bytes": peaks[1],
                "method": "cuda max_memory_allocated",
            }
            _print_memory(c)
            del inputs
        return

    def child(c: Config) -> dict[str, Any]:
        command = [
            sys.executable,
            str(Path(__file__)),
            *_child_argv(args),
            "--memory-child",
            c.name,
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith(MEMORY_TAG)]
        if done.returncode != 0 or not lines:
            raise RuntimeError(
                f"memory subprocess for {c.name!r} failed (exit {done.returncode}):\n"
                + done.stderr[-3000:]
            )
        result: dict[str, Any] = json.loads(lines[-1][len(MEMORY_TAG) :])
        return result

    # Each child's peak is its own process's, so children may run side by side (--memory-jobs).
    with ThreadPoolExecutor(max_workers=max(1, args.memory_jobs)) as pool:
        for c, result in zip(rows, pool.map(child, rows), strict=True):
            c.memory = result
            _print_memory(c)


def _print_memory(c: Config) -> None:
    m = c.memory or {}
    act, total = m.get("activation_peak_bytes"), m.get("total_peak_bytes")
    print(
        f"  memory    {c.name:<20} act {_mib(act):>8} MiB   total {_mib(total):>8} MiB",
        flush=True,
    )


def _child_argv(args: argparse.Namespace) -> list[str]:
    out = [
        "--arch", args.arch, "--blocks", str(args.blocks), "--size", str(args.size),
        "--regions", args.regions, "--base", args.base, "--image-attention",
        args.image_attention, "--region-tokens", str(args.region_tokens), "--device",
        args.device, "--dtype", args.dtype, "--threads", str(args.threads),
    ]  # fmt: skip
    return [*out, "--tiny"] if args.tiny else out


# --------------------------------------------------------------------------- time
def measure_time(args: argparse.Namespace, arch: Arch, rows: list[Config]) -> None:
    """Paired rounds ``stock, c1, stock, c2, …, stock``; see the module docstring."""
    device = torch.device(args.device)
    model = build(arch, args.blocks, device, getattr(torch, args.dtype))
    timed = _configs(args, arch, args.time_size)
    inputs = {
        c.name: arch.inputs(arch, args.time_size, c.text_tokens, device, model.dtype) for c in timed
    }
    use_cpu = device.type == "cpu"

    def run(c: Config) -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        forward(model, c, inputs[c.name])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - wall, time.process_time() - cpu

    stock, others = timed[0], timed[1:]
    for _ in range(args.warmup):
        print(f"    warm-up {stock.name:<20} {run(stock)[0]:8.2f} s", flush=True)
    for round_ in range(args.repeats):
        label = f"round {round_ + 1}"
        before = run(stock)
        stock_runs = [before]
        for c in others:
            this = run(c)
            after = run(stock)
            stock_runs.append(after)
            reference = (before[1] + after[1]) / 2 if use_cpu else (before[0] + after[0]) / 2
            ratio = (this[1] if use_cpu else this[0]) / reference
            print(
                f"  {label:>9} {c.name:<20} {this[0]:8.2f} s  cpu {this[1]:8.2f} s  "
                f"x stock {ratio:.3f}  (stock around it: cpu {before[1]:.2f} s, "
                f"{after[1]:.2f} s)",
                flush=True,
            )
            c.seconds.append(this[0])
            c.cpu_seconds.append(this[1])
            c.ratios.append(ratio)
            before = after
        stock.seconds += [s[0] for s in stock_runs]
        stock.cpu_seconds += [s[1] for s in stock_runs]
    by_name = {c.name: c for c in timed}
    for c in rows:
        t = by_name[c.name]
        c.seconds, c.cpu_seconds, c.ratios = t.seconds, t.cpu_seconds, t.ratios


# --------------------------------------------------------------------------- main
def _configs(args: argparse.Namespace, arch: Arch, size: int) -> list[Config]:
    bases = {"both": (False, True), "off": (False,), "on": (True,)}[args.base]
    scopes = {"both": ("global", "region"), "global": ("global",), "region": ("region",)}[
        args.image_attention
    ]
    counts = [int(x) for x in args.regions.split(",") if x]
    return configs(arch, size, counts, args.region_tokens, bases, scopes)


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="With none of --flops/--memory/--time, --flops runs (seconds). On two CPU cores "
        "at 1024x1024, --memory takes about 1-2 minutes per configuration (FLUX) and --time "
        "about twice that per configuration and round; use --regions/--base/--image-attention "
        "and --size to choose fewer or smaller runs.",
    )
    parser.add_argument("--arch", choices=sorted(ARCHES), required=True)
    parser.add_argument(
        "--blocks", type=int, default=1, help="blocks per kind (real: FLUX 19 + 38, SD3 38)"
    )
    parser.add_argument("--size", type=int, default=1024, help="image side (default 1024)")
    parser.add_argument("--regions", default="2,4,8", help="comma-separated region counts")
    parser.add_argument(
        "--base", choices=["both", "off", "on"], default="both", help="rows without/with base"
    )
    parser.add_argument(
        "--image-attention", choices=["both", "global", "region"], default="both",
        help="rows with image_attention global and/or region",
    )  # fmt: skip
    parser.add_argument("--region-tokens", type=int, default=24, help="T5 tokens per region")
    parser.add_argument("--flops", action="store_true", help="exact FLOPs (meta device)")
    parser.add_argument("--memory", action="store_true", help="peak memory of one forward")
    parser.add_argument("--time", action="store_true", help="paired time ratios")
    parser.add_argument(
        "--memory-jobs", type=int, default=1,
        help="CPU memory subprocesses run side by side (each holds its own weights)",
    )  # fmt: skip
    parser.add_argument(
        "--repeats", type=int, default=None,
        help="timed rounds (default 3 with --time; a value > 0 implies --time)",
    )  # fmt: skip
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed stock forwards before the rounds"
    )
    parser.add_argument(
        "--time-size", type=int, default=None, help="image side for --time (default: --size)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1; 0: torch's)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--dtype", choices=["float32", "float16", "bfloat16"], default=None,
        help="default: float32 on CPU, bfloat16 on CUDA",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="JSON results path")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny widths: checks the code paths, numbers mean nothing",
    )
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    arch = (TINY if args.tiny else ARCHES)[args.arch]
    device = torch.device(args.device)
    args.dtype = args.dtype or ("float32" if device.type == "cpu" else "bfloat16")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child is not None:
        print(MEMORY_TAG + json.dumps(memory_child(args, arch)), flush=True)
        return 0
    if args.repeats is not None and args.repeats < 0:
        parser.error("--repeats must be 0 or more")
    if args.repeats:
        args.time = True
    if args.repeats is None:
        args.repeats = 3
    if args.time and args.repeats == 0:
        parser.error("--time needs --repeats of 1 or more")
    if not (args.flops or args.memory or args.time):
        args.flops = True
    args.time_size = args.time_size or args.size

    rows = _configs(args, arch, args.size)
    blocks_fwd = arch.block_forwards(args.blocks)
    print(
        f"{arch.name} ({arch.describe}): {args.blocks} block(s) per kind, real model "
        f"{arch.real_blocks}; {args.device} {args.dtype}, {torch.get_num_threads()} thread(s)"
    )
    print(
        "Every block of a kind is the same computation, so per-block ratios carry over to the "
        "full model (embedders and final layer, the same in stock and rpg, pull ratios slightly "
        "towards 1)."
    )
    if args.flops:
        print(f"flops at {args.size}x{args.size} (meta device) ...", flush=True)
        for c in rows:
            c.flops = count_flops(arch, args.blocks, args.size, c)
    if args.memory:
        print(f"peak memory of one forward at {args.size}x{args.size} ...", flush=True)
        measure_memory(args, arch, rows)
    if args.time:
        print(
            f"paired time at {args.time_size}x{args.time_size}, {args.warmup} warm-up + "
            f"{args.repeats} round(s) ...",
            flush=True,
        )
        measure_time(args, arch, rows)

    stock = rows[0]
    clock = "cpu" if device.type == "cpu" else "wall"
    print()
    print(f"{arch.name} at {args.size}x{args.size}" + (
        f" (time at {args.time_size}x{args.time_size})" if args.time_size != args.size else ""
    ))  # fmt: skip
    print(
        f"{'config':<20}{'text':>6}{'flops x':>9}{'act MiB':>9}{'act x':>7}{'total MiB':>11}"
        f"{'total x':>9}{'s/fwd':>8}{'s/block':>9}{clock + ' x':>8}"
    )
    stock_mem = stock.memory or {}
    for c in rows:
        m = c.memory or {}
        act, total = m.get("activation_peak_bytes"), m.get("total_peak_bytes")
        s_act, s_total = stock_mem.get("activation_peak_bytes"), stock_mem.get("total_peak_bytes")
        secs = c.cpu_seconds if clock == "cpu" else c.seconds
        med = statistics.median(secs) if secs else None
        ratio = 1.0 if c is stock and secs else (statistics.median(c.ratios) if c.ratios else None)
        print(
            f"{c.name:<20}{c.text_tokens:>6}"
            f"{_fmt(c.flops / stock.flops if c.flops and stock.flops else None, '.3f'):>9}"
            f"{_mib(act):>9}{_fmt(act / s_act if act and s_act else None, '.3f'):>7}"
            f"{_mib(total):>11}{_fmt(total / s_total if total and s_total else None, '.3f'):>9}"
            f"{_fmt(med, '.2f'):>8}{_fmt(med / blocks_fwd if med else None, '.2f'):>9}"
            f"{_fmt(ratio, '.3f'):>8}"
        )
    print(
        "text: text tokens; act: activation peak of one forward (peak above weights + inputs "
        "held before it: what rpg changes); total: peak with weights and inputs"
        + (" and the Python/torch runtime (process RSS)" if device.type == "cpu" else "")
        + f"; s/fwd, s/block: median {clock} seconds per forward and per block-forward "
        f"({blocks_fwd} per forward, embedders included); {clock} x: paired ratio, median "
        "over rounds."
    )
    if args.memory or args.time or args.out:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        out = args.out or Path("bench/results") / f"overhead-dit-{arch.name}-{stamp}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "arch": arch.name, "describe": arch.describe, "blocks": args.blocks,
            "size": args.size, "time_size": args.time_size, "repeats": args.repeats,
            "warmup": args.warmup, "device": args.device, "dtype": args.dtype,
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "timestamp": stamp,
        }  # fmt: skip
        results = [
            {
                "config": c.name, "text_tokens": c.text_tokens, "flops": c.flops,
                "seconds": c.seconds, "cpu_seconds": c.cpu_seconds, "ratios": c.ratios,
                "memory": c.memory,
            }
            for c in rows
        ]  # fmt: skip
        out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
        print(f"wrote {out}")
    gc.collect()
    return 0


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    raise SystemExit(main())
