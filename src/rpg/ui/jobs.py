"""One model, many browser tabs: a first-in, first-out queue of render jobs on one worker thread.

A loaded pipeline is not safe to call from two threads at once, so every render goes through
:class:`JobQueue`, which runs one job at a time in submission order. Each job records its state,
its progress in denoising steps and its error, so any tab can poll it; a failure ends that job
only. Cancelling a queued job removes it; cancelling a running one stops it before the next
attention layer (the app renders under :func:`rpg.stopping.stop_checks` with the job's
``cancel_requested`` event) or, at the latest, at the end of the step (:meth:`Job.step_callback`).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from rpg.errors import RPGError
from rpg.stopping import Stopped

__all__ = ["Job", "JobCancelled", "JobQueue", "JobState", "new_job_id"]

log = logging.getLogger("rpg.ui")

JobState = Literal["queued", "running", "done", "failed", "cancelled"]

_FINISHED = ("done", "failed", "cancelled")


def new_job_id() -> str:
    """A random id (128 bits): another page cannot guess it to poll, cancel or fetch images."""
    return secrets.token_urlsafe(16)


class JobCancelled(RPGError):
    """Raised inside the pipeline's step callback to stop a job the user cancelled."""


@dataclass
class Job:
    """One unit of work and what a browser tab needs to follow it."""

    id: str
    work: Callable[[Job], Any]
    state: JobState = "queued"
    message: str = "queued"
    step: int = 0
    total: int = 0
    error: str | None = None
    result: Any = None
    created: float = field(default_factory=time.time)
    cancel_requested: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.state in _FINISHED

    def step_callback(self, pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> Any:
        """A diffusers ``callback_on_step_end``: record progress, stop when cancelled.

        diffusers pipelines also offer ``pipeline._interrupt``, but an interrupted pipeline still
        runs its remaining loop iterations (as no-ops) and decodes the half-denoised latents; an
        exception stops at once, and rpg's attention context restores the stock processors on
        the way out.
        """
        self.total = int(getattr(pipeline, "num_timesteps", 0) or self.total)
        self.step = step + 1
        self.message = f"step {self.step}/{self.total}" if self.total else f"step {self.step}"
        if self.cancel_requested.is_set():
            raise JobCancelled("cancelled")
        return kwargs


class JobQueue:
    """Runs submitted jobs one at a time, in order, on a daemon worker thread.

    ``describe_error`` turns an exception into the one line shown to the user; anything that is
    not an :class:`~rpg.errors.RPGError` or ``ValueError`` is also logged with its traceback.
    Finished jobs are kept (the newest ``keep``) so that late polls still find them.
    """

    def __init__(self, describe_error: Callable[[BaseException], str], *, keep: int = 256) -> None:
        self._describe = describe_error
        self._keep = keep
        self._jobs: dict[str, Job] = {}
        self._pending: deque[Job] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._worker: threading.Thread | None = None
        self._closed = False

    def submit(self, work: Callable[[Job], Any]) -> Job:
        """Queue ``work(job)``; it runs after every job submitted before it."""
        with self._lock:
            if self._closed:
                raise RPGError("the server is shutting down; no new jobs are accepted")
            job = Job(id=new_job_id(), work=work)
            self._jobs[job.id] = job
            self._pending.append(job)
            self._forget_old()
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="rpg-ui-jobs", daemon=True)
                self._worker.start()
            self._wake.notify()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """How many jobs run before ``job`` (0 when it is running or next)."""
        with self._lock:
            running = sum(1 for j in self._jobs.values() if j.state == "running")
            try:
                return running + list(self._pending).index(job)
            except ValueError:
                return 0

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a job: a queued one never runs, a running one stops at its next step."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.finished:
                return job
            job.cancel_requested.set()
            if job in self._pending:
                self._pending.remove(job)
                job.state, job.message = "cancelled", "cancelled before it started"
            return job

    def close(self) -> None:
        """Accept no more jobs, cancel the queued ones and let the running one stop."""
        with self._lock:
            self._closed = True
            for job in self._pending:
                job.state, job.message = "cancelled", "the server stopped"
            self._pending.clear()
            for job in self._jobs.values():
                job.cancel_requested.set()
            self._wake.notify_all()

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.finished]
        for job in finished[: max(0, len(finished) - self._keep)]:
            del self._jobs[job.id]

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if self._closed and not self._pending:
                    return
                job = self._pending.popleft()
                job.state, job.message = "running", "starting"
            self._execute(job)

    def _execute(self, job: Job) -> None:
        try:
            job.result = job.work(job)
        except (JobCancelled, Stopped):
            job.state, job.message = "cancelled", f"cancelled at step {job.step}/{job.total}"
        except Exception as exc:
            if not isinstance(exc, (RPGError, ValueError)):
                log.exception("job %s failed", job.id)
            job.error = self._describe(exc)
            job.state, job.message = "failed", "failed"
        else:
            job.state, job.message = "done", "done"
