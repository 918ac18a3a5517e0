"""`rpg ui` in a real browser: Playwright drives headless Chromium against the served app.

The server is the real command, ``python -m rpg ui --model tiny-sd``, started on a free port on
127.0.0.1 and stopped afterwards. Chromium is Debian's package (``apt-get install chromium``,
done by ``.ci/run``); Playwright's own browser download is not used. Every state is saved as a
screenshot under the test's temporary folder.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

from rpg.metadata import load_request

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("RPG_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Records every text the status line shows, so the test sees progress however fast it goes.
RECORD_STATUS = """() => {
  const status = document.getElementById("status");
  window.statuses = [];
  new MutationObserver(() => window.statuses.push(status.textContent))
    .observe(status, {childList: true, characterData: true, subtree: true});
}"""
PROMPT = "From left to right, a red apple, a blue mug and a yellow banana on a wooden table"

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)
pytest.importorskip("uvicorn", reason="the 'ui' extra (uvicorn) is not installed")
if not os.path.isfile(CHROMIUM):
    pytest.skip(
        f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set RPG_TEST_CHROMIUM)",
        allow_module_level=True,
    )
expect = sync_api.expect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tiny_sd_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``rpg ui`` on tiny-sd with the rules planner, on a free port; its URL."""
    folder = tmp_path_factory.mktemp("rpg-ui-server")
    port = free_port()
    env = {
        **os.environ,
        "RPG_CACHE_DIR": str(tiny_sd_path.parent),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # The server shares the CPU with Chromium and this process: one OpenMP thread avoids
        # spin-waiting threads that made tiny-sd's steps 20x slower on a loaded 2-core machine.
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    log = (folder / "server.log").open("w")
    command = [sys.executable, "-m", "rpg", "ui", "--planner", "rules", "--device", "cpu"]
    command += ["--port", str(port), "--out", str(folder / "images")]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    IMAGE_FOLDERS[url] = folder / "images"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"rpg ui exited with {proc.returncode}:\n{server_log(folder)}")
            try:
                with urllib.request.urlopen(url + "api/config", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"rpg ui did not answer within 180 s:\n{server_log(folder)}")
                time.sleep(0.25)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


#: The --out folder of each server the module started, by URL.
IMAGE_FOLDERS: dict[str, Path] = {}


def server_images(url: str) -> Path:
    return IMAGE_FOLDERS[url]


def server_log(folder: Path) -> str:
    return (folder / "server.log").read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, server: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server)
    expect(page.locator("#planner option[value=rules]")).to_be_attached()
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(page: Any, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def drag(page: Any, selector: str, dx: float, dy: float) -> None:
    box = page.locator(selector).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y + dy, steps=6)
    page.mouse.up()


def drop_file(page: Any, selector: str, path: Path) -> None:
    """Drop ``path`` on ``selector`` as a file dragged from the desktop would be."""
    transfer = page.evaluate_handle(
        """([name, b64]) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], name, {type: "image/png"}));
          return transfer;
        }""",
        [path.name, base64.b64encode(path.read_bytes()).decode("ascii")],
    )
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def generate(page: Any, steps: int) -> None:
    page.fill("#steps", str(steps))
    page.click("#generate-btn")


