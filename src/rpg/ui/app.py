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
``POST /api/generate``             ``{request, plan}`` → queued job
``POST /api/refine``               ``{request, plan, rounds}`` → queued job
``GET  /api/jobs/{id}``            state, step/total, queue position, error, images
``POST /api/jobs/{id}/cancel``     cancel a queued or running job
``GET  /api/images/{name}``        a rendered PNG (plan and request in its ``rpg`` text chunk)
``POST /api/reopen``               raw PNG bytes → its request and plan view
=================================  =============================================================
"""

from __future__ import annotations

import contextlib
import logging
import re
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rpg.backbones.schedulers import DEFAULT_SCHEDULER, SCHEDULERS, check_scheduler
from rpg.cli import format_error
from rpg.errors import RPGError
from rpg.metadata import MetadataError, load_request
from rpg.models import GenerationRequest, RegionPlan
from rpg.ui.edits import PlanEditError, apply_edit, plan_from_text, plan_view
from rpg.ui.jobs import Job, JobQueue

if TYPE_CHECKING:
    from rpg.orchestrator import RPG

__all__ = ["build_app"]

log = logging.getLogger("rpg.ui")

STATIC = Path(__file__).parent / "static"
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9_-]+\.png$")
#: Largest PNG /api/reopen accepts (a 2048² RGBA PNG with embedded control images fits).
MAX_UPLOAD_BYTES = 64 * 1024 * 1024


class UserError(RPGError, ValueError):
    """Bad input from the page; answered with 422 and shown next to ``field``."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _fail(exc: BaseException, field: str | None = None) -> JSONResponse:
    return JSONResponse({"error": format_error(exc), "field": field}, status_code=422)


