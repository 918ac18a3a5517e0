"""Tiny models behind a lazy registry, one cache folder, one image digest, and what
``request.model`` records."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rpg.backbones.loading import resolve_model
from rpg.backbones.tiny import (
    TINY_SD,
    register_tiny_model,
    tiny_model,
    tiny_model_path,
    tiny_models,
)
from rpg.errors import ModelNotFoundError, RegistryError
from rpg.metadata import image_sha256
from rpg.models import GenerationRequest, RegionPlan
from rpg.orchestrator import RPG
from rpg.paths import cache_dir
from rpg.planners.cache import PlanCache, cache_key


def test_the_reserved_names_are_registered_by_kind() -> None:
    assert list(tiny_models("pipeline")) == [
        "tiny-sd",
        "tiny-sdxl",
        "tiny-flux",
        "tiny-sd3",
        "tiny-flux2-klein",
        "shapes-sd",
    ]
    assert list(tiny_models("controlnet")) == ["tiny-controlnet", "tiny-sdxl-controlnet"]
    assert tiny_model("tiny-controlnet", "pipeline") is None
    with pytest.raises(ModelNotFoundError, match="tiny-sd, tiny-sdxl"):
        tiny_model_path("tiny-nothing", "pipeline")


def test_shapes_sd_is_a_trained_model_used_where_the_package_ships_it(tmp_path: Path) -> None:
    import rpg.eval

    shapes = tiny_model("shapes-sd", "pipeline")
    assert shapes is not None and shapes.trained
    assert shapes.path() == Path(rpg.eval.__file__).parent / "shapes_sd"
    assert (shapes.path() / "model_index.json").is_file()
    copied = shapes.write(tmp_path / "copy")
    assert (copied / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    with pytest.raises(RegistryError, match="start with 'tiny-'"):
        register_tiny_model("my-model", "m:f", description="x")


def test_importing_the_registry_loads_no_model_code() -> None:
    code = (
        "import sys, rpg.backbones.tiny as t; assert len(t.tiny_models()) == 8; "
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_a_registered_writer_is_written_once_into_the_cache(
    tiny_sd_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPG_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[Path] = []

    def write(path: str | os.PathLike[str], seed: int = 0) -> Path:
        calls.append(Path(path))
        shutil.copytree(tiny_sd_path, path)
        return Path(path)

    entry = register_tiny_model("tiny-test-copy", write, description="a copy of tiny-sd")
    try:
        with pytest.raises(RegistryError, match="already registered"):
            register_tiny_model("tiny-test-copy", write, description="again")
        first = resolve_model("tiny-test-copy")
        second = resolve_model("tiny-test-copy")
        assert first.kind == second.kind == "tiny" and first.path == cache_dir("tiny-test-copy")
        assert calls == [cache_dir("tiny-test-copy")]  # written once, then reused
        assert first.pipeline_class_name == "StableDiffusionPipeline"
        assert entry.marker == "model_index.json"
    finally:
        from rpg.backbones import tiny

        tiny._REGISTRY.pop("tiny-test-copy", None)
    with pytest.raises(RegistryError, match="start with 'tiny-'"):
        register_tiny_model("small", write, description="x")


def test_one_cache_folder_for_models_and_plans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rpg.backbones.loading as loading
    import rpg.paths
    import rpg.planners.cache as plans

    monkeypatch.setenv("RPG_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path and PlanCache().directory == tmp_path / "plans"
    assert tiny_model(TINY_SD) is not None
    for module in (loading, plans):
        assert getattr(module, "cache_dir", rpg.paths.cache_dir) is rpg.paths.cache_dir


def test_one_image_digest_for_controls_and_plan_cache_keys() -> None:
    import rpg.planners.transport as transport

    assert not hasattr(transport, "image_digest")
    a = Image.new("RGB", (8, 8), "red")
    b = Image.new("RGB", (8, 8), "blue")
    assert cache_key("p", "m", "x", image=a) == cache_key("p", "m", "x", image=a.copy())
    assert cache_key("p", "m", "x", image=a) != cache_key("p", "m", "x", image=b)
    assert image_sha256(a) != image_sha256(b)


# --------------------------------------------------------------------------- request.model


def test_request_records_the_folder_that_was_loaded(
    tiny_sd_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tiny_sd_path.parent)
    rpg = RPG.from_pretrained(f".{os.sep}{tiny_sd_path.name}", device="cpu", dtype="float32")
    rpg.pipe.set_progress_bar_config(disable=True)
    out = rpg.generate(GenerationRequest(prompt="a cat", plan=RegionPlan.single("a cat"), steps=1))
    assert out.request.model == str(tiny_sd_path.resolve())
    assert rpg.model == out.request.model


def test_request_records_a_tiny_name_as_is(rpg_cache: Path) -> None:
    assert RPG.from_pretrained("tiny-sd", device="cpu").model == "tiny-sd"


def _fake_hub(root: Path, folder: Path, repo: str, commit: str) -> Path:
    """A Hugging Face cache holding ``folder`` as the ``main`` snapshot of ``repo``."""
    base = root / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, base / "snapshots" / commit)
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    return root


def test_request_records_the_hub_snapshot_and_it_loads_again(
    tiny_sd_path: Path, tmp_path: Path
) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    hub = _fake_hub(tmp_path / "hub", tiny_sd_path, "org/tiny", commit)
    info = resolve_model("org/tiny", cache_dir=hub)
    assert info.canonical == f"org/tiny@{commit}"
    pinned = resolve_model(f"org/tiny@{commit}", cache_dir=hub)
    assert pinned.path == info.path and pinned.canonical == info.canonical
    with pytest.raises(ModelNotFoundError, match="--revision v2"):
        resolve_model("org/tiny@v2", cache_dir=hub)

    rpg = RPG.from_pretrained(f"org/tiny@{commit}", device="cpu", cache_dir=hub)
    rpg.pipe.set_progress_bar_config(disable=True)
    out = rpg(plan=RegionPlan.single("a cat"), num_inference_steps=1, seed=1, output_type="np")
    assert out.request.model == f"org/tiny@{commit}"
    plain = RPG.from_pretrained(tiny_sd_path, device="cpu")
    plain.pipe.set_progress_bar_config(disable=True)
    again = plain.generate(out.request, output_type="np")
    assert np.array_equal(out.images[0], again.images[0])
    assert json.loads(out.request.model_dump_json())["model"] == f"org/tiny@{commit}"
