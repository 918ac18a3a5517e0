"""Helpers the ``rpg ui`` test modules share."""

from __future__ import annotations

import time
from typing import Any


def wait(client: Any, job: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """Poll a job through the app until it is no longer queued or running."""
    deadline = time.monotonic() + timeout
    while job["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"job still {job['state']}: {job}"
        time.sleep(0.05)
        job = client.get(f"/api/jobs/{job['id']}").json()
    return job
