"""Graphs, graph breaks, recompiles and host syncs of every backbone under ``torch.compile``.

For each tiny backbone (random weights, CPU), the denoiser (and the ControlNet model) is compiled
in one of the forms users write — ``module.compile()`` (``--form method``), ``pipe.unet =
torch.compile(pipe.unet)`` (``--form wrap``) or diffusers' ``compile_repeated_blocks()``
(``--form repeated``, where the model has repeated blocks) — with a counting backend that runs
the graphs eagerly, and the same regional request is rendered twice. Reported per backbone:

* ``graphs``: graphs dynamo compiled over both renders; every count is followed by the stock
  pipeline's (the whole prompt, same size, steps and compiled form) in parentheses;
* ``breaks``: dynamo's graph-break counter, and its most frequent reason;
* ``recompiles``: graphs compiled again for a frame that already had one (a guard failed), and
  ``late``: graphs compiled after the first denoising step of the first render (a later step or
  the second render compiling). Modules compiled with ``.compile()`` share one code object
  (``Module._call_impl``), so a second compiled module (a ControlNet, every repeated block of
  another shape) counts as a recompile for stock and rpg alike;
* ``syncs/step``: host-synchronising ops (``.item()``, ``float(t)``, ``torch.equal``,
  ``nonzero``, device-to-host copies) inside the denoiser's forward per step, eager, for the
  stock pipeline and for rpg (:class:`rpg.attention.diagnostics.HostSyncCounter`).

A failure (an exception in a render) is reported in the row instead of numbers.

    python bench/compile_report.py                       # every backbone, module.compile()
    python bench/compile_report.py --form wrap --only tiny-sd,tiny-flux
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rpg import GenerationRequest, RegionPlan
from rpg.attention.diagnostics import CompileCounter, HostSyncCounter, graph_breaks

BACKBONES = (
    "tiny-sd",
    "tiny-sdxl",
    "tiny-sd-controlnet",
    "tiny-flux",
    "tiny-sd3",
    "tiny-flux2-klein",
)
PROMPT = "a red cat on the left and a blue dog on the right"


def write_models(root: Path, names: tuple[str, ...]) -> None:
    from rpg.backbones.tiny import tiny_model
    from rpg.backbones.tiny.controlnet import write_tiny_controlnet

    for name in names:
        base = "tiny-sd" if name == "tiny-sd-controlnet" else name
        if not (root / base).exists():
            found = tiny_model(base)
            assert found is not None, base
            found.write(root / base)
    if "tiny-sd-controlnet" in names and not (root / "cn-sd").exists():
        write_tiny_controlnet(root / "cn-sd", sdxl=False, seed=0)


def load(root: Path, name: str) -> Any:
    from rpg import RPG

    if name == "tiny-sd-controlnet":
        pipe = RPG.from_pretrained(
            root / "tiny-sd", device="cpu", dtype="float32", controlnet=root / "cn-sd"
        )
    else:
        pipe = RPG.from_pretrained(root / name, device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    return pipe


def denoisers(pipe: Any) -> list[str]:
    names = ["transformer"] if hasattr(pipe, "transformer") else ["unet"]
    if getattr(pipe, "controlnet", None) is not None:
        names.append("controlnet")
    return names


def extra_inputs(name: str, size: int) -> dict[str, Any]:
    if name != "tiny-sd-controlnet":
        return {}
    from PIL import Image

    return {"image": Image.new("RGB", (size, size), (255, 255, 255))}


def request(args: argparse.Namespace) -> GenerationRequest:
    plan = RegionPlan.from_split_ratio(
        "1,1",
        ["a red cat", "a blue dog"],
        base_prompt=PROMPT if args.base else None,
        base_ratio=0.3 if args.base else 0.0,
    )
    return GenerationRequest(
        prompt=PROMPT,
        plan=plan,
        steps=args.steps,
        seed=1,
        width=args.size,
        height=args.size,
        options=family_options(args),
    )


def family_options(args: argparse.Namespace) -> dict[str, Any]:
    """The MM-DiT options that differ from their defaults (a UNet family takes none)."""
    options = {
        "image_attention": (args.image_attention, "global"),
        "regional_steps": (args.regional_steps, 1.0),
        "regional_blocks": (args.regional_blocks, 1),
        "true_cfg_scale": (args.true_cfg, 1.0),
    }
    return {k: v for k, (v, default) in options.items() if v != default}


def compile_denoisers(pipe: Any, form: str, backend: Callable[..., Any], fullgraph: bool) -> None:
    for attr in denoisers(pipe):
        module = getattr(pipe, attr)
        if form == "method":
            module.compile(backend=backend, fullgraph=fullgraph)
        elif form == "wrap":
            setattr(pipe, attr, torch.compile(module, backend=backend, fullgraph=fullgraph))
        elif getattr(module, "_repeated_blocks", None):
            module.compile_repeated_blocks(backend=backend, fullgraph=fullgraph)


def stock_call(rpg_pipe: Any, name: str, args: argparse.Namespace, **call: Any) -> None:
    """The stock pipeline on the whole prompt, same size, steps and seed."""
    rpg_pipe.pipe(
        prompt=PROMPT, height=args.size, width=args.size, num_inference_steps=args.steps,
        output_type="latent", generator=torch.Generator().manual_seed(1),
        **extra_inputs(name, args.size), **call,
    )  # fmt: skip


def compile_row(
    root: Path, name: str, args: argparse.Namespace, *, stock: bool = False
) -> dict[str, Any]:
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    rpg_pipe = load(root, name)
    counter = CompileCounter()
    compile_denoisers(rpg_pipe.pipe, args.form, counter, args.fullgraph)
    if args.form == "wrap":
        # the form diffusers' docs show: compile, assign back, then hand the pipeline to rpg
        from rpg import RPG

        rpg_pipe = RPG.from_pipeline(rpg_pipe.pipe)
        rpg_pipe.pipe.set_progress_bar_config(disable=True)
    req = request(args)
    row: dict[str, Any] = {"model": name}
    try:
        for render in range(2):
            counter.mark(f"r{render} s0")

            def on_step(
                pipe: Any, i: int, t: Any, kw: dict[str, Any], render: int = render
            ) -> dict[str, Any]:
                counter.mark(f"r{render} s{i + 1}")
                return {}

            if stock:
                stock_call(rpg_pipe, name, args, callback_on_step_end=on_step)
            else:
                rpg_pipe.generate(
                    req, output_type="latent", callback_on_step_end=on_step,
                    **extra_inputs(name, args.size),
                )  # fmt: skip
    except Exception as err:  # the report shows what failed
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:90]}"
    breaks = graph_breaks()
    row["graphs"] = len(counter.graphs)
    row["breaks"] = sum(breaks.values())
    row["top_break"] = breaks.most_common(1)[0][0][:60] if breaks else ""
    row["recompiles"] = counter.recompiles
    row["late"] = len(counter.graphs) - counter.compiled_in("r0 s0")
    return row


def sync_row(root: Path, name: str, args: argparse.Namespace) -> dict[str, float]:
    rpg_pipe = load(root, name)
    pipe = rpg_pipe.pipe
    modules = [getattr(pipe, a) for a in denoisers(pipe)]
    out: dict[str, float] = {}
    for label in ("stock", "rpg"):
        counters = [HostSyncCounter() for _ in modules]
        watches = [c.watch(m) for c, m in zip(counters, modules, strict=True)]
        for w in watches:
            w.__enter__()
        try:
            if label == "stock":
                stock_call(rpg_pipe, name, args)
            else:
                rpg_pipe.generate(
                    request(args), output_type="latent", **extra_inputs(name, args.size)
                )
        finally:
            for w in watches:
                w.__exit__(None, None, None)
        out[label] = sum(c.syncs for c in counters) / args.steps
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--form", choices=("method", "wrap", "repeated"), default="method")
    parser.add_argument("--only", default=",".join(BACKBONES))
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--no-base", dest="base", action="store_false")
    parser.add_argument("--fullgraph", action="store_true")
    parser.add_argument("--image-attention", choices=("global", "region"), default="global")
    parser.add_argument("--regional-steps", type=float, default=1.0)
    parser.add_argument("--regional-blocks", type=int, default=1)
    parser.add_argument(
        "--true-cfg", type=float, default=1.0, help="FLUX's true CFG scale (tiny-flux only)"
    )
    parser.add_argument("--no-syncs", dest="syncs", action="store_false")
    parser.add_argument("--cache", default=os.environ.get("RPG_BENCH_CACHE"))
    args = parser.parse_args()
    names = tuple(n for n in args.only.split(",") if n)
    unknown = set(names) - set(BACKBONES)
    if unknown:
        sys.exit(f"unknown backbones {sorted(unknown)}; choose from {', '.join(BACKBONES)}")
    root = Path(args.cache or tempfile.mkdtemp(prefix="rpg-compile-report-"))
    write_models(root, names)
    print(
        f"torch {torch.__version__}, form={args.form}, fullgraph={args.fullgraph}, "
        f"{args.size}x{args.size}, {args.steps} steps, base={args.base}, "
        f"image_attention={args.image_attention}, regional_steps={args.regional_steps}, "
        f"regional_blocks={args.regional_blocks}, two renders, backend=eager"
    )
    print(
        "| model | graphs (stock) | graph breaks (stock) | recompiles (stock) "
        "| late compiles (stock) | syncs/step stock | syncs/step rpg | first break / error |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        started = time.perf_counter()
        row = compile_row(root, name, args)
        ref = compile_row(root, name, args, stock=True)
        nan = float("nan")
        syncs = sync_row(root, name, args) if args.syncs else {"stock": nan, "rpg": nan}
        note = row.get("error") or row["top_break"]
        print(
            f"| {name} | {row['graphs']} ({ref['graphs']}) | {row['breaks']} ({ref['breaks']}) "
            f"| {row['recompiles']} ({ref['recompiles']}) | {row['late']} ({ref['late']}) "
            f"| {syncs['stock']:g} | {syncs['rpg']:g} | {note} |",
            flush=True,
        )
        del started


if __name__ == "__main__":
    main()
