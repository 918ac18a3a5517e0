"""The render routes: queue a generate or refine job, follow it, cancel it.

``POST /api/generate``, ``POST /api/refine``, ``GET /api/jobs/{id}`` and
``POST /api/jobs/{id}/cancel``. Jobs run one at a time on the shared
:class:`~rpg.ui.jobs.JobQueue`; each plans first within the planner's time limit, renders through
``RPG.generate`` / ``RPG.refine`` with the job's step callback, and saves its PNGs where
:mod:`rpg.ui.routes.files` serves them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rpg.backbones.schedulers import check_scheduler
from rpg.cli import format_error
from rpg.errors import RPGError
from rpg.models import GenerationRequest
from rpg.stopping import stop_checks
from rpg.ui.bodies import CancelBody, RefineBody, RenderBody
from rpg.ui.family_options import check_options
from rpg.ui.http import InvalidBody, UserError, read_model
from rpg.ui.init_images import InitImageError
from rpg.ui.jobs import Job
from rpg.ui.planning import TimedReviewer
from rpg.ui.routes.plan import can_review

if TYPE_CHECKING:
    from rpg.ui.editor import Editor

__all__ = ["RenderRoutes"]


class RenderRoutes:
    """The handlers that queue renders and report on them."""

    def __init__(self, editor: Editor) -> None:
        self.editor = editor
        self.pipe = editor.pipe

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
            result.save(self.editor.output_dir / name, index=i)
            self.editor.images.add(name)
            images.append({"url": f"api/images/{name}", "seed": seed + i, "name": name})
        return images

    def _plan_first(self, request: GenerationRequest, job: Job) -> None:
        """Plan within the time limit, so a hung planner fails this job and not the queue.

        ``RPG.plan`` remembers the answer, so ``RPG.generate`` then reuses it.
        """
        if request.effective_plan() is None:
            job.message = "planning"
            self.editor.planning.run(
                lambda: self.pipe.plan(request.prompt, planner=request.planner)
            )

    def _init_image(self, body: RenderBody) -> Any:
        """The uploaded picture a render names (``None``: render from noise)."""
        if body.init_image_id is None:
            return None
        try:
            return self.editor.init_images.get(body.init_image_id)
        except InitImageError as exc:
            raise UserError(str(exc), "init-image") from None

    def _generate(self, request: GenerationRequest, job: Job, init: Any = None) -> dict[str, Any]:
        job.total = request.steps
        self._plan_first(request, job)
        with stop_checks(self.pipe, job.cancel_requested):
            result = self.pipe.generate(
                request, callback_on_step_end=job.step_callback, init_image=init
            )
        view = self.editor.view(result.plan, request.width, request.height)
        return {"images": self._save(job, result), "view": view}

    def _refine(
        self, request: GenerationRequest, rounds: int, job: Job, init: Any = None
    ) -> dict[str, Any]:
        from rpg.planners.feedback import as_multimodal

        job.total = request.steps
        self._plan_first(request, job)
        planning = self.editor.planning
        reviewer = planning.run(lambda: as_multimodal(self.pipe.get_planner(request.planner)))
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
                planner=TimedReviewer(reviewer, planning),
                on_round=on_round,
                callback_on_step_end=job.step_callback,
                init_image=init,
            )
        view = self.editor.view(out.plan, request.width, request.height)
        return {"images": images, "view": view, "critiques": critiques}

    async def generate(self, request: Request) -> Response:
        body = await read_model(request, RenderBody, "request")
        req, init = self._request(body), self._init_image(body)
        job = self.editor.jobs.submit(lambda job: self._generate(req, job, init))
        return JSONResponse(self._status(job))

    async def refine(self, request: Request) -> Response:
        body = await read_model(request, RefineBody, "refine")
        req, init = self._request(body), self._init_image(body)
        ok, reason = await self.editor.planning.run_async(
            lambda: can_review(self.pipe, req.planner)
        )
        if not ok:
            raise UserError(reason, "refine")
        job = self.editor.jobs.submit(lambda job: self._refine(req, body.rounds, job, init))
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
            ahead = self.editor.jobs.position(job)
            out["position"] = ahead
            out["message"] = f"queued: {ahead} job{'s' if ahead != 1 else ''} ahead"
        if job.state == "done" and job.result is not None:
            out.update(job.result)
        return out

    async def job(self, request: Request) -> Response:
        job = self.editor.jobs.get(request.path_params["job_id"])
        if job is None:
            return JSONResponse({"error": "no such job (the server was restarted?)"}, 404)
        return JSONResponse(self._status(job))

    async def cancel(self, request: Request) -> Response:
        await read_model(request, CancelBody, "cancel")
        job = self.editor.jobs.cancel(request.path_params["job_id"])
        if job is None:
            return JSONResponse({"error": "no such job"}, 404)
        return JSONResponse(self._status(job))