def test_plan_edit_generate_download_reopen(page: Any, tmp_path: Path) -> None:
    # Plan: three things from left to right → three regions on the canvas.
    page.fill("#prompt", PROMPT)
    page.select_option("#planner", "rules")
    page.click("#plan-btn")
    regions = page.locator("#canvas .region")
    expect(regions).to_have_count(3)
    expect(page.locator("#split-ratio")).to_have_value("1,1,1")
    expect(page.locator("#plan-info")).to_be_visible()
    expect(regions.nth(1)).to_contain_text("blue mug")
    shot(page, tmp_path, "01-planned")

    # Drag the divider between the first two regions to the right: the split ratio follows.
    drag(page, '.col-divider[data-row="0"][data-col="0"]', 90, 0)
    expect(page.locator("#split-ratio")).not_to_have_value("1,1,1")
    ratio = page.input_value("#split-ratio")
    widths = [float(w) for w in ratio.split(",")]
    assert len(widths) == 3 and widths[0] > widths[1] and widths[2] == 1, ratio
    shot(page, tmp_path, "02-dragged")

    # Select the middle region and rewrite its prompt: the label and the BREAK text follow.
    regions.nth(1).click()
    expect(regions.nth(1)).to_have_class(re.compile("selected"))
    page.fill("#region-prompt", "a green teapot")
    expect(regions.nth(1)).to_contain_text("a green teapot")
    expect(page.locator("#prompts")).to_have_value(re.compile(r"BREAK a green teapot BREAK"))
    expect(page.locator("#split-ratio")).to_have_value(ratio)
    shot(page, tmp_path, "03-edited")

    # Generate: the progress bar counts denoising steps, then the image arrives.
    page.fill("#seed", "11")
    page.evaluate(RECORD_STATUS)
    generate(page, 30)
    expect(page.locator("#progress")).to_be_visible()
    expect(page.locator("#gallery figure")).to_have_count(1, timeout=120_000)
    expect(page.locator("#status")).to_have_text("done")
    seen = page.evaluate("window.statuses")
    assert any(re.fullmatch(r"step \d+/30", s) for s in seen), seen
    assert page.evaluate("document.getElementById('progress').value") == 30
    assert page.evaluate("document.querySelector('#gallery img').naturalWidth") == 64
    shot(page, tmp_path, "04-generated")

    # "use this seed" copies the image's seed into the seed field.
    page.fill("#seed", "")
    page.click("#gallery .use-seed")
    expect(page.locator("#seed")).to_have_value("11")

    # Download: the PNG carries the edited plan and the request.
    with page.expect_download() as info:
        page.click("#gallery a.download")
    png = tmp_path / "downloaded.png"
    info.value.save_as(png)
    request = load_request(png)
    assert request.plan is not None
    assert request.plan.to_split_ratio() == ratio
    assert request.plan.prompts[1] == "a green teapot"
    assert (request.seed, request.steps, request.prompt) == (11, 30, PROMPT)

    # Reopen it in a fresh page: the editor shows the same plan and settings.
    page.reload()
    expect(page.locator("#planner option[value=rules]")).to_be_attached()
    expect(regions).to_have_count(0)
    drop_file(page, "#dropzone", png)
    expect(regions).to_have_count(3)
    expect(page.locator("#split-ratio")).to_have_value(ratio)
    expect(page.locator("#prompts")).to_have_value(request.plan.to_prompt_text(include_base=False))
    expect(page.locator("#seed")).to_have_value("11")
    expect(page.locator("#steps")).to_have_value("30")
    expect(page.locator("#prompt")).to_have_value(PROMPT)
    shot(page, tmp_path, "05-reopened")


