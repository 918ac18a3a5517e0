"""The ``rpg ui`` web app: a Starlette ASGI app over one loaded :class:`~rpg.orchestrator.RPG`.

The page (``static/``) is a small plain-JavaScript editor; everything it does goes through the
JSON API below to the same Python API as the CLI: ``RPG.plan``, ``RPG.generate`` with a
``callback_on_step_end``, :mod:`rpg.ui.edits` on :class:`~rpg.models.RegionPlan`, and
:mod:`rpg.metadata` for the PNGs. Renders are queued (:mod:`rpg.ui.jobs`), so several tabs share
one model. Every error a user can cause comes back as ``{"error": "..."}`` with status 422 (the
page shows it next to the field); nothing the page sends can stop the server.

API (paths relative to where the app is mounted):

=================================  =============================================================
``GET  /api/config``               model, native size, schedulers, planners, request defaults
``GET  /api/planner?name=N``       whether planner ``N`` can look at images (enables Refine)
``POST /api/plan``                 ``{prompt, planner}`` → recaption, entities and plan view
``POST /api/plan/check``           ``{plan}`` → plan view (after a drag or a field edit)
``POST /api/plan/edit``            ``{plan, edit, row, col}`` → plan view (split, merge, ...)
``POST /api/plan/text``            ``{split_ratio, prompts, base_prompt, base_ratio, plan}``
``POST /api/plan/layer``           ``{plan, edit, layer, box, mask}`` → plan view (canvas mode)
``POST /api/mask``                 raw PNG bytes → ``{mask}``, a layer mask for ``set_mask``
``POST /api/generate``             ``{request, plan}`` → queued job
``POST /api/refine``               ``{request, plan, rounds}`` → queued job
``GET  /api/jobs/{id}``            state, step/total, queue position, error, images
``POST /api/jobs/{id}/cancel``     cancel a queued or running job
``GET  /api/images/{name}``        a rendered PNG (plan and request in its ``rpg`` text chunk)
``POST /api/reopen``               raw PNG bytes → its request and plan view
=================================  =============================================================

The handlers live by concern in :mod:`rpg.ui.routes` (``plan``, ``render``, ``files``) over one
shared :class:`~rpg.ui.editor.Editor`; :mod:`rpg.ui.http` reads bodies and answers errors.

Safety (the app has no login): :mod:`rpg.ui.guard` serves only this server's own pages (Host and
Origin checked, JSON bodies only, sizes limited), :mod:`rpg.ui.bodies` validates every body (a
bad field is a 422 naming it, a text over the limit a 413), job ids and image names are random,
and :mod:`rpg.ui.planning` gives every planner call a time limit.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from rpg.ui.bodies import MAX_JSON_BYTES
from rpg.ui.editor import Editor
from rpg.ui.guard import Guard, OriginPolicy
from rpg.ui.http import exception_handlers

# Named here before the split into rpg.ui.routes and rpg.ui.masks; kept for callers and tests.
from rpg.ui.masks import MAX_MASK_CHARS as MAX_MASK_CHARS
from rpg.ui.masks import MAX_MASK_SIDE as MAX_MASK_SIDE
from rpg.ui.masks import MIN_MASK_SIDE as MIN_MASK_SIDE
from rpg.ui.routes.files import RAW_ROUTES, FileRoutes
from rpg.ui.routes.plan import PlanRoutes
from rpg.ui.routes.plan import can_review as can_review
from rpg.ui.routes.render import RenderRoutes

if TYPE_CHECKING:
    from rpg.orchestrator import RPG

__all__ = ["build_app"]

STATIC = Path(__file__).parent / "static"
#: Default time limit of one planner call (creating the planner included), in seconds.
DEFAULT_PLAN_TIMEOUT = 180.0


def build_app(
    pipe: RPG,
    *,
    output_dir: str | Path | None = None,
    planner: str | None = None,
    bind_host: str | None = None,
    allow_origins: Iterable[str] = (),
    plan_timeout: float = DEFAULT_PLAN_TIMEOUT,
) -> Starlette:
    """The plan editor as a Starlette ASGI app over ``pipe``; mount it anywhere.

    ``pipe`` is an :class:`rpg.RPG` (loaded once; renders are queued and run one at a time).
    Rendered PNGs go to ``output_dir`` (default: a temporary folder removed when the process
    exits). ``planner`` is the planner selected when the page opens (default: ``pipe``'s own).
    Serve it with any ASGI server (``uvicorn.run(app)``) or mount it:
    ``Starlette(routes=[Mount("/rpg", build_app(pipe))])``.

    The app answers only requests addressed to this computer by a loopback name or to
    ``bind_host`` (the address the server listens on), coming from its own pages or from one of
    ``allow_origins`` (``scheme://host[:port]``); see :mod:`rpg.ui.guard`. Each planner call
    may take ``plan_timeout`` seconds.
    """
    policy = OriginPolicy(bind_host=bind_host, allow_origins=tuple(allow_origins))
    holder, out = _output_folder(output_dir)
    editor = Editor(pipe, out, planner or pipe.planner.name, plan_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        editor.stop()

    app = Starlette(
        routes=_routes(editor),
        lifespan=lifespan,
        exception_handlers=exception_handlers(),
        middleware=[
            Middleware(Guard, policy=policy, default_limit=MAX_JSON_BYTES, raw_routes=RAW_ROUTES)
        ],
    )
    app.state.rpg = editor
    app.state.output_dir_holder = holder  # the temporary folder lives as long as the app
    return app


def _output_folder(output_dir: str | Path | None) -> tuple[Any, Path]:
    """The folder rendered PNGs go to, and the temporary folder to keep alive (if one)."""
    if output_dir is None:
        holder = tempfile.TemporaryDirectory(prefix="rpg-ui-")
        return holder, Path(holder.name)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    return None, out


async def _index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


def _routes(editor: Editor) -> list[BaseRoute]:
    """The page, its static files and the JSON API of the module docstring."""
    plan, render, files = PlanRoutes(editor), RenderRoutes(editor), FileRoutes(editor)
    return [
        Route("/", _index),
        Route("/api/config", plan.config),
        Route("/api/planner", plan.planner),
        Route("/api/plan", plan.plan, methods=["POST"]),
        Route("/api/plan/check", plan.check, methods=["POST"]),
        Route("/api/plan/edit", plan.edit, methods=["POST"]),
        Route("/api/plan/text", plan.text, methods=["POST"]),
        Route("/api/plan/layer", plan.layer, methods=["POST"]),
        Route("/api/mask", files.mask, methods=["POST"]),
        Route("/api/generate", render.generate, methods=["POST"]),
        Route("/api/refine", render.refine, methods=["POST"]),
        Route("/api/jobs/{job_id}", render.job),
        Route("/api/jobs/{job_id}/cancel", render.cancel, methods=["POST"]),
        Route("/api/images/{name}", files.image),
        Route("/api/reopen", files.reopen, methods=["POST"]),
        Route("/api/init-image", files.init_image, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
