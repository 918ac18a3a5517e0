"""How the package is put together: import circles, largest modules and functions, and the trip
a request makes through ``RPG.generate``.

    python bench/structure_report.py                 # all three, for tiny-sd and tiny-flux
    python bench/structure_report.py --json out.json # the same numbers as JSON

*Import circles* are the strongly connected components of the graph of ``rpg`` modules, where an
edge is an ``import`` run at some point (module level or inside a function), leaving out imports
under ``if TYPE_CHECKING:`` (they never run). A package import counts as an edge to the package's
``__init__``. A circle means neither module can be understood (or loaded) without the other.

*The trip* follows one ``RPG.generate`` call on a tiny model with ``sys.setprofile``: every call
from one ``rpg`` module into another is a move; the rooms are the modules entered; a *move back
up* is a call into a module that is already further up the call stack (the base class calling
down into a subclass that calls back up into the base, and so on).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "rpg").rglob("*.py"))}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = getattr(test, "id", None) or getattr(test, "attr", None)
            if name == "TYPE_CHECKING":
                for child in node.body:
                    for sub in ast.walk(child):
                        if hasattr(sub, "lineno"):
                            lines.add(sub.lineno)
    return lines


def import_graph(*, type_checking: bool = False) -> dict[str, set[str]]:
    """Module → the ``rpg`` modules it imports when it runs (``type_checking``: also those
    imported only for annotations)."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = set() if type_checking else _type_checking_lines(tree)
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [mod]
                # "from rpg.x import y" where y is a submodule
                targets += [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("rpg"):
                    graph[name].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm; components of more than one module (the circles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def package_edges_removed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without edges into package ``__init__`` modules that only re-export.

    ``import rpg.x`` runs ``rpg/__init__`` first; counting that edge would make every module
    that re-exports part of a circle with everything it re-exports, which says nothing.
    """
    mods = modules()
    pkgs = {m for m, p in mods.items() if p.name == "__init__.py"}
    return {m: {t for t in ts if t not in pkgs} for m, ts in graph.items()}


def sizes(limit: int = 12) -> dict[str, Any]:
    mods = modules()
    lines = {m: len(p.read_text().splitlines()) for m, p in mods.items()}
    funcs: list[tuple[int, str]] = []
    for m, p in mods.items():
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                funcs.append((length, f"{m}.{node.name}"))
    top_mods = sorted(lines.items(), key=lambda kv: -kv[1])[:limit]
    return {
        "modules_over_450": sum(1 for v in lines.values() if v > 450),
        "modules_over_400": sum(1 for v in lines.values() if v > 400),
        "largest_modules": top_mods,
        "largest_functions": [(name, n) for n, name in sorted(funcs, reverse=True)[:limit]],
    }


def trip(model: str) -> dict[str, Any]:
    """Follow one ``RPG.generate`` on ``model`` through the ``rpg`` modules."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import rpg
    from rpg.models import GenerationRequest, RegionPlan

    pipe = rpg.RPG.from_pretrained(model, device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    plan = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"], base_prompt="animals")
    request = GenerationRequest(prompt="animals", plan=plan, steps=1, seed=0, width=64, height=64)
    prefix = str(SRC / "rpg")
    stack: list[str] = []
    moves: list[tuple[str, str]] = []
    entered: Counter[str] = Counter()
    from_generate: Counter[str] = Counter()
    back_up = 0

    def module_of(frame: Any) -> str | None:
        filename = frame.f_code.co_filename
        if not filename.startswith(prefix):
            return None
        return module_name(Path(filename))

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal back_up
        if event == "call":
            mod = module_of(frame)
            if mod is None:
                stack.append("")
                return
            caller = next((m for m in reversed(stack) if m), None)
            if caller is not None and caller != mod:
                moves.append((caller, mod))
                entered[mod] += 1
                if caller == "rpg.orchestrator":
                    from_generate[mod] += 1
                if mod in stack:
                    back_up += 1
            stack.append(mod)
        elif event == "return" and stack:
            stack.pop()

    pipe.generate(request)  # warm: lazy imports and caches out of the way
    sys.setprofile(profile)
    try:
        pipe.generate(request)
    finally:
        sys.setprofile(None)
    return {
        "model": model,
        "moves": len(moves),
        "moves_back_up": back_up,
        "rooms": dict(entered.most_common()),
        "from_generate": dict(from_generate.most_common()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--models", default="tiny-sd,tiny-flux")
    args = parser.parse_args()
    graph = import_graph()
    report: dict[str, Any] = {
        "import_circles": strongly_connected(package_edges_removed(graph)),
        "import_circles_with_type_checking": strongly_connected(
            package_edges_removed(import_graph(type_checking=True))
        ),
        **sizes(),
        "trips": [trip(m) for m in args.models.split(",") if m],
    }
    print(f"import circles: {len(report['import_circles'])}")
    for circle in report["import_circles"]:
        print("  " + " <-> ".join(m.removeprefix("rpg.") for m in circle))
    circles = report["import_circles_with_type_checking"]
    print(f"import circles counting TYPE_CHECKING imports: {len(circles)}")
    for circle in circles:
        print("  " + " <-> ".join(m.removeprefix("rpg.") for m in circle))
    print(
        f"modules over 450 lines: {report['modules_over_450']} (over 400: "
        f"{report['modules_over_400']})"
    )
    for name, n in report["largest_modules"]:
        print(f"  {n:5d}  {name}")
    print("largest functions:")
    for name, n in report["largest_functions"]:
        print(f"  {n:5d}  {name}")
    for t in report["trips"]:
        print(
            f"RPG.generate on {t['model']}: {t['moves']} moves between modules, "
            f"{t['moves_back_up']} back up into a module already on the stack"
        )
        for mod, n in t["rooms"].items():
            print(f"  {n:4d}x {mod}")
        print(
            "  entered straight from rpg.orchestrator: "
            + ", ".join(f"{mod.removeprefix('rpg.')} {n}x" for mod, n in t["from_generate"].items())
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
