"""What every route of the editor shares: the pipeline, the render queue, the planner gate,
the uploaded init images and the PNGs this app wrote.

One :class:`Editor` is made per app (``app.state.rpg``); the route groups in
:mod:`rpg.ui.routes` each hold it, so none of them owns state another one reads.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpg.cli import format_error
from rpg.ui.edits import plan_view
from rpg.ui.init_images import InitImages
from rpg.ui.jobs import JobQueue
from rpg.ui.planning import PlanningGate

if TYPE_CHECKING:
    from rpg.models import RegionPlan
    from rpg.orchestrator import RPG

__all__ = ["Editor", "WrittenImages"]


class WrittenImages:
    """The names of the PNGs this app wrote: only those are served, whatever else is there."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._names: set[str] = set()

    def add(self, name: str) -> None:
        with self._lock:
            self._names.add(name)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._names


class Editor:
    """The pipeline, the job queue, the planner gate, the uploads and the output folder."""

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
        self.images = WrittenImages()  # only the PNGs this app wrote are served
        self.init_images = InitImages()  # img2img uploads, by id (never by path)

    def stop(self) -> None:
        """The server is stopping: cancel the renders and answer requests waiting on a planner."""
        self.jobs.close()
        self.planning.close()

    def view(
        self, plan: RegionPlan, width: int | None = None, height: int | None = None
    ) -> dict[str, Any]:
        """The plan view, warning about layers that paint nothing at the size to render."""
        native_w, native_h = self.pipe.backbone.native_size
        size = (width or native_w, height or native_h)
        return plan_view(plan, size, self.pipe.backbone.latent_factor)
