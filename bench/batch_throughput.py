"""Batch throughput: images per minute of the local engine and the Ray engine, same requests.

Renders the same ``--items`` requests (distinct prompts, rules planner) with the local engine
(one process, one loaded model) and with the Ray engine on 1, 2, … actors (``--workers``), each
into a fresh folder. *Render* time runs from the first item handed out to the last record
written (what ``BatchReport.seconds`` measures); *wall* time adds starting the actors and
loading their models, which a long batch pays once. On CPU every Ray actor gets an even share of
the Ray instance's CPUs (``--cpus``) as its torch threads, while the local engine uses torch's
default thread count, so on a small CPU machine more actors share the same cores; the numbers
that matter are on a GPU cluster (one GPU per actor), where actors scale with GPUs.

    python bench/batch_throughput.py                                  # tiny-sd, 16 items, CPU
    python bench/batch_throughput.py --items 64 --steps 20 --size 512x512 --model ./sd15 \\
        --device cuda --ray-address auto --workers 1,2,4
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from rpg.batch import BatchItem, BatchReport, expand_requests, run_batch
from rpg.batch_ray import ModelSpec

PROMPTS = [
    "a red cat on the left and a blue dog on the right",
    "a castle at the top and a lake at the bottom",
    "from left to right, an apple, a mug and a banana",
    "a lighthouse on a cliff",
    "a girl with a silver braid on the left, a man with blonde hair on the right",
    "a forest at the top, a river in the middle and stones at the bottom",
    "a bowl of soup",
    "a sailing boat on the left and a whale on the right",
]


def _items(count: int, steps: int, width: int, height: int, model: str) -> list[BatchItem]:
    lines = [
        (i + 1, {"prompt": f"{PROMPTS[i % len(PROMPTS)]}, view {i}", "seed": i})
        for i in range(count)
    ]
    defaults = {"steps": steps, "width": width, "height": height, "model": model}
    return expand_requests(lines, defaults=defaults)


def _row(engine: str, workers: int, report: BatchReport, wall: float) -> str:
    return (
        f"| {engine} | {workers} | {report.images} | {report.seconds:.1f} | "
        f"{report.images_per_minute:.1f} | {wall:.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--size", default="64x64", help="WxH")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--workers", default="1,2", help="Ray actor counts, e.g. 1,2,4")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs for Ray")
    parser.add_argument("--ray-address", help="an existing cluster (default: a local instance)")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    worker_counts = [int(v) for v in args.workers.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray

    spec = ModelSpec(model=args.model, device=args.device, dtype=args.dtype, planner="rules")
    items = _items(args.items, args.steps, width, height, args.model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rpg-bench-") as tmp:
        started = time.perf_counter()
        pipe = spec.load()
        report = run_batch(pipe, items, Path(tmp) / "local", progress=False)
        rows.append(_row("local", 1, report, time.perf_counter() - started))
        del pipe

        env = {k: v for k, v in os.environ.items() if k.startswith(("RPG_", "HF_"))}
        if args.ray_address:
            ray.init(address=args.ray_address, runtime_env={"env_vars": env}, log_to_driver=False)
        else:
            ray.init(
                address="local",
                num_cpus=args.cpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                runtime_env={"env_vars": env},
                log_to_driver=False,
            )
        try:
            for workers in worker_counts:
                started = time.perf_counter()
                report = run_batch(
                    spec,
                    items,
                    Path(tmp) / f"ray-{workers}",
                    progress=False,
                    engine="ray",
                    workers=workers,
                )
                rows.append(_row("ray", workers, report, time.perf_counter() - started))
        finally:
            ray.shutdown()

    print(
        f"# batch throughput: {args.model}, {args.items} items, {args.steps} steps, "
        f"{width}x{height}, {args.device} {args.dtype}; Ray CPUs {args.cpus}; "
        f"python {platform.python_version()}, ray {ray.__version__}, {os.cpu_count()} cores"
    )
    print("| engine | workers | images | render s | images/min | wall s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
