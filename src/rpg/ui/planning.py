"""Planner calls with a time limit that never outlive their lock.

Planners are called one at a time (an LLM planner on a local model is not safe to call from two
threads, and planners are created on first use in :class:`~rpg.orchestrator.RPG`'s own dict).
A planner can also hang: an Ollama server that accepts the connection and never answers, a
huge prompt. :class:`PlanningGate` runs each call on its own daemon thread and waits at most
``timeout`` seconds, counting the wait for the gate itself. A call past its limit is *abandoned*:
the caller gets :class:`PlanningTimeout` and the gate is free again at once, while the thread
finishes (or not) on its own and its result is dropped. Abandoned calls are counted; when
``max_abandoned`` of them are still running the gate refuses new work instead of piling up
threads, until one of them returns.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, TypeVar

from rpg.errors import RPGError

if TYPE_CHECKING:
    from PIL.Image import Image

    from rpg.models import PlanResult, RegionPlan
    from rpg.planners.feedback import EditPlan, MultimodalPlanner, Review

__all__ = ["PlanningBusy", "PlanningGate", "PlanningTimeout", "TimedReviewer"]

T = TypeVar("T")

_POLL = 0.02  # seconds between looks at a running call from the event loop


class PlanningTimeout(RPGError):
    """A planner call (or the wait for the planner) took longer than the time limit."""


class PlanningBusy(RPGError):
    """Too many abandoned planner calls are still running; try again later."""


class PlanningGate:
    """One planner call at a time, each within ``timeout`` seconds (see the module docstring)."""

    def __init__(self, timeout: float, *, max_abandoned: int = 4) -> None:
        if not timeout > 0:
            raise ValueError(f"the planning time limit must be positive, got {timeout!r}")
        self.timeout = float(timeout)
        self.max_abandoned = max_abandoned
        self._gate = threading.Lock()
        self._count_lock = threading.Lock()
        self._abandoned = 0
        self._closed = threading.Event()

    @property
    def abandoned(self) -> int:
        """How many abandoned calls are still running."""
        with self._count_lock:
            return self._abandoned

    @property
    def busy(self) -> bool:
        """Whether a call holds the gate now."""
        return self._gate.locked()

    def _start(self, fn: Callable[[], T]) -> Future[T]:
        if self.abandoned >= self.max_abandoned:
            raise PlanningBusy(
                f"{self.abandoned} planner calls passed the {self.timeout:g} s limit and are "
                "still running; check the planner (is its server answering?) and try again"
            )
        future: Future[T] = Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller, or dropped when abandoned
                future.set_exception(exc)

        threading.Thread(target=work, name="rpg-ui-planner", daemon=True).start()
        return future

    def _abandon(self, future: Future[T]) -> PlanningTimeout:
        with self._count_lock:
            self._abandoned += 1

        def finished(_: Future[T]) -> None:
            with self._count_lock:
                self._abandoned -= 1

        future.add_done_callback(finished)
        return PlanningTimeout(self._too_slow())

    def _too_slow(self) -> str:
        return (
            f"the planner did not answer within {self.timeout:g} s (rpg ui --plan-timeout); "
            "check that its server is running, or pick another planner"
        )

    def _waited_too_long(self) -> PlanningTimeout:
        return PlanningTimeout(
            f"the planner was busy with another request for {self.timeout:g} s "
            "(rpg ui --plan-timeout); try again"
        )

    def run(self, fn: Callable[[], T]) -> T:
        """``fn()`` within the time limit, from a thread (the render queue's worker)."""
        deadline = time.monotonic() + self.timeout
        if not self._gate.acquire(timeout=self.timeout):
            raise self._waited_too_long()
        try:
            future = self._start(fn)
            try:
                return future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                raise self._abandon(future) from None
        finally:
            self._gate.release()

    async def run_async(self, fn: Callable[[], T]) -> T:
        """``fn()`` within the time limit, from the event loop (which it never blocks).

        It polls instead of parking a thread on the wait, so that :meth:`close` (the server is
        stopping) answers every waiting request at once.
        """
        deadline = time.monotonic() + self.timeout
        while not self._gate.acquire(blocking=False):
            self._check_open()
            if time.monotonic() >= deadline:
                raise self._waited_too_long()
            await asyncio.sleep(_POLL)
        try:
            self._check_open()
            future = self._start(fn)
            try:
                while not future.done():
                    if self._closed.is_set():
                        self._abandon(future)
                        self._check_open()
                    if time.monotonic() >= deadline:
                        raise self._abandon(future)
                    await asyncio.sleep(_POLL)
            except asyncio.CancelledError:  # the client went away
                if not future.done():
                    self._abandon(future)
                raise
            return future.result()
        finally:
            self._gate.release()

    def close(self) -> None:
        """The server is stopping: waiting requests get :class:`PlanningBusy` at once."""
        self._closed.set()

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise PlanningBusy("the server is stopping")


class TimedReviewer:
    """A multimodal planner whose every call goes through ``gate`` (its time limit).

    :func:`rpg.refine.refine` calls the reviewer from the render queue's worker; without the
    limit, a review that never returns would hold the queue, and every render behind it.
    """

    def __init__(self, inner: MultimodalPlanner, gate: PlanningGate) -> None:
        self.inner = inner
        self.gate = gate
        self.name = inner.name

    def plan(self, prompt: str, *, image: Image | None = None) -> PlanResult:
        return self.gate.run(lambda: self.inner.plan(prompt, image=image))

    def review(self, prompt: str, plan: RegionPlan, image: Image) -> Review:
        return self.gate.run(lambda: self.inner.review(prompt, plan, image))

    def plan_edit(self, instruction: str, image: Image, plan: RegionPlan | None = None) -> EditPlan:
        return self.gate.run(lambda: self.inner.plan_edit(instruction, image, plan))
