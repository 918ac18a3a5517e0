"""The planning routes: the editor's configuration, a planner's plan, and every plan edit.

``GET /api/config``, ``GET /api/planner``, ``POST /api/plan``, ``/api/plan/check``,
``/api/plan/edit``, ``/api/plan/text`` and ``/api/plan/layer``. Edits are the pure functions of
:mod:`rpg.ui.edits`; each answer is the plan view the page draws.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rpg.cli import format_error
from rpg.errors import RPGError
from rpg.models import GenerationRequest
from rpg.ui.bodies import EditBody, LayerEditBody, PlanBody, PlanCheckBody, PlanTextBody
from rpg.ui.edits import (
    PlanEditError,
    add_layer,
    apply_edit,
    apply_layer_edit,
    plan_from_text,
    plan_view,
)
from rpg.ui.family_options import option_controls, scheduler_choices
from rpg.ui.http import UserError, fail, need_plan, read_model
from rpg.ui.planning import PlanningBusy, PlanningTimeout

if TYPE_CHECKING:
    from rpg.orchestrator import RPG
    from rpg.ui.editor import Editor

__all__ = ["PlanRoutes", "can_review"]


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


class PlanRoutes:
    """The handlers that plan and edit plans; none of them renders."""

    def __init__(self, editor: Editor) -> None:
        self.editor = editor
        self.pipe = editor.pipe

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
                "planner": self.editor.default_planner,
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
        ok, reason = await self.editor.planning.run_async(lambda: can_review(self.pipe, name))
        return JSONResponse({"name": name, "can_review": ok, "reason": reason})

    def _plan_prompt(self, prompt: str, planner: str | None) -> dict[str, Any]:
        result = self.pipe.plan(prompt, planner=planner)
        return {
            "recaption": result.recaption.recaption,
            "entities": [e.model_dump(mode="json") for e in result.recaption.entities],
            "planner": result.planner,
            "seconds": result.seconds,
            "view": self.editor.view(result.plan),
        }

    async def plan(self, request: Request) -> Response:
        body = await read_model(request, PlanBody, "prompt")
        if not body.prompt.strip():
            raise UserError("the prompt is empty; describe the image to generate", "prompt")
        try:
            out = await self.editor.planning.run_async(
                lambda: self._plan_prompt(body.prompt, body.planner or None)
            )
        except (PlanningTimeout, PlanningBusy):
            raise
        except (RPGError, ValueError) as exc:
            return fail(exc, "prompt")
        return JSONResponse(out)

    async def check(self, request: Request) -> Response:
        body = await read_model(request, PlanCheckBody, "plan")
        return JSONResponse(self.editor.view(need_plan(body.plan), body.width, body.height))

    async def edit(self, request: Request) -> Response:
        body = await read_model(request, EditBody, "edit")
        plan = need_plan(body.plan)
        try:
            return JSONResponse(plan_view(apply_edit(plan, body.edit, body.row, body.col)))
        except (PlanEditError, ValueError) as exc:
            return fail(exc, "edit")

    async def text(self, request: Request) -> Response:
        body = await read_model(request, PlanTextBody, "text")
        try:
            plan = plan_from_text(
                body.split_ratio,
                body.prompts,
                base_prompt=body.base_prompt or None,
                base_ratio=body.base_ratio,
                previous=body.plan,
            )
        except PlanEditError as exc:
            return fail(exc, "text")
        return JSONResponse(plan_view(plan))

    async def layer(self, request: Request) -> Response:
        body = await read_model(request, LayerEditBody, "layer")
        try:
            if body.plan is None and body.edit == "add_layer" and body.box is not None:
                plan = add_layer(None, body.box, base_prompt=body.base_prompt)
            else:
                plan = apply_layer_edit(
                    need_plan(body.plan), body.edit, body.layer, box=body.box, mask=body.mask
                )
            return JSONResponse(self.editor.view(plan, body.width, body.height))
        except (PlanEditError, ValueError) as exc:
            return fail(exc, "layer")
