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

Safety (the app has no login): :mod:`rpg.ui.guard` serves only this server's own pages (Host and
Origin checked, JSON bodies only, sizes limited), :mod:`rpg.ui.bodies` validates every body (a
bad field is a 422 naming it, a text over the limit a 413), job ids and image names are random,
and :mod:`rpg.ui.planning` gives every planner call a time limit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import tempfile
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from rpg.backbones.schedulers import check_scheduler
from rpg.cli import format_error
from rpg.errors import RPGError
from rpg.metadata import MetadataError, load_request, read_init_image
from rpg.models import MAX_PLAN_JSON_BYTES, GenerationRequest, LayerMask, RegionPlan
from rpg.pydantic_errors import problems
from rpg.stopping import stop_checks
from rpg.ui.bodies import (
    MAX_JSON_BYTES,
    MAX_MASK_UPLOAD_BYTES,
    MAX_UPLOAD_BYTES,
    CancelBody,
    EditBody,
    LayerEditBody,
    PlanBody,
    PlanCheckBody,
    PlanTextBody,
    RefineBody,
    RenderBody,
    TextTooLong,
    check_text_sizes,
)
from rpg.ui.edits import (
    PlanEditError,
    add_layer,
    apply_edit,
    apply_layer_edit,
    plan_from_text,
    plan_view,
)
from rpg.ui.family_options import check_options, option_controls, scheduler_choices
from rpg.ui.guard import BodyTooLarge, Guard, OriginPolicy, read_body
from rpg.ui.init_images import InitImageError, InitImages
from rpg.ui.jobs import Job, JobQueue
from rpg.ui.planning import PlanningBusy, PlanningGate, PlanningTimeout, TimedReviewer

if TYPE_CHECKING:
    from rpg.orchestrator import RPG

__all__ = ["build_app"]

log = logging.getLogger("rpg.ui")

STATIC = Path(__file__).parent / "static"
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9_-]+\.png$")
_PNG_TYPES: tuple[str, ...] = ("image/png", "application/octet-stream")
_REOPEN_TOO_LARGE = "the file is larger than {limit}, the most a PNG to reopen may have"
_MASK_TOO_LARGE = "the file is larger than {limit}, the most a mask image may have"
#: Masks are kept at most this many pixels on their long side: finer than any latent or patch
#: grid they are resampled to (128 at 1024 px), and small enough to travel in the plan.
MAX_MASK_SIDE = 512
#: Longest base64 text of one mask: eight detailed masks still fit a plan
#: (:data:`rpg.models.MAX_PLAN_JSON_BYTES`). A simple shape at 512 px takes a few KiB.
MAX_MASK_CHARS = MAX_PLAN_JSON_BYTES // 8
#: Smallest side a detailed mask is shrunk to (any 8-bit picture this size fits the limit).
MIN_MASK_SIDE = 64
_INIT_TYPES: tuple[str, ...] = ("image/png", "image/jpeg", "image/webp", "application/octet-stream")
_INIT_TOO_LARGE = "the picture is larger than {limit}, the most an init image may have"
#: Default time limit of one planner call (creating the planner included), in seconds.
DEFAULT_PLAN_TIMEOUT = 180.0

B = TypeVar("B", bound=BaseModel)


