"""rpg ui is closed to other origins, limits what it reads, names every bad field, and never
lets a hung planner hold the planning lock: the API driven over HTTP, in process and on a real
socket."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the 'ui' extra (starlette) is not installed")
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")

from starlette.testclient import TestClient

from rpg.models import PlanResult, Recaption, RegionPlan
from rpg.ui import build_app
from rpg.ui.bodies import MAX_JSON_BYTES, MAX_TEXT_CHARS
from rpg.ui.guard import OriginPolicy
from rpg.ui.planning import PlanningBusy, PlanningGate, PlanningTimeout
from ui_helpers import wait

PROMPT = "A red cat on the left and a blue dog on the right"
PLAN = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"]).model_dump(mode="json")
JSON = {"content-type": "application/json"}


def settings(**overrides: Any) -> dict[str, Any]:
    fields = {"prompt": PROMPT, "steps": 2, "seed": 5, "planner": "rules"}
    return {**fields, **overrides}


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def app(tiny_rpg: Any, out: Path) -> Any:
    return build_app(tiny_rpg, output_dir=out, planner="rules", bind_host="127.0.0.1")


@pytest.fixture
def client(app: Any) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1:7860")


# ----------------------------------------------------------------------------- origins, hosts


def test_another_origin_cannot_start_a_render(client: TestClient, out: Path) -> None:
    body = json.dumps({"request": settings()})
    # What the issue saw: a page elsewhere posting text/plain (no CORS preflight needed).
    evil = {"origin": "http://evil.example", "content-type": "text/plain"}
    refused = client.post("/api/generate", content=body, headers=evil)
    assert refused.status_code == 403
    assert "http://evil.example" in refused.json()["error"]
    assert "--allow-origin" in refused.json()["error"]
    # Another page on this very computer is another origin too.
    other_port = {"origin": "http://127.0.0.1:9999", **JSON}
    assert client.post("/api/generate", content=body, headers=other_port).status_code == 403
    # Sandboxed frames and file:// pages send "null".
    assert (
        client.post("/api/plan/check", json={"plan": PLAN}, headers={"origin": "null"}).status_code
        == 403
    )
    # Without an Origin, a browser's cross-site marker is enough to refuse.
    marked = client.post(
        "/api/generate", content=body, headers={"sec-fetch-site": "cross-site", **JSON}
    )
    assert marked.status_code == 403
    # Same-origin text/plain is refused as well: only JSON changes anything.
    plain = client.post("/api/generate", content=body, headers={"content-type": "text/plain"})
    assert plain.status_code == 415 and "application/json" in plain.json()["error"]
    form = client.post("/api/plan", data={"prompt": PROMPT})
    assert form.status_code == 415
    assert not out.exists() or not list(out.glob("*.png"))
    # The page's own requests pass: same scheme, host and port.
    own = client.post(
        "/api/generate", content=body, headers={"origin": "http://127.0.0.1:7860", **JSON}
    )
    assert own.status_code == 200
    assert wait(client, own.json())["state"] == "done"
    assert len(list(out.glob("*.png"))) == 1


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:7860", "127.0.0.1.evil.example", "", "localhost:x"]
)
def test_a_foreign_host_header_is_refused_dns_rebinding(app: Any, host: str) -> None:
    client = TestClient(app, base_url="http://127.0.0.1:7860")
    page = client.get("/api/config", headers={"host": host})
    assert page.status_code == 403
    assert (
        client.post("/api/plan", json={"prompt": PROMPT}, headers={"host": host}).status_code == 403
    )


@pytest.mark.parametrize(
    "base",
    [
        "http://localhost:7860",
        "http://127.0.0.1:7860",
        "http://127.0.0.2",
        "http://[::1]:7860",
        "http://app.localhost:7860",
    ],
)
def test_loopback_names_are_served(app: Any, base: str) -> None:
    client = TestClient(app, base_url=base)
    assert client.get("/api/config").status_code == 200
    answer = client.post("/api/plan/check", json={"plan": PLAN}, headers={"origin": base})
    assert answer.status_code == 200


def test_the_listening_address_and_allowed_origins_are_served(tiny_rpg: Any, out: Path) -> None:
    lan = build_app(tiny_rpg, output_dir=out, bind_host="192.168.1.20")
    assert (
        TestClient(lan, base_url="http://192.168.1.20:7860").get("/api/config").status_code == 200
    )
    assert (
        TestClient(lan, base_url="http://192.168.1.21:7860").get("/api/config").status_code == 403
    )
    # Listening everywhere: any IP literal is this computer (it cannot be re-pointed), a name not.
    everywhere = build_app(tiny_rpg, output_dir=out, bind_host="0.0.0.0")
    assert (
        TestClient(everywhere, base_url="http://10.0.0.7:7860").get("/api/config").status_code
        == 200
    )
    assert (
        TestClient(everywhere, base_url="http://mybox.lan:7860").get("/api/config").status_code
        == 403
    )
    # --allow-origin adds an origin and its host (a reverse proxy with TLS).
    proxied = build_app(tiny_rpg, output_dir=out, allow_origins=["https://rpg.example.org"])
    client = TestClient(proxied, base_url="http://rpg.example.org")
    origin = {"origin": "https://rpg.example.org"}
    assert client.post("/api/plan/check", json={"plan": PLAN}, headers=origin).status_code == 200
    other = {"origin": "https://evil.example.org"}
    assert client.post("/api/plan/check", json={"plan": PLAN}, headers=other).status_code == 403
    # Mounted in another app without a bind address: loopback names only.
    assert TestClient(build_app(tiny_rpg, output_dir=out)).get("/api/config").status_code == 403


def test_origin_policy_normalizes_and_rejects_malformed_origins() -> None:
    policy = OriginPolicy(allow_origins=("HTTP://Example.ORG:80/",))
    assert policy.origin_allowed("http://example.org", "http", "localhost")
    assert not policy.origin_allowed("http://example.org:8080", "http", "localhost")
    assert policy.origin_allowed("http://localhost:7860", "http", "localhost:7860")
    assert not policy.origin_allowed("https://localhost:7860", "http", "localhost:7860")
    for bad in ("example.org", "http://example.org/path", "ftp://x", "http://x:99999"):
        with pytest.raises(ValueError):
            OriginPolicy(allow_origins=(bad,))


def test_job_ids_and_image_names_cannot_be_guessed(client: TestClient, out: Path) -> None:
    jobs = [client.post("/api/generate", json={"request": settings()}).json() for _ in range(2)]
    ids = [job["id"] for job in jobs]
    assert len(set(ids)) == 2 and all(len(i) >= 20 for i in ids), ids
    assert not any(i in ("j1", "j2", "1", "2") for i in ids)
    done = wait(client, jobs[0])
    name = done["images"][0]["name"]
    assert name.startswith(ids[0])
    assert client.get(done["images"][0]["url"]).status_code == 200
    # Only PNGs this app wrote are served, not whatever else lies in the folder.
    (out / "holiday.png").write_bytes((out / name).read_bytes())
    assert client.get("/api/images/holiday.png").status_code == 404
    assert client.get("/api/jobs/j1").status_code == 404
    wait(client, jobs[1])


# ----------------------------------------------------------------------------- sizes


def test_an_oversized_body_is_refused_from_its_length_with_413(client: TestClient) -> None:
    big = b'{"prompt": "' + b"a" * MAX_JSON_BYTES + b'"}'
    answer = client.post("/api/plan", content=big, headers=JSON)
    assert answer.status_code == 413
    assert "larger than the limit of 1 MiB" in answer.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/plan", {"prompt": "x" * (MAX_TEXT_CHARS + 1)}, "prompt"),
        (
            "/api/generate",
            {"request": settings(negative_prompt="y" * (MAX_TEXT_CHARS + 1))},
            "request.negative_prompt",
        ),
        (
            "/api/plan/check",
            {"plan": {"rows": [{"regions": [{"prompt": "z" * (MAX_TEXT_CHARS + 1)}]}]}},
            "plan.rows.0.regions.0.prompt",
        ),
    ],
)
def test_a_prompt_over_the_limit_is_413_naming_it(
    client: TestClient, path: str, body: dict[str, Any], field: str
) -> None:
    answer = client.post(path, json=body)
    assert answer.status_code == 413
    data = answer.json()
    assert data["fields"] == [field]
    assert f"{field} is {MAX_TEXT_CHARS + 1} characters long" in data["error"]
    assert f"limit is {MAX_TEXT_CHARS}" in data["error"]


# ----------------------------------------------------------------------------- bad fields


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/api/plan", '{"prompt": "a cat", "planner": ["a"]}', "planner"),
        ("/api/plan", '{"prompt": 5}', "prompt"),
        ("/api/plan", '{"prompt": "a cat", "planer": "rules"}', "planer"),
        (
            "/api/plan/edit",
            f'{{"plan": {json.dumps(PLAN)}, "edit": "split_region", "row": 1e400}}',
            "row",
        ),
        (
            "/api/plan/edit",
            f'{{"plan": {json.dumps(PLAN)}, "edit": "split_region", "col": -1}}',
            "col",
        ),
        ("/api/plan/edit", f'{{"plan": {json.dumps(PLAN)}, "edit": 3}}', "edit"),
        ("/api/plan/text", '{"split_ratio": "1", "prompts": "a", "base_ratio": [1]}', "base_ratio"),
        ("/api/plan/text", '{"split_ratio": "1", "prompts": "a", "base_ratio": NaN}', "base_ratio"),
        (
            "/api/plan/text",
            '{"split_ratio": "1", "prompts": "a", "base_ratio": "half"}',
            "base_ratio",
        ),
        ("/api/plan/text", '{"split_ratio": ["1"], "prompts": "a"}', "split_ratio"),
        ("/api/plan/check", '{"plan": "two rows"}', "plan"),
        (
            "/api/plan/check",
            '{"plan": {"rows": [{"regions": [{"prompt": "a", "width": -1}]}]}}',
            "plan.rows.0.regions.0.width",
        ),
        ("/api/generate", '{"request": [1]}', "request"),
        ("/api/generate", '{"request": {"prompt": "a", "planner": ["a"]}}', "request.planner"),
        ("/api/generate", '{"request": {"prompt": "a", "steps": "many"}}', "request.steps"),
        ("/api/generate", '{"request": {"prompt": "a", "seed": 1e400}}', "request.seed"),
        ("/api/generate", '{"request": {"prompt": "a"}, "plan": 3}', "plan"),
        ("/api/refine", '{"request": {"prompt": "a"}, "rounds": 1e400}', "rounds"),
        ("/api/refine", '{"request": {"prompt": "a"}, "rounds": 0}', "rounds"),
        ("/api/jobs/x/cancel", '{"now": true}', "now"),
    ],
)
def test_every_bad_field_is_a_422_naming_it(
    client: TestClient, path: str, raw: str, field: str
) -> None:
    answer = client.post(path, content=raw, headers=JSON)
    assert answer.status_code == 422, answer.text
    data = answer.json()
    assert field in data["fields"], data
    assert data["error"].startswith(field) or f"; {field}" in data["error"], data


def test_several_bad_fields_are_all_named_with_their_full_path(client: TestClient) -> None:
    body = {"request": {"prompt": "a", "steps": "many", "seed": -1}, "plan": None}
    data = client.post("/api/generate", json=body).json()
    assert data["fields"] == ["request.steps", "request.seed"]
    assert data["error"].startswith("request.steps: ") and "; request.seed: " in data["error"]


def test_bodies_that_are_not_objects_or_nest_too_deep_are_422(client: TestClient) -> None:
    for raw in ("[1, 2]", "3", '"text"', "{not json", "[" * 100_000 + "]" * 100_000):
        answer = client.post("/api/plan", content=raw, headers=JSON)
        assert answer.status_code == 422, raw[:20]
    deep: Any = "a cat"
    for _ in range(40):
        deep = {"x": deep}
    answer = client.post("/api/plan", json={"prompt": PROMPT, "planner": deep})
    assert answer.status_code == 422 and "nested more than 32 levels" in answer.json()["error"]


# ----------------------------------------------------------------------------- planning


class SlowPlanner:
    """A planner that hangs until released, like an LLM server that never answers."""

    name = "slow"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def plan(self, prompt: str, *, image: Any = None) -> PlanResult:
        self.calls += 1
        self.release.wait(60)
        plan = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"])
        return PlanResult(recaption=Recaption(original_prompt=prompt), plan=plan)


@pytest.fixture
def slow(tiny_rpg: Any, tmp_path: Path) -> Iterator[tuple[TestClient, SlowPlanner]]:
    from rpg.orchestrator import RPG

    planner = SlowPlanner()
    pipe = RPG(tiny_rpg.backbone, planner=planner, model="tiny-sd")
    app = build_app(pipe, output_dir=tmp_path / "slow", plan_timeout=0.5)
    try:
        yield TestClient(app, base_url="http://localhost"), planner
    finally:
        planner.release.set()


def test_a_hung_planner_times_out_and_does_not_block_later_requests(
    slow: tuple[TestClient, SlowPlanner],
) -> None:
    client, planner = slow
    first = client.post("/api/plan", json={"prompt": "a cat", "planner": "slow"})
    assert first.status_code == 504
    assert "did not answer within 0.5 s" in first.json()["error"]
    # The lock was let go at the limit: the next call reaches the (still hung) planner again
    # instead of waiting behind the first one ...
    second = client.post("/api/plan", json={"prompt": "a dog", "planner": "slow"})
    assert second.status_code == 504 and "did not answer" in second.json()["error"]
    assert planner.calls == 2
    # ... and other planners work meanwhile, for planning and for the Refine check.
    rules = client.post("/api/plan", json={"prompt": PROMPT, "planner": "rules"})
    assert rules.status_code == 200 and rules.json()["view"]["split_ratio"] == "1,1"
    assert client.get("/api/planner", params={"name": "rules"}).json()["can_review"] is False
    # A render that must plan first fails in its own tab; the queue goes on.
    failed = wait(
        client, client.post("/api/generate", json={"request": settings(planner="slow")}).json()
    )
    assert failed["state"] == "failed" and "did not answer within 0.5 s" in failed["error"]
    ok = wait(client, client.post("/api/generate", json={"request": settings()}).json())
    assert ok["state"] == "done"


class HangingReviewer(SlowPlanner):
    """Plans at once; its review of the rendered image never comes back (until released)."""

    name = "hanging"

    def plan(self, prompt: str, *, image: Any = None) -> PlanResult:
        plan = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"])
        return PlanResult(recaption=Recaption(original_prompt=prompt), plan=plan)

    def review(self, prompt: str, plan: RegionPlan, image: Any) -> Any:
        self.calls += 1
        self.release.wait(60)
        raise AssertionError("the review was waited for")

    def plan_edit(self, instruction: str, image: Any, plan: RegionPlan | None = None) -> Any:
        raise NotImplementedError


def test_a_hung_review_fails_its_refine_job_and_the_queue_goes_on(
    tiny_rpg: Any, tmp_path: Path
) -> None:
    from rpg.orchestrator import RPG

    reviewer = HangingReviewer()
    pipe = RPG(tiny_rpg.backbone, planner=reviewer, model="tiny-sd")
    client = TestClient(
        build_app(pipe, output_dir=tmp_path / "r", plan_timeout=0.5), base_url="http://localhost"
    )
    try:
        body = {"request": settings(planner="hanging"), "rounds": 1}
        job = wait(client, client.post("/api/refine", json=body).json())
        assert job["state"] == "failed" and "did not answer within 0.5 s" in job["error"], job
        assert reviewer.calls == 1
        ok = wait(client, client.post("/api/generate", json={"request": settings()}).json())
        assert ok["state"] == "done"
    finally:
        reviewer.release.set()


def test_too_many_abandoned_planner_calls_are_refused_until_one_returns() -> None:
    gate = PlanningGate(0.05, max_abandoned=2)
    release = threading.Event()
    for _ in range(2):
        with pytest.raises(PlanningTimeout):
            gate.run(lambda: release.wait(30))
    assert gate.abandoned == 2 and not gate.busy
    with pytest.raises(PlanningBusy, match="2 planner calls"):
        gate.run(lambda: "never runs")
    release.set()
    deadline = time.monotonic() + 10
    while gate.abandoned:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert gate.run(lambda: "planned") == "planned"


def test_a_planner_error_reaches_the_caller_and_frees_the_gate() -> None:
    gate = PlanningGate(5)

    def broken() -> None:
        raise ValueError("no regions")

    with pytest.raises(ValueError, match="no regions"):
        gate.run(broken)
    assert not gate.busy and gate.abandoned == 0
    with pytest.raises(ValueError, match="positive"):
        PlanningGate(0)


# ----------------------------------------------------------------------------- on a real socket


@pytest.fixture
def live(app: Any) -> Iterator[int]:
    """The app served by uvicorn on a free loopback port, in a thread; the port."""
    import uvicorn

    from rpg.ui.serve import bind

    sock = bind("127.0.0.1", 0)
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _exchange(port: int, head: bytes, body_chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send ``head`` and then body chunks until the server answers; (answer, bytes sent)."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(head)
        conn.setblocking(False)
        answer = b""
        for chunk in body_chunks:
            with contextlib.suppress(BlockingIOError):
                answer += conn.recv(65536)
            if answer:
                break
            try:
                conn.setblocking(True)
                conn.sendall(chunk)
                sent += len(chunk)
                conn.setblocking(False)
            except OSError:  # the server closed the connection after answering
                break
        conn.setblocking(True)
        conn.settimeout(30)
        while b"\r\n\r\n" not in answer:
            data = conn.recv(65536)
            if not data:
                break
            answer += data
    return answer, sent


def test_a_200_mb_plan_request_is_refused_without_reading_it(live: int) -> None:
    """The issue's case: 200 MB of JSON to /api/plan. Declared: refused from the header."""
    head = (
        b"POST /api/plan HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 209715200\r\n\r\n"
    )
    chunks = (b'{"prompt": "' + b"a" * 65536 for _ in range(3200))
    answer, sent = _exchange(live, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 64 << 20  # the answer came long before the body was through


def test_a_chunked_body_is_cut_off_at_the_limit(live: int) -> None:
    head = (
        b"POST /api/plan HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    piece = b"a" * 65536
    chunks = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(3200))
    answer, sent = _exchange(live, head, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 64 << 20
