"""`rpg ui --model tiny-flux` in headless Chromium: the family's options are inputs on the page,
go into the render's request and PNG, and come back when the PNG is reopened.

Same setup as ``test_ui_browser.py`` (the real command on a free port, Debian's Chromium).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rpg.metadata import load_request
from test_ui_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    drop_file,
    expect,
    free_port,
    generate,
    server_log,
    sync_api,
)
from tiny_helpers import write_tiny_models

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def flux_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``rpg ui`` on tiny-flux with the rules planner; its URL and its --out folder."""
    folder = tmp_path_factory.mktemp("rpg-ui-flux-server")
    write_tiny_models(folder / "cache", ("tiny-flux",))
    port = free_port()
    env = {
        **os.environ,
        "RPG_CACHE_DIR": str(folder / "cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    command = [sys.executable, "-m", "rpg", "ui", "--model", "tiny-flux", "--planner", "rules"]
    command += ["--device", "cpu", "--port", str(port), "--out", str(folder / "images")]
    with (folder / "server.log").open("w") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
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
            yield url, folder / "images"
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_flux_options_on_the_page_render_and_reopen(
    chromium: Any, flux_server: tuple[str, Path]
) -> None:
    url, images = flux_server
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    scope = page.locator("#option-image_attention")
    expect(scope).to_be_visible()
    expect(scope).to_have_value("global")
    expect(page.locator("#option-regional_steps")).to_have_attribute("max", "1")
    expect(page.locator("#option-true_cfg_scale")).to_have_value("1")

    page.fill("#prompt", "a red cat on the left and a blue dog on the right")
    page.select_option("#option-image_attention", "region")
    page.fill("#option-regional_blocks", "2")
    generate(page, 1)
    expect(page.locator("#status")).to_have_text("done", timeout=120_000)
    expect(page.locator("#gallery figure")).to_have_count(1)
    png = next(images.glob("*.png"))
    assert load_request(png).options == {"image_attention": "region", "regional_blocks": 2}

    page.reload()
    expect(scope).to_have_value("global")
    drop_file(page, "#dropzone", png)
    expect(scope).to_have_value("region")
    expect(page.locator("#option-regional_blocks")).to_have_value("2")
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