class UserError(RPGError, ValueError):
    """Bad input from the page; answered with 422 and shown next to ``field``."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidBody(UserError):
    """A request body that its model refused; the message names every bad field."""

    def __init__(self, exc: ValidationError, field: str | None, prefix: str = "") -> None:
        parts = []
        fields = []
        for problem in problems(exc, lower=True):
            path = problem.where("the body", prefix=(prefix,))
            parts.append(f"{path}: {problem.message}")
            fields.append(path)
        super().__init__("; ".join(parts), field)
        self.fields = list(dict.fromkeys(fields))


def _fail(exc: BaseException, field: str | None = None, status: int = 422) -> JSONResponse:
    body: dict[str, Any] = {"error": format_error(exc), "field": field}
    if isinstance(exc, InvalidBody):
        body["fields"] = exc.fields
    elif isinstance(exc, TextTooLong):
        body["fields"] = [exc.field]
    return JSONResponse(body, status_code=status)


async def _body(request: Request, model: type[B], field: str | None) -> B:
    """The request's JSON body, size-checked and validated by ``model``.

    ``field`` is the part of the page an error is shown next to.
    """
    raw = await read_body(request, MAX_JSON_BYTES)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise UserError("the request body is not JSON", field) from None
    if not isinstance(data, dict):
        raise UserError("the request body must be a JSON object", field)
    try:
        check_text_sizes(data)
    except TextTooLong:
        raise
    except ValueError as exc:
        raise UserError(str(exc), field) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidBody(exc, field) from None


def _need_plan(plan: RegionPlan | None, field: str = "plan") -> RegionPlan:
    if plan is None:
        raise UserError("no plan yet: press Plan, or type a split ratio and prompts", field)
    return plan


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

    def __init__(
        self, pipe: RPG, output_dir: Path, default_planner: str | None, plan_timeout: float
    ) -> None:
        self.pipe = pipe
        self.output_dir = output_dir
        self.default_planner = default_planner
        self.jobs = JobQueue(format_error)
        # Planners are created on first use in RPG's own dict and may not be thread-safe:
        # one call at a time, each with a time limit that also bounds the wait for the gate.
        self.planning = PlanningGate(plan_timeout)
        self._images_lock = threading.Lock()
        self._images: set[str] = set()  # only the PNGs this app wrote are served
        self.init_images = InitImages()  # img2img uploads, by id (never by path)

    def stop(self) -> None:
        """The server is stopping: cancel the renders and answer requests waiting on a planner."""
        self.jobs.close()
        self.planning.close()

    # ------------------------------------------------------------------ planning

    async def config(self, request: Request) -> Response:
        width, height = self.pipe.backbone.native_size
        fields = GenerationRequest.model_fields
        return JSONResponse(
            {
                "model": self.pipe.model,
                "width": width,
                "height": height,
                "schedulers": scheduler_choices(self.pipe.backbone),
                "scheduler": self.pipe.backbone.request_scheduler(),
                "planners": _planner_info(),
                "planner": self.default_planner,
                "steps": fields["steps"].default,
                "guidance_scale": self.pipe.backbone.default_guidance,
                "uses_guidance": self.pipe.backbone.uses_guidance(
                    self.pipe.backbone.default_guidance
                ),
                "options": option_controls(self.pipe.backbone),
            }
        )

    async def planner(self, request: Request) -> Response:
        name = request.query_params.get("name") or None
        ok, reason = await self.planning.run_async(lambda: can_review(self.pipe, name))
        return JSONResponse({"name": name, "can_review": ok, "reason": reason})

    def _plan_prompt(self, prompt: str, planner: str | None) -> dict[str, Any]:
        result = self.pipe.plan(prompt, planner=planner)
        return {
            "recaption": result.recaption.recaption,
            "entities": [e.model_dump(mode="json") for e in result.recaption.entities],
            "planner": result.planner,
            "seconds": result.seconds,
            "view": self._view(result.plan),
        }

    async def plan(self, request: Request) -> Response:
        body = await _body(request, PlanBody, "prompt")
        if not body.prompt.strip():
            raise UserError("the prompt is empty; describe the image to generate", "prompt")
        try:
            out = await self.planning.run_async(
                lambda: self._plan_prompt(body.prompt, body.planner or None)
            )
        except (PlanningTimeout, PlanningBusy):
            raise
        except (RPGError, ValueError) as exc:
            return _fail(exc, "prompt")
        return JSONResponse(out)

    def _view(
        self, plan: RegionPlan, width: int | None = None, height: int | None = None
    ) -> dict[str, Any]:
        """The plan view, warning about layers that paint nothing at the size to render."""
        native_w, native_h = self.pipe.backbone.native_size
        size = (width or native_w, height or native_h)
        return plan_view(plan, size, self.pipe.backbone.latent_factor)

    async def check(self, request: Request) -> Response:
        body = await _body(request, PlanCheckBody, "plan")
        return JSONResponse(self._view(_need_plan(body.plan), body.width, body.height))

    async def edit(self, request: Request) -> Response:
        body = await _body(request, EditBody, "edit")
        plan = _need_plan(body.plan)
        try:
            return JSONResponse(plan_view(apply_edit(plan, body.edit, body.row, body.col)))
        except (PlanEditError, ValueError) as exc:
            return _fail(exc, "edit")

    async def text(self, request: Request) -> Response:
        body = await _body(request, PlanTextBody, "text")
        try:
            plan = plan_from_text(
                body.split_ratio,
                body.prompts,
                base_prompt=body.base_prompt or None,
                base_ratio=body.base_ratio,
                previous=body.plan,
            )
        except PlanEditError as exc:
            return _fail(exc, "text")
        return JSONResponse(plan_view(plan))

    async def layer(self, request: Request) -> Response:
        body = await _body(request, LayerEditBody, "layer")
        try:
            if body.plan is None and body.edit == "add_layer" and body.box is not None:
                plan = add_layer(None, body.box, base_prompt=body.base_prompt)
            else:
                plan = apply_layer_edit(
                    _need_plan(body.plan), body.edit, body.layer, box=body.box, mask=body.mask
                )
            return JSONResponse(self._view(plan, body.width, body.height))
        except (PlanEditError, ValueError) as exc:
            return _fail(exc, "layer")

    async def mask(self, request: Request) -> Response:
        body = await read_body(request, MAX_MASK_UPLOAD_BYTES, _MASK_TOO_LARGE)
        filename = Path(unquote(request.headers.get("x-filename") or "mask.png")).name
        if not body:
            raise UserError("the mask file is empty", "mask")
        return JSONResponse({"mask": _read_mask(body, filename).model_dump(mode="json")})

    # ------------------------------------------------------------------ rendering

    def _request(self, body: RenderBody) -> GenerationRequest:
        fields = {k: v for k, v in body.request.items() if v not in (None, "")}
        if fields.keys() & {"init_image", "init_image_sha256"}:
            # a path would make the server open (and embed in a PNG it serves) any picture it
            # can read; the editor has no init-image upload yet
            raise UserError(
                "the editor takes an init image as an upload (init_image_id from "
                "POST /api/init-image), not a path",
                "request",
            )
        fields["plan"] = body.plan
        fields.setdefault("model", self.pipe.model)
        try:
            request = GenerationRequest.model_validate(fields)
        except ValidationError as exc:
            raise InvalidBody(exc, "request", prefix="request") from None
        if request.scheduler is not None:  # None: the model's own default
            try:
                check_scheduler(request.scheduler)
            except RPGError as exc:
                raise UserError(format_error(exc), "request") from None
        try:
            check_options(self.pipe.backbone, request.options)
        except RPGError as exc:
            raise UserError(format_error(exc), "request") from None
        return request

    def _save(self, job: Job, result: Any, prefix: str = "") -> list[dict[str, Any]]:
        images = []
        seed = result.request.seed
        for i in range(len(result.images)):
            name = f"{job.id}{prefix}-{i}.png"
            result.save(self.output_dir / name, index=i)
            with self._images_lock:
                self._images.add(name)
            images.append({"url": f"api/images/{name}", "seed": seed + i, "name": name})
        return images

    def _plan_first(self, request: GenerationRequest, job: Job) -> None:
        """Plan within the time limit, so a hung planner fails this job and not the queue.

        ``RPG.plan`` remembers the answer, so ``RPG.generate`` then reuses it.
        """
        if request.effective_plan() is None:
            job.message = "planning"
            self.planning.run(lambda: self.pipe.plan(request.prompt, planner=request.planner))

    def _init_image(self, body: RenderBody) -> Any:
        """The uploaded picture a render names (``None``: render from noise)."""
        if body.init_image_id is None:
            return None
        try:
            return self.init_images.get(body.init_image_id)
        except InitImageError as exc:
            raise UserError(str(exc), "init-image") from None

    async def init_image(self, request: Request) -> Response:
        """``POST /api/init-image``: keep a picture for img2img; answers its id and size."""
        body = await read_body(request, MAX_UPLOAD_BYTES, _INIT_TOO_LARGE)
        try:
            return JSONResponse(self.init_images.add(body))
        except InitImageError as exc:
            raise UserError(str(exc), "init-image") from None

    def _generate(self, request: GenerationRequest, job: Job, init: Any = None) -> dict[str, Any]:
        job.total = request.steps
        self._plan_first(request, job)
        with stop_checks(self.pipe, job.cancel_requested):
            result = self.pipe.generate(
                request, callback_on_step_end=job.step_callback, init_image=init
            )
        view = self._view(result.plan, request.width, request.height)
        return {"images": self._save(job, result), "view": view}

    def _refine(
        self, request: GenerationRequest, rounds: int, job: Job, init: Any = None
    ) -> dict[str, Any]:
        from rpg.planners.feedback import as_multimodal

        job.total = request.steps
        self._plan_first(request, job)
        reviewer = self.planning.run(lambda: as_multimodal(self.pipe.get_planner(request.planner)))
        images: list[dict[str, Any]] = []
        critiques: list[str] = []

        def on_round(done: Any) -> None:
            images.extend(self._save(job, done.result, prefix=f"-r{done.index}"))
            if done.critique:
                critiques.append(f"round {done.index}: {done.critique}")
            job.message = f"round {done.index} rendered"

        with stop_checks(self.pipe, job.cancel_requested):
            out = self.pipe.refine(
                request,
                rounds=rounds,
                planner=TimedReviewer(reviewer, self.planning),
                on_round=on_round,
                callback_on_step_end=job.step_callback,
                init_image=init,
            )
        view = self._view(out.plan, request.width, request.height)
        return {"images": images, "view": view, "critiques": critiques}

    async def generate(self, request: Request) -> Response:
        body = await _body(request, RenderBody, "request")
        req, init = self._request(body), self._init_image(body)
        job = self.jobs.submit(lambda job: self._generate(req, job, init))
        return JSONResponse(self._status(job))

    async def refine(self, request: Request) -> Response:
        body = await _body(request, RefineBody, "refine")
        req, init = self._request(body), self._init_image(body)
        ok, reason = await self.planning.run_async(lambda: can_review(self.pipe, req.planner))
        if not ok:
            raise UserError(reason, "refine")
        job = self.jobs.submit(lambda job: self._refine(req, body.rounds, job, init))
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
        await _body(request, CancelBody, "cancel")
        job = self.jobs.cancel(request.path_params["job_id"])
        if job is None:
            return JSONResponse({"error": "no such job"}, 404)
        return JSONResponse(self._status(job))

    async def image(self, request: Request) -> Response:
        name = request.path_params["name"]
        path = self.output_dir / name
        with self._images_lock:
            known = name in self._images
        if not known or not _IMAGE_NAME.match(name) or not path.is_file():
            return JSONResponse({"error": f"no image {name!r}"}, 404)
        return FileResponse(path, media_type="image/png", filename=f"rpg-{name}")

    # ------------------------------------------------------------------ reopening

    async def reopen(self, request: Request) -> Response:
        body = await read_body(request, MAX_UPLOAD_BYTES, _REOPEN_TOO_LARGE)
        # The page sends the file's name URL-encoded (headers are Latin-1 only).
        filename = Path(unquote(request.headers.get("x-filename") or "image.png")).name
        if not body:
            raise UserError("the file is empty", "reopen")
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
            # an img2img PNG: its embedded init image becomes an upload the page can render with
            try:
                init = read_init_image(path) if req.init_image_sha256 else None
            except MetadataError as exc:
                raise UserError(str(exc).replace(str(path), filename), "reopen") from None
        fields = req.model_dump(mode="json", exclude={"plan"})
        view = self._view(req.plan, req.width, req.height) if req.plan is not None else None
        out: dict[str, Any] = {"request": fields, "view": view, "filename": filename}
        if init is not None:
            out["init_image"] = self.init_images.keep(init)
        return JSONResponse(out)


def _read_mask(data: bytes, filename: str) -> LayerMask:
    """A layer mask from an uploaded image: grayscale, white paints the layer, black does not.

    A transparent pixel paints nothing whatever its colour (a mask painted on a transparent
    background in an image editor means what it shows). Images larger than
    :data:`MAX_MASK_SIDE` are shrunk by area averaging, as every grid the mask is resampled to
    would average them anyway, and so are masks too detailed to fit
    :data:`MAX_MASK_CHARS` (halving down to :data:`MIN_MASK_SIDE`), so that a plan with
    several masks stays within the size a PNG's metadata can carry.
    """
    import io
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                image = opened.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Warning) as exc:
        raise UserError(
            f"{filename} is not a readable image ({format_error(exc)}); upload a PNG whose "
            "white parts are the layer and black parts are not",
            "mask",
        ) from None
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba).convert("L")
    side = MAX_MASK_SIDE
    while True:
        if max(image.size) > side:
            scale = side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BOX)
        try:
            mask = LayerMask.from_image(image)
        except (ValidationError, ValueError) as exc:
            raise UserError(f"{filename}: {format_error(exc)}", "mask") from None
        # Even noise fits at MIN_MASK_SIDE (64² bytes of pixels, under 6 KiB as base64).
        if len(mask.png) <= MAX_MASK_CHARS or max(image.size) <= MIN_MASK_SIDE:
            return mask
        side = max(MIN_MASK_SIDE, max(image.size) // 2)


async def _user_error(request: Request, exc: Exception) -> Response:
    return _fail(exc, getattr(exc, "field", None))


async def _too_large(request: Request, exc: Exception) -> Response:
    return _fail(exc, None, status=413)


async def _planner_timeout(request: Request, exc: Exception) -> Response:
    return _fail(exc, "prompt", status=504)


async def _planner_busy(request: Request, exc: Exception) -> Response:
    return _fail(exc, "prompt", status=503)


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
    if output_dir is None:
        holder = tempfile.TemporaryDirectory(prefix="rpg-ui-")
        out = Path(holder.name)
    else:
        holder = None
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
    handlers = _App(pipe, out, planner or pipe.planner.name, plan_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        handlers.stop()

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
        Route("/api/plan/layer", handlers.layer, methods=["POST"]),
        Route("/api/mask", handlers.mask, methods=["POST"]),
        Route("/api/generate", handlers.generate, methods=["POST"]),
        Route("/api/refine", handlers.refine, methods=["POST"]),
        Route("/api/jobs/{job_id}", handlers.job),
        Route("/api/jobs/{job_id}/cancel", handlers.cancel, methods=["POST"]),
        Route("/api/images/{name}", handlers.image),
        Route("/api/reopen", handlers.reopen, methods=["POST"]),
        Route("/api/init-image", handlers.init_image, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            UserError: _user_error,
            BodyTooLarge: _too_large,
            TextTooLong: _too_large,
            PlanningTimeout: _planner_timeout,
            PlanningBusy: _planner_busy,
            Exception: _server_error,
        },
        middleware=[
            Middleware(
                Guard,
                policy=policy,
                default_limit=MAX_JSON_BYTES,
                raw_routes=[
                    ("/api/reopen", MAX_UPLOAD_BYTES, _PNG_TYPES, _REOPEN_TOO_LARGE),
                    ("/api/mask", MAX_MASK_UPLOAD_BYTES, _PNG_TYPES, _MASK_TOO_LARGE),
                    ("/api/init-image", MAX_UPLOAD_BYTES, _INIT_TYPES, _INIT_TOO_LARGE),
                ],
            )
        ],
    )
    app.state.rpg = handlers
    app.state.output_dir_holder = holder  # the temporary folder lives as long as the app
    return app
