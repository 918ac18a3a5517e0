"""``rpg ui`` offers the loaded family's own options from its backbone's declaration.

Driven over HTTP without a browser, as ``test_ui_app.py``: ``/api/config`` describes one input
per option of ``backbone.options_model``; ``request.options`` is checked against the loaded
family before a job is queued, rendered, and recorded in the PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the 'ui' extra (starlette) is not installed")
pytest.importorskip("httpx", reason="starlette's TestClient needs httpx")

from starlette.testclient import TestClient

from rpg.backbones.options import FluxOptions, option_fields
from rpg.metadata import load_request
from rpg.models import RegionPlan
from rpg.orchestrator import RPG
from rpg.ui import build_app
from tiny_helpers import torch_threads, write_tiny_models
from ui_helpers import wait

LOCAL = "http://localhost"


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> RPG:
    root = tmp_path_factory.mktemp("rpg-ui-flux")
    write_tiny_models(root, ("tiny-flux",))
    pipe = RPG.from_pretrained(root / "tiny-flux", device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    return pipe


def _client(pipe: Any, tmp_path: Path) -> TestClient:
    app = build_app(pipe, output_dir=tmp_path / "out", planner="rules")
    return TestClient(app, base_url=LOCAL)


def test_the_sd_family_offers_its_own_options_and_refuses_foreign_ones(
    tiny_rpg: Any, tmp_path: Path
) -> None:
    client = _client(tiny_rpg, tmp_path)
    config = client.get("/api/config").json()
    names = [c["name"] for c in config["options"]]
    assert names == ["image_attention", "group_norm", "regional_steps"]
    assert all(c["choices"] == ["global", "region"] for c in config["options"][:2])
    names = [s["name"] for s in config["schedulers"]]
    assert names[0] == config["scheduler"] == "dpm++2m-karras"
    assert {"euler", "default"} <= set(names)
    body = {"request": {"prompt": "a cat", "steps": 2, "options": {"true_cfg_scale": 2}}}
    out = client.post("/api/generate", json=body)
    assert out.status_code == 422, out.text
    assert "true_cfg_scale does not apply to" in out.json()["error"]
    assert out.json()["field"] == "request"


def test_flux_offers_its_declared_options_with_their_bounds(flux: RPG, tmp_path: Path) -> None:
    config = _client(flux, tmp_path).get("/api/config").json()
    # FLUX renders with its own flow-matching scheduler only: the page offers nothing else
    assert [s["name"] for s in config["schedulers"]] == ["default"]
    assert config["scheduler"] == "default"
    controls = {c["name"]: c for c in config["options"]}
    assert list(controls) == [f.name for f in option_fields(FluxOptions)]
    assert controls["image_attention"]["choices"] == ["global", "region"]
    assert controls["image_attention"]["default"] == "global"
    steps = controls["regional_steps"]
    assert (steps["kind"], steps["min"], steps["exclusive_min"], steps["max"]) == (
        "float", 0, True, 1
    )  # fmt: skip
    assert (controls["regional_blocks"]["kind"], controls["regional_blocks"]["min"]) == ("int", 1)
    assert controls["true_cfg_scale"]["max"] == 100
    assert "True classifier-free guidance" in controls["true_cfg_scale"]["description"]


def test_flux_options_are_checked_rendered_and_recorded(flux: RPG, tmp_path: Path) -> None:
    client = _client(flux, tmp_path)
    request = {"prompt": "a cat and a dog", "steps": 2, "seed": 3, "width": 64, "height": 64}
    too_far = {**request, "options": {"regional_steps": 5}}
    bad = client.post("/api/generate", json={"request": too_far})
    assert bad.status_code == 422 and "regional_steps" in bad.json()["error"]

    plan = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"]).model_dump(mode="json")
    chosen = {**request, "options": {"image_attention": "region", "regional_blocks": 2}}
    body = {"request": chosen, "plan": plan}
    with torch_threads(1):
        job = wait(client, client.post("/api/generate", json=body).json())
    assert job["state"] == "done", job
    saved = load_request(tmp_path / "out" / job["images"][0]["name"])
    assert saved.options == {"image_attention": "region", "regional_blocks": 2}
    reopened = client.post(
        "/api/reopen",
        content=(tmp_path / "out" / job["images"][0]["name"]).read_bytes(),
        headers={"content-type": "image/png", "x-filename": "x.png"},
    ).json()
    assert reopened["request"]["options"] == {"image_attention": "region", "regional_blocks": 2}


def test_the_page_loads_the_options_script_before_the_app(tiny_rpg: Any, tmp_path: Path) -> None:
    client = _client(tiny_rpg, tmp_path)
    page = client.get("/").text
    assert page.index('src="static/options.js"') < page.index('src="static/app.js"')
    assert 'id="family-options"' in page
    script = client.get("/static/options.js")
    assert script.status_code == 200 and "familyOptions" in script.text
