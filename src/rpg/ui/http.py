"""Reading a request's JSON body into its model, and answering every error as JSON.

Every error a user can cause comes back as ``{"error": "...", "field": ...}`` with status 422
(the page shows it next to ``field``); a body or text over its limit is a 413, a planner that
takes too long a 504, one still busy with another call a 503, and anything else a 500 that says
to look at the log. Nothing the page sends can stop the server.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from rpg.cli import format_error
from rpg.errors import RPGError
from rpg.models import RegionPlan
from rpg.pydantic_errors import problems
from rpg.ui.bodies import MAX_JSON_BYTES, TextTooLong, check_text_sizes
from rpg.ui.guard import BodyTooLarge, read_body
from rpg.ui.planning import PlanningBusy, PlanningTimeout

__all__ = [
    "InvalidBody",
    "UserError",
    "exception_handlers",
    "fail",
    "need_plan",
    "read_model",
]

log = logging.getLogger("rpg.ui")

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


def fail(exc: BaseException, field: str | None = None, status: int = 422) -> JSONResponse:
    """The JSON answer for ``exc``: its message, the field to show it at, and the bad fields."""
    body: dict[str, Any] = {"error": format_error(exc), "field": field}
    if isinstance(exc, InvalidBody):
        body["fields"] = exc.fields
    elif isinstance(exc, TextTooLong):
        body["fields"] = [exc.field]
    return JSONResponse(body, status_code=status)


async def read_model(request: Request, model: type[B], field: str | None) -> B:
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


def need_plan(plan: RegionPlan | None, field: str = "plan") -> RegionPlan:
    """``plan``, or a user error saying how to get one."""
    if plan is None:
        raise UserError("no plan yet: press Plan, or type a split ratio and prompts", field)
    return plan


async def _user_error(request: Request, exc: Exception) -> Response:
    return fail(exc, getattr(exc, "field", None))


async def _too_large(request: Request, exc: Exception) -> Response:
    return fail(exc, None, status=413)


async def _planner_timeout(request: Request, exc: Exception) -> Response:
    return fail(exc, "prompt", status=504)


async def _planner_busy(request: Request, exc: Exception) -> Response:
    return fail(exc, "prompt", status=503)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.exception("rpg ui: unexpected error on %s", request.url.path, exc_info=exc)
    return JSONResponse(
        {"error": f"internal error ({type(exc).__name__}: {format_error(exc)}); see the log"},
        status_code=500,
    )


def exception_handlers() -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """Starlette's ``exception_handlers``: every error a handler raises, answered as JSON."""
    return {
        UserError: _user_error,
        BodyTooLarge: _too_large,
        TextTooLong: _too_large,
        PlanningTimeout: _planner_timeout,
        PlanningBusy: _planner_busy,
        Exception: _server_error,
    }
