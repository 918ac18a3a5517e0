"""``--planner auto``: use the best planner this machine can reach, without configuration.

The order: ``openai`` when an API key is set (``OPENAI_API_KEY``, or ``api_key=``) or a
``base_url`` is given; else ``ollama`` when a server answers a quick probe (``host=``,
``$OLLAMA_HOST`` or ``localhost:11434``); else the offline ``rules`` planner. The choice and
the reason are logged and kept on :class:`Selection`, and the plan records the planner that
made it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Any

from rpg.planners.base import Planner

__all__ = ["Selection", "select_planner"]

log = logging.getLogger("rpg.planners")

#: Seconds to wait for an Ollama server to answer before moving on.
PROBE_TIMEOUT = 0.5


@dataclass(frozen=True)
class Selection:
    """Which planner ``auto`` picked, why, and the options it will be made with."""

    name: str
    reason: str
    options: dict[str, Any]


def select_planner(
    *,
    model: str | None = None,
    base_url: str | None = None,
    host: str | None = None,
    api_key: str | None = None,
    probe_timeout: float = PROBE_TIMEOUT,
    **options: Any,
) -> Selection:
    """Decide which planner to use; see the module docstring for the order.

    ``model`` goes to the LLM planner that is picked (the rules planner has none); ``options``
    are passed on to it as well.
    """
    from rpg.planners.ollama import normalize_host, server_answers

    have_openai = importlib.util.find_spec("openai") is not None
    have_ollama = importlib.util.find_spec("ollama") is not None
    llm = {**options, **({"model": model} if model else {})}
    if api_key or base_url or os.environ.get("OPENAI_API_KEY"):
        why = "a base URL was given" if base_url else "an OpenAI API key is set"
        if have_openai:
            opts = {**llm, "base_url": base_url, "api_key": api_key}
            return Selection("openai", why, {k: v for k, v in opts.items() if v is not None})
        log.warning("%s but the openai package is not installed; skipping openai", why)
    where = normalize_host(host)
    if have_ollama and server_answers(where, timeout=probe_timeout):
        return Selection("ollama", f"an Ollama server answers at {where}", {**llm, "host": where})
    reason = "no OpenAI key is set and no Ollama server answers at " + where
    if not have_ollama:
        reason = "no OpenAI key is set and the ollama package is not installed"
    return Selection("rules", reason, {})


def create_auto_planner(*, cache: bool = True, **options: Any) -> Planner:
    """The ``auto`` factory: select, then build the chosen planner through the registry.

    ``cache`` applies to the LLM planners (the rules planner is instant and never cached).
    """
    from rpg.plugins import planner_registry

    selection = select_planner(**options)
    log.info("auto planner: using %s (%s)", selection.name, selection.reason)
    opts = dict(selection.options)
    if selection.name != "rules":
        opts["cache"] = cache
    planner: Planner = planner_registry().get(selection.name).target(**opts)
    return planner
