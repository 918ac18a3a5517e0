"""Batch throughput: images per minute of the local engine and the Ray engine, same requests.

Renders the same ``--items`` requests (distinct prompts, rules planner, one JSONL file) with the
local engine (one process, one loaded model) and with the Ray engine on 1, 2, … actors
(``--workers``; Ray Data reads the file, a planner actor plans, render actors render), each into a
fresh folder, in ``--repeats`` interleaved rounds (every round runs every configuration once), and
prints the median. *Render* time runs from the first record awaited to the last record written
(what ``BatchReport.seconds`` measures; for Ray it includes starting the planner and render actors
and loading their models, which happen once the pipeline runs); *wall* time adds reading the file
and counting what is left (for the local engine: loading its model once), which a long batch pays
once. On CPU every Ray actor gets an even share of the Ray instance's CPUs (``--cpus``) as its
torch threads, while the local engine uses torch's thread count (``--local-threads``, default
torch's own); the numbers that matter are on a GPU cluster (one GPU per actor).

    python bench/batch_throughput.py                                  # tiny-sd, 16 items, CPU
    python bench/batch_throughput.py --items 64 --steps 20 --size 512x512 --model ./sd15 \\
        --device cuda --ray-address auto --workers 1,2,4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from rpg.batch import BatchReport, expand_requests, read_requests, run_batch
from rpg.batch_ray import ModelSpec, run_ray_batch

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


def _write_requests(path: Path, count: int) -> Path:
    lines = [
        json.dumps({"prompt": f"{PROMPTS[i % len(PROMPTS)]}, view {i}", "seed": i})
        for i in range(count)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _row(engine: str, workers: int, runs: list[tuple[BatchReport, float]]) -> str:
    images = runs[0][0].images
    render = statistics.median(report.seconds for report, _ in runs)
    wall = statistics.median(wall for _, wall in runs)
    every = ", ".join(f"{60 * report.images / report.seconds:.0f}" for report, _ in runs)
    return (
        f"| {engine} | {workers} | {images} | {render:.1f} | {60 * images / render:.1f} | "
        f"{every} | {wall:.1f} |"
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
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--local-threads", type=int, help="torch threads of the local engine")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    worker_counts = [int(v) for v in args.workers.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import ray

    spec = ModelSpec(model=args.model, device=args.device, dtype=args.dtype, planner="rules")
    defaults = {"steps": args.steps, "width": width, "height": height, "model": args.model}
    runs: dict[tuple[str, int], list[tuple[BatchReport, float]]] = {}
    if args.local_threads:
        torch.set_num_threads(args.local_threads)
    with tempfile.TemporaryDirectory(prefix="rpg-bench-") as tmp:
        requests = _write_requests(Path(tmp) / "requests.jsonl", args.items)
        items = expand_requests(read_requests(requests), defaults=defaults)
        started = time.perf_counter()
        pipe = spec.load()
        load_seconds = time.perf_counter() - started

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
            for round_ in range(args.repeats):
                out = Path(tmp) / f"round-{round_}"
                report = run_batch(pipe, items, out / "local", progress=False)
                runs.setdefault(("local", 1), []).append((report, report.seconds + load_seconds))
                for workers in worker_counts:
                    started = time.perf_counter()
                    report = run_ray_batch(
                        spec, requests, out / f"ray-{workers}", defaults=defaults,
                        progress=False, workers=workers,
                    )  # fmt: skip
                    wall = time.perf_counter() - started
                    runs.setdefault(("ray", workers), []).append((report, wall))
        finally:
            ray.shutdown()

    print(
        f"# batch throughput: {args.model}, {args.items} items, {args.steps} steps, "
        f"{width}x{height}, {args.device} {args.dtype}; Ray CPUs {args.cpus}, local torch "
        f"threads {torch.get_num_threads()}; median of {args.repeats} interleaved rounds; "
        f"python {platform.python_version()}, ray {ray.__version__}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("| engine | workers | images | render s | images/min | images/min each round | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (engine, workers), done in runs.items():
        print(_row(engine, workers, done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