async def _json(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise UserError("the request body is not JSON") from None
    if not isinstance(data, dict):
        raise UserError("the request body must be a JSON object")
    return data


def _plan(data: Any, field: str = "plan") -> RegionPlan:
    if not isinstance(data, dict):
        raise UserError("no plan yet: press Plan, or type a split ratio and prompts", field)
    try:
        return RegionPlan.model_validate(data)
    except ValidationError as exc:
        raise UserError(format_error(exc), field) from None


def _planner_info() -> list[dict[str, str]]:
    from rpg.plugins import planner_registry

    return [{"name": e.name, "description": e.description} for e in planner_registry()]


def can_review(pipe: RPG, name: str | None) -> tuple[bool, str]:
    """Whether the planner ``name`` (default: ``pipe``'s) can look at images, and why not."""
    from rpg.planners.feedback import as_multimodal

    try:
        as_multimodal(pipe.get_planner(name or None))
    except Exception as exc:  # a planner that cannot even be created cannot review either
        return False, format_error(exc)
    return True, ""


class _App:
    """The handlers, holding the pipeline, the job queue and the output folder."""

    def __init__(self, pipe: RPG, output_dir: Path, default_planner: str | None) -> None:
        self.pipe = pipe
        self.output_dir = output_dir
        self.default_planner = default_planner
        self.jobs = JobQueue(format_error)
        self.plan_lock = threading.Lock()

    # ------------------------------------------------------------------ planning

    async def config(self, request: Request) -> Response:
        width, height = self.pipe.backbone.native_size
        fields = GenerationRequest.model_fields
        return JSONResponse(
            {
                "model": self.pipe.model,
                "width": width,
                "height": height,
                "schedulers": [
                    {"name": name, "description": desc} for name, (_, _, desc) in SCHEDULERS.items()
                ],
                "scheduler": DEFAULT_SCHEDULER,
                "planners": _planner_info(),
                "planner": self.default_planner,
                "steps": fields["steps"].default,
                "guidance_scale": self.pipe.backbone.default_guidance,
                "uses_guidance": self.pipe.backbone.uses_guidance(
                    self.pipe.backbone.default_guidance
                ),
            }
        )

    async def planner(self, request: Request) -> Response:
        name = request.query_params.get("name") or None
        ok, reason = await run_in_threadpool(self._can_review, name)
        return JSONResponse({"name": name, "can_review": ok, "reason": reason})

    def _can_review(self, name: str | None) -> tuple[bool, str]:
        with self.plan_lock:  # planners are created on first use, in RPG's own dict
            return can_review(self.pipe, name)

    def _plan_prompt(self, prompt: str, planner: str | None) -> dict[str, Any]:
        with self.plan_lock:
            result = self.pipe.plan(prompt, planner=planner)
        return {
            "recaption": result.recaption.recaption,
            "entities": [e.model_dump(mode="json") for e in result.recaption.entities],
            "planner": result.planner,
            "seconds": result.seconds,
            "view": plan_view(result.plan),
        }

    async def plan(self, request: Request) -> Response:
        data = await _json(request)
        prompt = str(data.get("prompt") or "")
        if not prompt.strip():
            raise UserError("the prompt is empty; describe the image to generate", "prompt")
        planner = data.get("planner") or None
        try:
            out = await run_in_threadpool(self._plan_prompt, prompt, planner)
        except (RPGError, ValueError) as exc:
            return _fail(exc, "prompt")
        return JSONResponse(out)

    async def check(self, request: Request) -> Response:
        data = await _json(request)
        return JSONResponse(plan_view(_plan(data.get("plan"))))

    async def edit(self, request: Request) -> Response:
        data = await _json(request)
        plan = _plan(data.get("plan"))
        try:
            row, col = int(data.get("row", 0)), int(data.get("col", 0))
            return JSONResponse(plan_view(apply_edit(plan, str(data.get("edit")), row, col)))
        except (PlanEditError, ValueError, TypeError) as exc:
            return _fail(exc, "edit")

    async def text(self, request: Request) -> Response:
        data = await _json(request)
        previous = data.get("plan")
        try:
            plan = plan_from_text(
                str(data.get("split_ratio") or ""),
                str(data.get("prompts") or ""),
                base_prompt=str(data.get("base_prompt") or "") or None,
                base_ratio=data.get("base_ratio"),
                previous=_plan(previous) if isinstance(previous, dict) else None,
            )
        except (PlanEditError, UserError) as exc:
            return _fail(exc, "text")
        return JSONResponse(plan_view(plan))

    # ------------------------------------------------------------------ rendering

    def _request(self, data: dict[str, Any]) -> GenerationRequest:
        fields = data.get("request")
        if not isinstance(fields, dict):
            raise UserError("the request has no settings", "request")
        fields = {k: v for k, v in fields.items() if v not in (None, "")}
        plan = data.get("plan")
        fields["plan"] = _plan(plan) if plan is not None else None
        fields.setdefault("model", self.pipe.model)
        try:
            request = GenerationRequest.model_validate(fields)
            if request.scheduler is not None:  # None: the model's own default
                check_scheduler(request.scheduler)
        except (ValidationError, RPGError) as exc:
            raise UserError(format_error(exc), "request") from None
        return request

    def _save(self, job: Job, result: Any, prefix: str = "") -> list[dict[str, Any]]:
        images = []
        seed = result.request.seed
        for i in range(len(result.images)):
            name = f"{job.id}{prefix}-{i}.png"
            result.save(self.output_dir / name, index=i)
            images.append({"url": f"api/images/{name}", "seed": seed + i, "name": name})
        return images

    def _generate(self, request: GenerationRequest, job: Job) -> dict[str, Any]:
        job.total = request.steps
        result = self.pipe.generate(request, callback_on_step_end=job.step_callback)
        return {"images": self._save(job, result), "view": plan_view(result.plan)}

    def _refine(self, request: GenerationRequest, rounds: int, job: Job) -> dict[str, Any]:
        job.total = request.steps
        images: list[dict[str, Any]] = []
        critiques: list[str] = []

        def on_round(done: Any) -> None:
            images.extend(self._save(job, done.result, prefix=f"-r{done.index}"))
            if done.critique:
                critiques.append(f"round {done.index}: {done.critique}")
            job.message = f"round {done.index} rendered"

        out = self.pipe.refine(
            request,
            rounds=rounds,
            planner=request.planner,
            on_round=on_round,
            callback_on_step_end=job.step_callback,
        )
        return {"images": images, "view": plan_view(out.plan), "critiques": critiques}

    async def generate(self, request: Request) -> Response:
        data = await _json(request)
        req = self._request(data)
        job = self.jobs.submit(lambda job: self._generate(req, job))
        return JSONResponse(self._status(job))

    async def refine(self, request: Request) -> Response:
        data = await _json(request)
        req = self._request(data)
        try:
            rounds = int(data.get("rounds", 1))
        except (TypeError, ValueError):
            raise UserError("rounds must be a whole number", "rounds") from None
        ok, reason = await run_in_threadpool(self._can_review, req.planner)
        if not ok:
            raise UserError(reason, "refine")
        job = self.jobs.submit(lambda job: self._refine(req, rounds, job))
        return JSONResponse(self._status(job))

    def _status(self, job: Job) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": job.id,
            "state": job.state,
            "message": job.message,
            "step": job.step,
            "total": job.total,
            "error": job.error,
        }
        if job.state == "queued":
            ahead = self.jobs.position(job)
            out["position"] = ahead
            out["message"] = f"queued: {ahead} job{'s' if ahead != 1 else ''} ahead"
        if job.state == "done" and job.result is not None:
            out.update(job.result)
        return out

    async def job(self, request: Request) -> Response:
        job = self.jobs.get(request.path_params["job_id"])
        if job is None:
            return JSONResponse({"error": "no such job (the server was restarted?)"}, 404)
        return JSONResponse(self._status(job))

    async def cancel(self, request: Request) -> Response:
        job = self.jobs.cancel(request.path_params["job_id"])
        if job is None:
            return JSONResponse({"error": "no such job"}, 404)
        return JSONResponse(self._status(job))

    async def image(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = self.output_dir / name
        if not _IMAGE_NAME.match(name) or not path.is_file():
            return JSONResponse({"error": f"no image {name!r}"}, 404)
        return FileResponse(path, media_type="image/png", filename=f"rpg-{name}")

    # ------------------------------------------------------------------ reopening

    async def reopen(self, request: Request) -> Response:
        body = await request.body()
        # The page sends the file's name URL-encoded (headers are Latin-1 only).
        filename = Path(unquote(request.headers.get("x-filename") or "image.png")).name
        if not body:
            raise UserError("the file is empty", "reopen")
        if len(body) > MAX_UPLOAD_BYTES:
            raise UserError(f"{filename} is larger than {MAX_UPLOAD_BYTES >> 20} MiB", "reopen")
        with tempfile.TemporaryDirectory(dir=self.output_dir) as tmp:
            path = Path(tmp) / "upload.png"
            path.write_bytes(body)
            try:
                req = load_request(path)
            except MetadataError as exc:
                message = str(exc).replace(str(path), filename)
                raise UserError(message, "reopen") from None
            except ValidationError as exc:
                raise UserError(f"{filename}: {format_error(exc)}", "reopen") from None
        fields = req.model_dump(mode="json", exclude={"plan"})
        view = plan_view(req.plan) if req.plan is not None else None
        return JSONResponse({"request": fields, "view": view, "filename": filename})


async def _user_error(request: Request, exc: Exception) -> Response:
    return _fail(exc, getattr(exc, "field", None))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("rpg ui: unexpected error on %s", request.url.path, exc_info=exc)
    return JSONResponse(
        {"error": f"internal error ({type(exc).__name__}: {format_error(exc)}); see the log"},
        status_code=500,
    )


def build_app(
    pipe: RPG,
    *,
    output_dir: str | Path | None = None,
    planner: str | None = None,
) -> Starlette:
    """The plan editor as a Starlette ASGI app over ``pipe``; mount it anywhere.

    ``pipe`` is an :class:`rpg.RPG` (loaded once; renders are queued and run one at a time).
    Rendered PNGs go to ``output_dir`` (default: a temporary folder removed when the process
    exits). ``planner`` is the planner selected when the page opens (default: ``pipe``'s own).
    Serve it with any ASGI server (``uvicorn.run(app)``) or mount it:
    ``Starlette(routes=[Mount("/rpg", build_app(pipe))])``.
    """
    if output_dir is None:
        holder = tempfile.TemporaryDirectory(prefix="rpg-ui-")
        out = Path(holder.name)
    else:
        holder = None
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
    handlers = _App(pipe, out, planner or pipe.planner.name)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        handlers.jobs.close()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    routes = [
        Route("/", index),
        Route("/api/config", handlers.config),
        Route("/api/planner", handlers.planner),
        Route("/api/plan", handlers.plan, methods=["POST"]),
        Route("/api/plan/check", handlers.check, methods=["POST"]),
        Route("/api/plan/edit", handlers.edit, methods=["POST"]),
        Route("/api/plan/text", handlers.text, methods=["POST"]),
        Route("/api/generate", handlers.generate, methods=["POST"]),
        Route("/api/refine", handlers.refine, methods=["POST"]),
        Route("/api/jobs/{job_id}", handlers.job),
        Route("/api/jobs/{job_id}/cancel", handlers.cancel, methods=["POST"]),
        Route("/api/images/{name}", handlers.image),
        Route("/api/reopen", handlers.reopen, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={UserError: _user_error, Exception: _server_error},
    )
    app.state.rpg = handlers
    app.state.output_dir_holder = holder  # the temporary folder lives as long as the app
    return app
