"""``rpg ui``: a plan editor in the browser over one loaded :class:`rpg.RPG`.

:func:`build_app` returns a Starlette ASGI app (install with ``pip install 'rpg-diffusion[ui]'``)
that ``rpg ui`` serves with uvicorn, and that any ASGI application can mount::

    import rpg, uvicorn
    from rpg.ui import build_app

    pipe = rpg.RPG.from_pretrained("tiny-sd", device="cpu")
    uvicorn.run(build_app(pipe), host="127.0.0.1", port=7860)

The plan edits the page offers are plain functions in :mod:`rpg.ui.edits`, and the render queue
shared by all tabs is :mod:`rpg.ui.jobs`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpg.errors import ConfigurationError

if TYPE_CHECKING:
    from rpg.orchestrator import RPG

__all__ = ["build_app"]


def build_app(
    pipe: RPG,
    *,
    output_dir: str | Path | None = None,
    planner: str | None = None,
    **options: Any,
) -> Any:
    """The plan editor as an ASGI app; see :func:`rpg.ui.app.build_app`.

    ``options`` (``bind_host``, ``allow_origins``, ``plan_timeout``) go to it unchanged.
    """
    try:
        from rpg.ui.app import build_app as build
    except ModuleNotFoundError as exc:
        if exc.name not in ("starlette", "anyio"):
            raise
        raise ConfigurationError(
            "the web UI needs Starlette: pip install 'rpg-diffusion[ui]'"
        ) from None
    return build(pipe, output_dir=output_dir, planner=planner, **options)