def test_invalid_edits_are_inline_and_the_app_keeps_working(page: Any, tmp_path: Path) -> None:
    # The rules planner cannot look at images, so there is no Refine button.
    expect(page.locator("#refine-btn")).to_be_hidden()
    page.fill("#split-ratio", "1,1")
    page.fill("#prompts", "a castle BREAK a lake")
    regions = page.locator("#canvas .region")
    expect(regions).to_have_count(2)

    # An invalid split ratio: an inline message, and the last valid plan stays on the canvas.
    page.fill("#split-ratio", "1,oops")
    error = page.locator("#text-error")
    expect(error).to_be_visible()
    expect(error).to_contain_text("oops")
    expect(page.locator("#split-ratio")).to_have_attribute("aria-invalid", "true")
    expect(regions).to_have_count(2)
    shot(page, tmp_path, "06-invalid-ratio")

    # Deleting the only region of a one-region plan is refused next to the buttons.
    page.fill("#split-ratio", "1")
    page.fill("#prompts", "a castle")
    expect(error).to_be_hidden()
    expect(regions).to_have_count(1)

    # A base ratio out of range: the server names the field, and only that field is marked.
    page.fill("#base-ratio", "2")
    expect(error).to_contain_text("base_ratio")
    expect(page.locator("#base-ratio")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#split-ratio")).to_have_attribute("aria-invalid", "false")
    page.fill("#base-ratio", "0.3")
    expect(error).to_be_hidden()
    page.click('[data-edit="delete_region"]')
    expect(page.locator("#edit-error")).to_contain_text("at least one region")
    page.click('[data-edit="split_region"]')
    expect(regions).to_have_count(2)
    expect(page.locator("#split-ratio")).to_have_value("0.5,0.5")

    # A PNG without rpg metadata gets a clear message.
    plain = tmp_path / "plain.png"
    Image.new("RGB", (16, 16), "white").save(plain)
    page.set_input_files("#reopen-file", str(plain))
    expect(page.locator("#reopen-error")).to_contain_text("plain.png is a PNG without rpg metadata")

    # A long render runs; a second tab's render waits in the queue behind it.
    page.fill("#prompt", "a castle above a lake")
    generate(page, 1000)
    expect(page.locator("#status")).to_have_text(re.compile(r"step \d+/1000"), timeout=60_000)
    other = page.context.new_page()
    other.goto(page.url)
    other.fill("#prompt", "a lighthouse on a cliff")
    other.fill("#split-ratio", "1;1")
    other.fill("#prompts", "a lighthouse BREAK a cliff")
    expect(other.locator("#canvas .region")).to_have_count(2)
    generate(other, 2)
    expect(other.locator("#status")).to_have_text("queued: 1 job ahead")
    shot(other, tmp_path, "07-second-tab-queued")

    # Cancel stops the first render; the queued one then renders, and so does the next.
    page.click("#cancel-btn")
    expect(page.locator("#status")).to_have_text(re.compile("cancelled"), timeout=60_000)
    expect(page.locator("#generate-btn")).to_be_enabled()
    expect(other.locator("#gallery figure")).to_have_count(1, timeout=120_000)
    generate(page, 2)
    expect(page.locator("#gallery figure")).to_have_count(1, timeout=120_000)
    expect(page.locator("#gen-error")).to_be_hidden()
    shot(page, tmp_path, "08-after-cancel")


# A page on another origin (another loopback port) that tries every way a web page can send
# a render request without the user's consent.
EVIL_PAGE = """<!doctype html><html><body>
<form id="form" method="POST" enctype="text/plain" target="sink"></form>
<iframe name="sink"></iframe>
<script>
const target = new URLSearchParams(location.search).get("target");
const body = JSON.stringify({request: {prompt: "pwned", steps: 2, seed: 1}});
window.results = {};
async function attack() {
  try {  // a "simple" request: no preflight, the answer is opaque to this page
    await fetch(target + "api/generate", {method: "POST", mode: "no-cors", body,
                                          headers: {"content-type": "text/plain"}});
    window.results.simple = "sent";
  } catch (e) { window.results.simple = "blocked: " + e; }
  try {  // JSON needs a CORS preflight, which rpg ui never grants
    const r = await fetch(target + "api/generate", {method: "POST", body,
                                                    headers: {"content-type": "application/json"}});
    window.results.json = "answered " + r.status;
  } catch (e) { window.results.json = "blocked: " + e; }
  const form = document.getElementById("form");  // a classic form post
  form.action = target + "api/generate";
  const field = document.createElement("input");
  field.name = '{"request": {"prompt": "pwned", "steps": 2, "x": "';
  field.value = '"}}';
  form.append(field);
  form.submit();
  window.results.form = "submitted";
}
</script></body></html>"""


@pytest.fixture
def evil_site() -> Iterator[str]:
    """A second web server on another loopback port serving :data:`EVIL_PAGE`; its URL."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = EVIL_PAGE.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    # "localhost" and another port: another origin than the editor's 127.0.0.1:PORT.
    yield f"http://localhost:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_a_page_on_another_origin_cannot_render_while_the_editor_still_works(
    browser: Any, server: str, evil_site: str, tmp_path: Path
) -> None:
    images = server_images(server)
    before = sorted(p.name for p in images.glob("*.png")) if images.exists() else []
    context = browser.new_context()
    evil = context.new_page()
    statuses: list[tuple[str, str, int]] = []
    evil.on(
        "response",
        lambda r: (
            statuses.append((r.request.method, r.url, r.status))
            if r.url.startswith(server)
            else None
        ),
    )
    evil.goto(f"{evil_site}?target={server}")
    with evil.expect_response(lambda r: r.url.startswith(server) and r.request.method == "POST"):
        evil.evaluate("attack()")
    expect(evil.locator("iframe")).to_be_attached()
    evil.wait_for_function("window.results.form === 'submitted' && window.results.json")
    results = evil.evaluate("window.results")
    assert results["json"].startswith("blocked"), results  # the preflight was refused
    # Every request that reached the server was refused there, before any handler ran.
    deadline = time.monotonic() + 30
    while len([s for s in statuses if s[0] == "POST"]) < 2:
        assert time.monotonic() < deadline, statuses
        evil.wait_for_timeout(100)
    assert statuses and all(status == 403 for _, _, status in statuses), statuses
    shot(evil, tmp_path, "09-other-origin")
    context.close()

    # The editor on its own origin still plans (a POST with JSON, same origin).
    own = browser.new_context().new_page()
    own.goto(server)
    expect(own.locator("#planner option[value=rules]")).to_be_attached()
    own.fill("#prompt", PROMPT)
    own.click("#plan-btn")
    expect(own.locator("#canvas .region")).to_have_count(3)
    own.context.close()
    after = sorted(p.name for p in images.glob("*.png")) if images.exists() else []
    assert after == before  # nothing was rendered for the other page


# ----------------------------------------------------------------------------- canvas mode


def canvas_xy(page: Any, fx: float, fy: float) -> tuple[float, float]:
    """Page coordinates of the point ``(fx, fy)`` (fractions) of the layout canvas."""
    box = page.locator("#canvas").bounding_box()
    return box["x"] + fx * box["width"], box["y"] + fy * box["height"]


def drag_on_canvas(page: Any, start: tuple[float, float], end: tuple[float, float]) -> None:
    page.mouse.move(*canvas_xy(page, *start))
    page.mouse.down()
    page.mouse.move(*canvas_xy(page, *end), steps=8)
    page.mouse.up()


def page_layers(page: Any) -> list[dict[str, Any]]:
    """The layers of the plan the page holds (what it sends to generate)."""
    return list(page.evaluate("() => state.view ? state.view.plan.layers : []"))


def wait_for_layers(page: Any, test: str) -> list[dict[str, Any]]:
    """Wait until ``test`` (JS, over ``layers``) holds for the page's plan; its layers."""
    page.wait_for_function(
        f"() => {{ const layers = state.view ? state.view.plan.layers : []; return {test}; }}"
    )
    return page_layers(page)


def close(box: Any, want: list[float], tolerance: float = 0.015) -> bool:
    return box is not None and all(abs(a - b) <= tolerance for a, b in zip(box, want, strict=True))


def test_canvas_draw_move_resize_reorder_mask_generate_reopen(page: Any, tmp_path: Path) -> None:
    page.fill("#prompt", "a red kite and a yellow balloon in a blue sky")
    page.fill("#base-prompt", "a blue sky")
    page.click("#mode-canvas")
    expect(page.locator("#mode-canvas")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#canvas-hint")).to_be_visible()
    expect(page.locator("#split-ratio")).not_to_be_editable()

    # Draw a box: the plan has one layer with that box, and the page asks for its prompt.
    drag_on_canvas(page, (0.1, 0.1), (0.4, 0.5))
    layers = page.locator("#canvas .layer")
    expect(layers).to_have_count(1)
    (kite,) = page_layers(page)
    assert close(kite["box"], [0.1, 0.1, 0.4, 0.5]), kite
    assert page.evaluate("state.view.plan.base_prompt") == "a blue sky"
    expect(page.locator("#region-prompt")).to_be_focused()
    page.keyboard.type("a red kite")
    expect(layers.nth(0)).to_contain_text("a red kite")
    wait_for_layers(page, "layers[0].prompt === 'a red kite'")

    # A second box on top of it, overlapping it: a drag that starts on the kite would move it,
    # so "Draw a box" first.
    page.click("#draw-btn")
    expect(page.locator("#draw-btn")).to_have_attribute("aria-pressed", "true")
    drag_on_canvas(page, (0.3, 0.35), (0.8, 0.9))
    expect(layers).to_have_count(2)
    page.keyboard.type("a yellow balloon")
    drawn = wait_for_layers(page, "layers.length === 2 && layers[1].prompt === 'a yellow balloon'")
    assert close(drawn[0]["box"], [0.1, 0.1, 0.4, 0.5]), drawn  # the kite did not move
    expect(page.locator("#draw-btn")).to_have_attribute("aria-pressed", "false")
    shot(page, tmp_path, "10-canvas-drawn")

    # Drag the kite by a visible part of it (its top left): its box moves, its size stays.
    drag_on_canvas(page, (0.15, 0.15), (0.25, 0.2))
    moved = wait_for_layers(page, "Math.abs(layers[0].box[0] - 0.2) < 0.015")
    assert close(moved[0]["box"], [0.2, 0.15, 0.5, 0.55]), moved[0]
    assert close(moved[1]["box"], [0.3, 0.35, 0.8, 0.9]), moved[1]  # the balloon stayed
    # Resize the kite (selected by the drag) by its bottom right handle.
    handle = page.locator('.handle[data-handle="se"]')
    expect(handle).to_have_count(1)
    box = handle.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(*canvas_xy(page, 0.6, 0.45), steps=6)
    page.mouse.up()
    resized = wait_for_layers(page, "Math.abs(layers[0].box[2] - 0.6) < 0.015")
    assert close(resized[0]["box"], [0.2, 0.15, 0.6, 0.45]), resized[0]
    shot(page, tmp_path, "11-canvas-moved")

    # The keyboard moves the selected box too (Shift: 5% a press).
    page.locator("#canvas").focus()
    page.keyboard.press("Shift+ArrowDown")
    nudged = wait_for_layers(page, "Math.abs(layers[0].box[1] - 0.2) < 0.001")
    assert close(nudged[0]["box"], [0.2, 0.2, 0.6, 0.5], 0.001), nudged[0]

    # Reorder: the kite goes up, over the balloon (Page Up), down again, and up by the button.
    page.keyboard.press("PageUp")
    wait_for_layers(page, "layers[1].prompt === 'a red kite'")
    page.click('[data-layer-edit="lower_layer"]')
    wait_for_layers(page, "layers[0].prompt === 'a red kite'")
    page.click('[data-layer-edit="raise_layer"]')
    order = wait_for_layers(page, "layers[1].prompt === 'a red kite'")
    assert [layer["prompt"] for layer in order] == ["a yellow balloon", "a red kite"]
    expect(page.locator("#layer-list li").first).to_contain_text("a red kite")  # top first
    expect(page.locator("#selected-label")).to_contain_text("Layer 2 of 2, top")

    # A mask image shapes the balloon (now the bottom layer).
    page.locator("#layer-list li", has_text="a yellow balloon").click()
    mask = tmp_path / "balloon-mask.png"
    image = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(image).ellipse((24, 24, 56, 60), fill=255)
    image.save(mask)
    page.set_input_files("#mask-file", str(mask))
    masked = wait_for_layers(page, "layers[0].mask !== null")
    assert masked[0]["box"] is None and masked[0]["prompt"] == "a yellow balloon"
    expect(page.locator("#canvas .layer.masked")).to_have_count(1)
    expect(page.locator("#layer-list li", has_text="a yellow balloon")).to_contain_text("mask")
    page.fill("#soft-edge", "0.05")
    wait_for_layers(page, "layers[0].mask.soft_edge === 0.05")

    # These layers do not tile the canvas: back to a grid is refused, with the reason.
    page.click("#mode-grid")
    expect(page.locator("#layer-error")).to_contain_text("shaped by a mask")
    expect(page.locator("#mode-canvas")).to_have_attribute("aria-pressed", "true")
    shot(page, tmp_path, "12-canvas-masked")

    # Generate: the PNG carries the canvas plan, masks included.
    plan = page.evaluate("state.view.plan")
    page.fill("#seed", "3")
    generate(page, 2)
    expect(page.locator("#gallery figure")).to_have_count(1, timeout=120_000)
    expect(page.locator("#gen-error")).to_be_hidden()
    with page.expect_download() as info:
        page.click("#gallery a.download")
    png = tmp_path / "canvas.png"
    info.value.save_as(png)
    request = load_request(png)
    assert request.plan is not None and request.plan.is_canvas
    assert request.plan.model_dump(mode="json") == plan

    # Reopen it in a fresh page: canvas mode with the same layers.
    page.reload()
    expect(page.locator("#planner option[value=rules]")).to_be_attached()
    drop_file(page, "#dropzone", png)
    expect(layers).to_have_count(2)
    expect(page.locator("#mode-canvas")).to_have_attribute("aria-pressed", "true")
    assert page.evaluate("state.view.plan") == plan
    expect(page.locator("#reopen-status")).to_contain_text("2 layers")
    shot(page, tmp_path, "13-canvas-reopened")


def test_a_grid_plan_converts_to_layers_and_back(page: Any) -> None:
    page.fill("#prompt", PROMPT)
    page.click("#plan-btn")
    expect(page.locator("#canvas .region")).to_have_count(3)
    page.click("#mode-canvas")
    layers = page.locator("#canvas .layer")
    expect(layers).to_have_count(3)
    expect(layers.nth(1)).to_contain_text("blue mug")
    thirds = page_layers(page)
    assert close(thirds[1]["box"], [1 / 3, 0, 2 / 3, 1], 1e-6), thirds
    # Typing, then selecting another layer before the edit is sent: the text goes to the layer
    # it was typed for.
    page.fill("#region-prompt", "a green teapot")
    page.locator("#layer-list li").first.click()  # the top layer, 3
    edited = wait_for_layers(page, "layers[0].prompt === 'a green teapot'")
    assert edited[2]["prompt"] == thirds[2]["prompt"]
    expect(page.locator("#region-prompt")).to_have_value(thirds[2]["prompt"])
    page.click("#mode-grid")
    expect(page.locator("#canvas .region")).to_have_count(3)
    expect(page.locator("#split-ratio")).to_have_value("1,1,1")
    expect(page.locator("#canvas .region").first).to_contain_text("a green teapot")
    # Delete on the canvas removes the selected layer (the first one after a conversion).
    page.click("#mode-canvas")
    expect(page.locator("#canvas .layer")).to_have_count(3)
    page.locator("#canvas").focus()
    page.keyboard.press("Delete")
    left = wait_for_layers(page, "layers.length === 2")
    assert [layer["prompt"] for layer in left] == [p["prompt"] for p in thirds[1:]]
