"""``--lora`` in ``rpg generate`` (with ``--from``) and ``rpg batch``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_helpers import write_lora
from rpg.cli import main
from rpg.lora import file_sha256
from rpg.metadata import load_request, read_metadata

PROMPT = "A red cat on the left and a blue dog on the right"
RENDER = ["--seed", "1", "--steps", "2", "--size", "64x64"]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


@pytest.fixture(scope="module")
def lora_file(tiny_rpg, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lora(tiny_rpg.pipe, tmp_path_factory.mktemp("cli-lora") / "s.safetensors", seed=3)


def test_generate_records_the_lora_and_from_re_renders_it(
    rpg_cache: Path, lora_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y, plain = tmp_path / "x.png", tmp_path / "y.png", tmp_path / "plain.png"
    assert main(["generate", PROMPT, *RENDER, "--lora", f"{lora_file}:0.6", "--out", str(x)]) == 0
    recorded = read_metadata(x)["request"]["loras"]
    assert recorded == [{"name": str(lora_file), "scale": 0.6, "sha256": file_sha256(lora_file)}]
    assert main(["generate", "--from", str(x), "--out", str(y)]) == 0
    assert np.array_equal(pixels(x), pixels(y))
    # --no-lora renders the same request without it; a plain render has no "loras" key at all
    assert main(["generate", "--from", str(x), "--no-lora", "--out", str(plain)]) == 0
    assert "loras" not in read_metadata(plain)["request"]
    assert not np.array_equal(pixels(x), pixels(plain))
    # --lora with --from replaces the recorded LoRAs (another scale, another image)
    half = tmp_path / "half.png"
    assert (
        main(["generate", "--from", str(x), "--lora", f"{lora_file}:0.3", "--out", str(half)]) == 0
    )
    assert load_request(half).loras[0].scale == 0.3
    assert not np.array_equal(pixels(x), pixels(half))


def test_a_changed_lora_file_stops_from_before_the_model_loads(
    rpg_cache: Path, lora_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    own = tmp_path / "own.safetensors"
    own.write_bytes(lora_file.read_bytes())
    x = tmp_path / "x.png"
    assert main(["generate", PROMPT, *RENDER, "--lora", str(own), "--out", str(x)]) == 0
    own.write_bytes(lora_file.read_bytes() + b"\0")
    capsys.readouterr()
    assert main(["generate", "--from", str(x), "--out", str(tmp_path / "y.png")]) == 1
    err = capsys.readouterr().err
    assert "has changed since the image was rendered" in err and str(own) in err
    own.unlink()
    assert main(["generate", "--from", str(x), "--out", str(tmp_path / "y.png")]) == 1
    assert "no such file or folder" in capsys.readouterr().err


def test_bad_lora_flags_are_one_line_errors_before_any_model_loads(
    rpg_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:
    import rpg.cli.generate as generate

    def no_load(*args: object, **kw: object) -> None:
        raise AssertionError("the model must not load")

    monkeypatch.setattr(generate, "load_rpg", no_load)
    out = str(tmp_path / "x.png")
    with pytest.raises(SystemExit):
        main(["generate", PROMPT, "--lora", "x.safetensors:99", "--out", out])
    assert "--lora" in capsys.readouterr().err
    assert main(["generate", PROMPT, "--lora", "missing.safetensors", "--out", out]) == 1
    assert "LoRA 'missing.safetensors': no such file" in capsys.readouterr().err
    assert main(["generate", PROMPT, "--lora", "a.safetensors", "--no-lora", "--out", out]) == 2
    assert "contradict" in capsys.readouterr().err


def test_batch_lines_take_loras_and_the_flag_is_their_default(
    rpg_cache: Path, lora_file: Path, tmp_path: Path
) -> None:
    src = tmp_path / "requests.jsonl"
    lines = [
        {"prompt": "a red cat", "loras": [f"{lora_file}:0.5"]},
        {"prompt": "a red cat"},
        {"prompt": "a red cat", "loras": []},
    ]
    src.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = ["batch", str(src), "--out", str(out), "--seed", "2", "--steps", "2", "--size", "64x64"]
    assert main([*argv, "--lora", f"{lora_file}:0.9", "--no-progress"]) == 0
    requests = [load_request(p) for p in sorted(out.glob("*.png"))]
    scales = sorted(tuple(lo.scale for lo in r.loras) for r in requests)
    assert scales == [(), (0.5,), (0.9,)]
    assert all(lo.sha256 == file_sha256(lora_file) for r in requests for lo in r.loras)


def test_the_editor_api_renders_with_whole_image_and_region_loras(
    tiny_rpg, lora_file: Path, tmp_path: Path
) -> None:
    """What the editor's LoRA fields send: ``"NAME:SCALE"`` strings in the request and on a
    region of the plan; the PNG records both with the file's hash, and reopens with them."""
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from lora_helpers import CROSS_KV
    from rpg.ui import build_app
    from ui_helpers import wait

    kv = write_lora(tiny_rpg.pipe, tmp_path / "kv.safetensors", targets=CROSS_KV, seed=8)
    client = TestClient(
        build_app(tiny_rpg, output_dir=tmp_path / "out", planner="rules"),
        base_url="http://localhost",
    )
    plan = {
        "rows": [{"regions": [{"prompt": "a cat", "loras": [f"{kv}:0.7"]}, {"prompt": "a dog"}]}]
    }
    checked = client.post("/api/plan/check", json={"plan": plan})
    assert checked.status_code == 200, checked.text
    request = {"prompt": "pets", "steps": 2, "seed": 3, "loras": [f"{lora_file}:0.5"]}
    job = wait(client, client.post("/api/generate", json={"request": request, "plan": plan}).json())
    assert job["state"] == "done", job
    png = client.get(job["images"][0]["url"]).content
    reopened = client.post(
        "/api/reopen", content=png, headers={"content-type": "image/png", "x-filename": "a.png"}
    ).json()
    assert reopened["request"]["loras"][0]["sha256"] == file_sha256(lora_file)
    region = reopened["view"]["plan"]["rows"][0]["regions"][0]
    assert region["loras"][0]["scale"] == 0.7 and region["loras"][0]["sha256"] == file_sha256(kv)
    bad = client.post("/api/generate", json={"request": {**request, "loras": ["x:99"]}})
    assert bad.status_code == 422
