"""Stock vs rpg on a GPU at real sizes: seconds per image and peak memory, eager and compiled.

Random-weight models of the real architectures (nothing is downloaded):

* ``sd15`` (512²) and ``sdxl`` (1024²): the whole pipeline (UNet, VAE, text encoders) from
  ``overhead.py``'s builders; one image is one pipeline call of ``--steps`` denoising steps
  (``output_type="latent"``: the VAE decode is the same for stock and rpg), stock on 77-token
  embeddings, rpg inside ``rpg.attention.regional`` with packed embeddings and the key/value
  cache on (as the backbones run);
* ``flux`` (FLUX.1-dev dims) and ``sd35`` (SD3.5-large dims) at 1024²: the transformer from
  ``overhead_dit.py`` (``--blocks`` of each kind; the default is the real count, 19 double + 38
  single for FLUX, 38 for SD3.5 — lower it if memory needs it and say so with the numbers);
  one image is ``--steps`` transformer forwards at batch 1 (the pipeline around them is the
  same for stock and rpg), rpg inside ``rpg.attention.joint.regional_joint``.

Rows: stock, rpg with 4 and 8 regions, with and without a base prompt; every row eager and
with the denoiser compiled (``module.compile()``, inductor; the first call of each row compiles
and is not timed). Each row: median seconds per image over ``--repeats`` runs after one
warm-up, ratio to stock (same mode), ``torch.cuda.max_memory_allocated`` peak and its ratio.

    python bench/gpu.py                          # every architecture, eager and compiled
    python bench/gpu.py --arch sd15,flux --no-compile --repeats 3
    python bench/gpu.py --arch flux --blocks 8   # fewer blocks if FLUX does not fit
    python bench/gpu.py --tiny --device cpu      # the code paths at tiny size (numbers: none)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))

UNET_ARCHES = ("sd15", "sdxl")
DIT_ARCHES = ("flux", "sd35")
SIZES = {"sd15": 512, "sdxl": 1024, "flux": 1024, "sd35": 1024}
REAL_BLOCKS = {"flux": 19, "sd35": 38}


@dataclass
class Row:
    arch: str
    name: str
    compiled: bool
    seconds: list[float] = field(default_factory=list)
    peak_bytes: int | None = None


@dataclass
class Case:
    """One configuration: a name and a function that makes one image (returns nothing)."""

    name: str
    run: Callable[[], None]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(case: Case, device: torch.device, repeats: int) -> tuple[list[float], int | None]:
    """One warm-up (compiles, if compiled), then ``repeats`` timed images and the peak memory."""
    case.run()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        case.run()
        _sync(device)
        seconds.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return seconds, peak


# --------------------------------------------------------------------------- UNet pipelines
def tiny_sd_bench(device: torch.device, dtype: torch.dtype) -> Any:
    """rpg's tiny SD pipeline as an ``overhead.Bench`` (``--tiny``: code paths only)."""
    import tempfile

    from diffusers import StableDiffusionPipeline
    from overhead import Bench

    from rpg.backbones.tiny import tiny_model

    found = tiny_model("tiny-sd")
    assert found is not None
    folder = found.write(Path(tempfile.mkdtemp(prefix="rpg-gpu-bench-")) / "tiny-sd")
    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)

    def encode(prompt: str) -> torch.Tensor:
        with torch.no_grad():
            embeds: torch.Tensor = pipe.encode_prompt(prompt, device, 1, False)[0]
        return embeds

    return Bench(pipe=pipe, encode=encode, models=[pipe.unet])


def unet_cases(
    arch: str, args: argparse.Namespace, device: torch.device
) -> tuple[list[Any], list[Case]]:
    from overhead import ARCHITECTURES, pack

    from rpg.attention import regional

    dtype = getattr(torch, args.dtype)
    bench = tiny_sd_bench(device, dtype) if args.tiny else ARCHITECTURES[arch](device, dtype)
    size = 64 if args.tiny else SIZES[arch]

    def call(positive: torch.Tensor, negative: torch.Tensor) -> None:
        with torch.no_grad():
            bench.pipe(
                prompt_embeds=positive, negative_prompt_embeds=negative, height=size,
                width=size, num_inference_steps=args.steps, guidance_scale=7.0,
                generator=torch.Generator().manual_seed(0), output_type="latent",
                **bench.call_kwargs,
            )  # fmt: skip

    cases = [Case("stock", lambda: call(bench.encode("a still life on a table"), bench.encode("")))]
    for n in args.regions:
        for base in (False, True):
            cond, layout, pos, neg = pack(bench, n, base, size, size)

            def run(c: Any = cond, lay: Any = layout, p: Any = pos, q: Any = neg) -> None:
                with regional(bench.models, c, lay, guidance=True, cache_kv=True):
                    call(p, q)

            cases.append(Case(f"rpg {n}{' base' if base else ''}", run))
    return list(bench.models), cases


