"""The editor's img2img and hires box in a real browser: upload, render, download, reopen.

Uses the browser and ``rpg ui`` server fixtures of ``test_ui_browser`` (skipped like it when
Playwright or Chromium is missing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from rpg.metadata import load_request, read_init_image
from test_ui_browser import browser, drop_file, expect, page, server  # noqa: F401 - fixtures

PROMPT = "a red cat on the left and a blue dog on the right"


def test_upload_an_init_image_render_with_hires_download_and_reopen(
    page: Any,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    picture = Image.fromarray(
        np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB"
    )
    start = tmp_path / "start.png"
    picture.save(start)

    page.fill("#prompt", PROMPT)
    page.click("#img2img-box summary")
    page.set_input_files("#init-file", str(start))
    expect(page.locator("#init-status")).to_have_text("start.png: 64x64")
    expect(page.locator("#init-clear")).to_be_enabled()
    page.fill("#strength", "0.6")
    page.fill("#hires-scale", "1.5")
    page.fill("#hires-strength", "0.7")
    page.fill("#seed", "4")
    page.fill("#steps", "3")
    page.click("#generate-btn")
    expect(page.locator("#gallery figure")).to_have_count(1, timeout=120_000)
    assert page.evaluate("document.querySelector('#gallery img').naturalWidth") == 96

    with page.expect_download() as info:
        page.click("#gallery a.download")
    png = tmp_path / "downloaded.png"
    info.value.save_as(png)
    request = load_request(png)
    assert request.strength == 0.6 and request.init_image is None  # an upload, not a path
    assert request.hires is not None and (request.hires.scale, request.hires.strength) == (1.5, 0.7)
    embedded = read_init_image(png)
    assert embedded is not None and embedded.tobytes() == picture.tobytes()

    # Reopen in a fresh page: the settings and the embedded picture come back.
    page.reload()
    expect(page.locator("#planner option[value=rules]")).to_be_attached()
    drop_file(page, "#dropzone", png)
    expect(page.locator("#init-status")).to_have_text("embedded in the PNG: 64x64")
    expect(page.locator("#strength")).to_have_value("0.6")
    expect(page.locator("#hires-scale")).to_have_value("1.5")
    # Clearing it renders from noise again: the strength is then not sent.
    page.click("#init-clear")
    expect(page.locator("#init-status")).to_have_text("")
