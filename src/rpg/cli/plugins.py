"""``rpg plugins``: list planners and backbones and the distribution each came from."""

from __future__ import annotations

import argparse
from typing import Any

from rpg.plugins import Registry, backbone_registry, planner_registry, scorer_registry


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "plugins",
        help="list registered planners and backbones",
        description="List the planners and backbones registered by rpg and by installed plugins "
        "(entry-point group 'rpg').",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    del args
    registries: tuple[tuple[str, Registry[Any]], ...] = (
        ("planners", planner_registry()),
        ("backbones", backbone_registry()),
        ("scorers", scorer_registry()),
    )
    for title, registry in registries:
        entries = list(registry)
        print(f"{title}:")
        if not entries:
            print("  (none)")
        width = max((len(e.name) for e in entries), default=0)
        source_w = max((len(e.source) for e in entries), default=0)
        for e in entries:
            print(f"  {e.name:<{width}}  {e.source:<{source_w}}  {e.description}".rstrip())
    return 0