# --------------------------------------------------------------------------- DiT transformers
def dit_cases(arch: str, args: argparse.Namespace, device: torch.device) -> tuple[Any, list[Case]]:
    from overhead_dit import ARCHES, TINY, build, configs, forward

    key = "sd3" if arch == "sd35" else "flux"
    spec = (TINY if args.tiny else ARCHES)[key]
    blocks = args.blocks or (1 if args.tiny else REAL_BLOCKS[arch])
    size = 64 if args.tiny else SIZES[arch]
    dtype = getattr(torch, args.dtype)
    model = build(spec, blocks, device, dtype)
    cases = []
    rows = configs(spec, size, list(args.regions), 24, scopes=("global",))
    for config in rows:
        inputs = spec.inputs(spec, size, config.text_tokens, device, dtype)

        def run(c: Any = config, i: dict[str, Any] = inputs) -> None:
            for _ in range(args.steps):
                forward(model, c, i)

        cases.append(Case(config.name, run))
    return model, cases


# --------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="sd15,sdxl,flux,sd35", help="comma-separated")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, else float32")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps per image")
    parser.add_argument("--repeats", type=int, default=3, help="timed images per row (median)")
    parser.add_argument("--regions", default="4,8", help="comma-separated region counts")
    parser.add_argument("--blocks", type=int, default=None, help="DiT blocks per kind")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--no-eager", dest="eager", action="store_false")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--tiny", action="store_true", help="tiny models: a code-path check")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the rows")
    args = parser.parse_args(argv)
    args.arches = [a for a in args.arch.split(",") if a]
    unknown = set(args.arches) - set(UNET_ARCHES + DIT_ARCHES)
    if unknown:
        parser.error(f"unknown --arch {sorted(unknown)}; choose from sd15, sdxl, flux, sd35")
    args.regions = [int(r) for r in args.regions.split(",") if r]
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if not args.device.startswith("cuda") and not args.tiny:
        parser.error("real sizes need a CUDA device; use --tiny to check the code on a CPU")
    return args


@contextlib.contextmanager
def _fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    yield


def run_arch(arch: str, args: argparse.Namespace, device: torch.device) -> list[Row]:
    rows: list[Row] = []
    modes = [m for m, on in ((False, args.eager), (True, args.compile)) if on]
    if arch in UNET_ARCHES:
        models, cases = unet_cases(arch, args, device)
    else:
        model, cases = dit_cases(arch, args, device)
        models = [model]
    for compiled in modes:
        with _fresh_dynamo():
            if compiled:
                for m in models:
                    m.compile(backend=args.compile_backend)
            for case in cases:
                seconds, peak = measure(case, device, args.repeats)
                rows.append(Row(arch, case.name, compiled, seconds, peak))
                print(f"  {arch:<5} {'compiled' if compiled else 'eager':<8} {case.name:<12} "
                      f"{statistics.median(seconds):8.3f} s/image", flush=True)  # fmt: skip
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| arch | mode | config | s/image | × stock | peak MiB | mem × |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    stock = {(r.arch, r.compiled): r for r in rows if r.name == "stock"}
    for r in rows:
        ref = stock.get((r.arch, r.compiled))
        med = statistics.median(r.seconds)
        ratio = med / statistics.median(ref.seconds) if ref else float("nan")
        mib = "-" if r.peak_bytes is None else f"{r.peak_bytes / 2**20:.0f}"
        mem = (
            f"{r.peak_bytes / ref.peak_bytes:.3f}"
            if ref and r.peak_bytes and ref.peak_bytes
            else "-"
        )
        mode = "compiled" if r.compiled else "eager"
        lines.append(f"| {r.arch} | {mode} | {r.name} | {med:.3f} | {ratio:.3f} | {mib} | {mem} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}, {args.dtype}, {args.steps} steps per image")
    rows: list[Row] = []
    for arch in args.arches:
        rows += run_arch(arch, args, device)
    print()
    print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps([r.__dict__ for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
