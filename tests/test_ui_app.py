"""The rpg ui app's JSON API and render queue, driven over HTTP without a browser."""

from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

pytest.importorskip("starlette", reason="the 'ui' extra (starlette) is not installed")
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")

from starlette.testclient import TestClient

from rpg.metadata import load_request
from rpg.models import PlanResult, Recaption, RegionPlan
from rpg.planners.feedback import EditPlan, Review
from rpg.ui import build_app
from rpg.ui.jobs import JobCancelled, JobQueue
from ui_helpers import wait

PROMPT = "A red cat on the left and a blue dog on the right"
#: The app answers loopback names only; TestClient would send Host: testserver.
LOCAL = "http://localhost"
JSON = {"content-type": "application/json"}
PNG = {"content-type": "image/png"}


@pytest.fixture
def client(tiny_rpg: Any, tmp_path: Path) -> TestClient:
    return TestClient(
        build_app(tiny_rpg, output_dir=tmp_path / "out", planner="rules"), base_url=LOCAL
    )


def settings(**overrides: Any) -> dict[str, Any]:
    fields = {"prompt": PROMPT, "steps": 3, "seed": 5, "scheduler": "euler", "planner": "rules"}
    return {**fields, **overrides}


def test_page_and_config(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'id="canvas"' in page.text
    # app.js wires the page to the functions of the scripts before it: it must load last.
    scripts = re.findall(r'<script src="(static/[^"]+)"', page.text)
    assert {"static/canvas.js", "static/render.js"} <= set(scripts[:-1])
    assert scripts[-1] == "static/app.js"
    assert all(client.get(f"/{src}").status_code == 200 for src in scripts)
    config = client.get("/api/config").json()
    assert (config["width"], config["height"]) == (64, 64)
    assert config["planner"] == "rules"
    assert {"rules", "auto"} <= {p["name"] for p in config["planners"]}
    assert "dpm++2m-karras" in [s["name"] for s in config["schedulers"]]


def test_the_app_mounts_under_a_prefix(tiny_rpg: Any, tmp_path: Path) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount

    outer = Starlette(routes=[Mount("/rpg", build_app(tiny_rpg, output_dir=tmp_path))])
    client = TestClient(outer, base_url=LOCAL)
    page = client.get("/rpg/")
    # The page's URLs are relative, so they resolve under the prefix.
    assert 'src="static/app.js"' in page.text and "/api/" not in page.text
    assert client.get("/rpg/static/app.js").status_code == 200
    assert client.get("/rpg/api/config").json()["model"] == tiny_rpg.model


def test_rpg_ui_help_lists_the_server_options(capsys: pytest.CaptureFixture[str]) -> None:
    from rpg.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["ui", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model", "--planner", "--host", "--port", "--out", "--ollama-host"):
        assert option in out
    assert main(["ui", "--port", "70000"]) == 2
    assert "--port must be from 0 to 65535" in capsys.readouterr().err


def test_plan_shows_recaption_entities_and_layout(client: TestClient) -> None:
    out = client.post("/api/plan", json={"prompt": PROMPT, "planner": "rules"}).json()
    view = out["view"]
    assert len(view["regions"]) == 2 and view["split_ratio"] == "1,1"
    assert "red cat" in view["regions"][0]["prompt"] and "blue dog" in view["regions"][1]["prompt"]
    assert out["planner"] == "rules" and isinstance(out["entities"], list)
    empty = client.post("/api/plan", json={"prompt": "  ", "planner": "rules"})
    assert empty.status_code == 422 and "prompt is empty" in empty.json()["error"]
    unknown = client.post("/api/plan", json={"prompt": PROMPT, "planner": "nope"})
    assert unknown.status_code == 422 and "nope" in unknown.json()["error"]


def test_edits_and_text_fields_answer_a_view_or_an_inline_error(client: TestClient) -> None:
    plan = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"]).model_dump(mode="json")
    view = client.post("/api/plan/edit", json={"plan": plan, "edit": "split_region"}).json()
    assert view["split_ratio"] == "0.5,0.5,1"
    bad = client.post("/api/plan/edit", json={"plan": plan, "edit": "merge_right", "col": 1})
    assert bad.status_code == 422 and "last one of row 1" in bad.json()["error"]
    text = client.post("/api/plan/text", json={"split_ratio": "1;1", "prompts": "sky BREAK sea"})
    assert [r["prompt"] for r in text.json()["regions"]] == ["sky", "sea"]
    wrong = client.post("/api/plan/text", json={"split_ratio": "1,,1", "prompts": "a BREAK b"})
    assert wrong.status_code == 422 and wrong.json()["field"] == "text"
    blank = {**plan, "rows": [{"regions": [{"prompt": "  "}]}]}
    checked = client.post("/api/plan/check", json={"plan": blank})
    assert checked.status_code == 422 and "must not be empty" in checked.json()["error"]
    garbage = client.post("/api/plan/check", content=b"{not json", headers=JSON)
    assert garbage.status_code == 422 and "not JSON" in garbage.json()["error"]


def test_generate_reports_steps_and_saves_a_png_that_reopens(client: TestClient) -> None:
    plan = RegionPlan.from_split_ratio("2,1", ["a red cat", "a blue dog"], base_prompt="pets")
    body = {"request": settings(num_images=2), "plan": plan.model_dump(mode="json")}
    job = wait(client, client.post("/api/generate", json=body).json())
    assert job["state"] == "done", job
    assert (job["step"], job["total"]) == (3, 3)
    assert [i["seed"] for i in job["images"]] == [5, 6]
    png = client.get(job["images"][1]["url"])
    assert png.headers["content-type"] == "image/png"
    assert "attachment" in png.headers["content-disposition"]
    reopened = client.post(
        "/api/reopen", content=png.content, headers={**PNG, "x-filename": "b.png"}
    )
    data = reopened.json()
    assert data["view"]["plan"] == plan.model_dump(mode="json")
    assert data["request"]["seed"] == 6 and data["request"]["num_images"] == 1
    assert data["request"]["steps"] == 3 and data["request"]["scheduler"] == "euler"


def test_reopen_without_rpg_metadata_says_so(client: TestClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    name = {**PNG, "x-filename": "caf%C3%A9.png"}  # the page URL-encodes the name
    out = client.post("/api/reopen", content=buffer.getvalue(), headers=name)
    assert out.status_code == 422
    assert "café.png is a PNG without rpg metadata" in out.json()["error"]
    junk = client.post(
        "/api/reopen", content=b"not an image", headers={**PNG, "x-filename": "x.png"}
    )
    assert junk.status_code == 422 and "not a readable image" in junk.json()["error"]


def test_bad_requests_fail_in_their_tab_and_the_app_keeps_working(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad_size = client.post("/api/generate", json={"request": settings(width=100), "plan": None})
    assert bad_size.status_code == 422 and "multiple of 8" in bad_size.json()["error"]
    bad_scheduler = client.post("/api/generate", json={"request": settings(scheduler="warp")})
    assert bad_scheduler.status_code == 422 and "unknown scheduler" in bad_scheduler.json()["error"]
    # A planner that cannot run fails inside the queued job: that job shows the error ...
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    body = {"request": settings(planner="openai")}
    failed = wait(client, client.post("/api/generate", json=body).json())
    assert failed["state"] == "failed" and failed["error"]
    assert "Traceback" not in failed["error"]
    # ... and the next request (planned by the rules planner) still renders.
    ok = wait(client, client.post("/api/generate", json={"request": settings()}).json())
    assert ok["state"] == "done" and ok["view"]["split_ratio"] == "1,1"


def test_cancel_stops_a_running_render_between_steps(client: TestClient) -> None:
    job = client.post("/api/generate", json={"request": settings(steps=1000)}).json()
    deadline = time.monotonic() + 60
    while client.get(f"/api/jobs/{job['id']}").json()["step"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    client.post(f"/api/jobs/{job['id']}/cancel", json={})
    stopped = wait(client, client.get(f"/api/jobs/{job['id']}").json())
    assert stopped["state"] == "cancelled" and 1 <= stopped["step"] < 1000
    assert "images" not in stopped
    after = wait(client, client.post("/api/generate", json={"request": settings()}).json())
    assert after["state"] == "done"


def test_cancel_stops_a_running_render_within_the_step(client: TestClient, tiny_rpg: Any) -> None:
    """Cancel pressed mid-step: no further attention layer runs, the step never ends."""
    unet = tiny_rpg.pipe.unet
    layers = [m for m in unet.modules() if hasattr(m, "processor")]
    calls: list[int] = []
    job_id: list[str] = []

    def press_cancel_on_fifth_layer(module: Any, args: Any) -> None:
        calls.append(1)
        if len(calls) == 5:
            client.post(f"/api/jobs/{job_id[0]}/cancel", json={})

    handles = [layer.register_forward_pre_hook(press_cancel_on_fifth_layer) for layer in layers]
    try:
        job = client.post("/api/generate", json={"request": settings(steps=50)}).json()
        job_id.append(job["id"])
        stopped = wait(client, job)
    finally:
        for handle in handles:
            handle.remove()
    assert stopped["state"] == "cancelled"
    # the stop check runs before the next layer: nothing ran after the 5th, and since a
    # step of the tiny UNet has more than 5 attention layers, no step ended
    assert len(calls) == 5 < len(layers)
    assert stopped["step"] == 0


def test_queue_runs_in_order_cancels_queued_jobs_and_survives_failures() -> None:
    queue = JobQueue(str)
    release = threading.Event()
    order: list[str] = []

    def blocking(job: Any) -> str:
        release.wait(10)
        order.append(job.id)
        return "first"

    def failing(job: Any) -> None:
        raise ValueError("bad plan: no regions")

    first = queue.submit(blocking)
    second = queue.submit(failing)
    third = queue.submit(lambda job: order.append(job.id))
    fourth = queue.submit(lambda job: order.append(job.id))
    deadline = time.monotonic() + 5
    while first.state != "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert queue.position(second) == 1 and queue.position(fourth) == 3
    queue.cancel(third.id)
    assert third.state == "cancelled"
    release.set()
    while not fourth.finished:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert order == [first.id, fourth.id]
    assert (first.state, first.result) == ("done", "first")
    assert (second.state, second.error) == ("failed", "bad plan: no regions")
    queue.close()


def test_step_callback_counts_and_raises_when_cancelled() -> None:
    queue = JobQueue(str)
    job = queue.submit(lambda job: None)

    class Pipeline:
        num_timesteps = 4

    assert job.step_callback(Pipeline(), 0, 999, {"latents": 1}) == {"latents": 1}
    assert (job.step, job.total, job.message) == (1, 4, "step 1/4")
    job.cancel_requested.set()
    with pytest.raises(JobCancelled):
        job.step_callback(Pipeline(), 1, 998, {})
    queue.close()


class Reviewer:
    """A multimodal planner without a model: one revision, then done."""

    name = "reviewer"

    def __init__(self) -> None:
        self.reviews = 0

    def plan(self, prompt: str, *, image: Any = None) -> PlanResult:
        plan = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"])
        return PlanResult(recaption=Recaption(original_prompt=prompt), plan=plan)

    def review(self, prompt: str, plan: RegionPlan, image: Any) -> Review:
        self.reviews += 1
        if self.reviews > 1:
            return Review(critique="fine now", done=True)
        revised = RegionPlan.from_split_ratio("1,2", ["a cat", "a big dog"])
        return Review(critique="the dog is too small", done=False, plan=revised)

    def plan_edit(self, instruction: str, image: Any, plan: RegionPlan | None = None) -> EditPlan:
        raise NotImplementedError


def test_refine_is_offered_only_by_planners_that_see_images(tiny_rpg: Any, tmp_path: Path) -> None:
    from rpg.orchestrator import RPG

    plain = TestClient(
        build_app(tiny_rpg, output_dir=tmp_path / "a", planner="rules"), base_url=LOCAL
    )
    caps = plain.get("/api/planner", params={"name": "rules"}).json()
    assert caps["can_review"] is False and "cannot look at images" in caps["reason"]
    refused = plain.post("/api/refine", json={"request": settings(), "rounds": 1})
    assert refused.status_code == 422 and "cannot look at images" in refused.json()["error"]

    seeing = RPG(tiny_rpg.backbone, planner=Reviewer(), model="tiny-sd")
    client = TestClient(build_app(seeing, output_dir=tmp_path / "b"), base_url=LOCAL)
    assert client.get("/api/config").json()["planner"] == "reviewer"
    assert client.get("/api/planner", params={"name": "reviewer"}).json()["can_review"] is True
    body = {"request": settings(planner="reviewer"), "rounds": 2}
    job = wait(client, client.post("/api/refine", json=body).json())
    assert job["state"] == "done", job
    assert len(job["images"]) == 2 and job["view"]["split_ratio"] == "1,2"
    assert job["critiques"] == ["round 1: the dog is too small", "round 2: fine now"]
    last = client.get(job["images"][1]["url"]).content
    path = tmp_path / "last.png"
    path.write_bytes(last)
    assert load_request(path).plan == RegionPlan.from_split_ratio("1,2", ["a cat", "a big dog"])
