"""Model references, devices and dtypes, the tiny model, and the errors for missing models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rpg.backbones.loading import resolve_device, resolve_dtype, resolve_model
from rpg.backbones.sd import StableDiffusionBackbone
from rpg.backbones.tiny import tiny_model_path
from rpg.backbones.tiny.components import byte_level_vocab
from rpg.backbones.tiny.sd import write_tiny_sd
from rpg.errors import ConfigurationError, ModelNotFoundError
from rpg.models import GenerationRequest
from rpg.orchestrator import RPG


def test_local_folder_is_read_without_loading(tiny_sd_path: Path) -> None:
    info = resolve_model(tiny_sd_path)
    assert info.kind == "folder"
    assert info.pipeline_class_name == "StableDiffusionPipeline"
    assert not info.is_tiny


def test_tiny_name_is_written_once_and_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RPG_CACHE_DIR", str(tmp_path))
    info = resolve_model("tiny-sd")
    assert info.is_tiny and info.path == tmp_path / "tiny-sd"
    weights = next((tmp_path / "tiny-sd" / "unet").glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    assert tiny_model_path() == tmp_path / "tiny-sd"
    assert weights.stat().st_mtime_ns == stamp


def test_tiny_model_is_deterministic_per_seed(tmp_path: Path, tiny_sd_path: Path) -> None:
    def unet(folder: Path) -> dict[str, torch.Tensor]:
        return load_file(next((folder / "unet").glob("*.safetensors")))

    same = unet(write_tiny_sd(tmp_path / "same", seed=0))
    other = unet(write_tiny_sd(tmp_path / "other", seed=1))
    ref = unet(tiny_sd_path)
    assert all(torch.equal(ref[k], same[k]) for k in ref)
    assert any(not torch.equal(ref[k], other[k]) for k in ref)


def test_tiny_tokenizer_files_cover_every_byte(tiny_sd_path: Path) -> None:
    tok_dir = tiny_sd_path / "tokenizer"
    vocab = json.loads((tok_dir / "vocab.json").read_text(encoding="utf-8"))
    assert vocab == byte_level_vocab()[0]
    assert (tok_dir / "merges.txt").read_text(encoding="utf-8").startswith("#version")
    config = json.loads((tok_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["model_max_length"] == 77


def test_folder_without_model_index_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"no model_index\.json"):
        resolve_model(tmp_path)


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"no such file or folder.*tiny-sd"):
        resolve_model(tmp_path / "model.safetensors")


def test_missing_hub_model_offline_names_it_and_the_way_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        RPG.from_pretrained("nobody-here/no-such-model", cache_dir=tmp_path)
    message = str(info.value)
    assert "nobody-here/no-such-model" in message
    assert "HF_HUB_OFFLINE" in message
    assert "local diffusers folder" in message and "tiny-sd" in message


def test_not_a_model_reference(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="neither a local folder or file nor a hub id"):
        resolve_model("not a model")


def _fake_sd1_checkpoint(path: Path) -> Path:
    # The tensors diffusers looks at to tell an SD 1.x single file from others.
    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
            "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (
                torch.zeros(77, 8)
            ),
        },
        str(path),
    )
    return path


def test_single_file_architecture_is_detected_from_names_and_shapes(tmp_path: Path) -> None:
    info = resolve_model(_fake_sd1_checkpoint(tmp_path / "model.safetensors"))
    assert info.kind == "file"
    assert info.checkpoint_type == "v1"
    assert StableDiffusionBackbone.detect(info)


def test_single_file_offline_without_config_says_to_pass_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    checkpoint = _fake_sd1_checkpoint(tmp_path / "model.safetensors")
    with pytest.raises(ModelNotFoundError, match="pass config=FOLDER"):
        RPG.from_pretrained(checkpoint, device="cpu")


def test_single_file_with_a_config_folder_uses_its_model_index(
    tmp_path: Path, tiny_sd_path: Path
) -> None:
    checkpoint = _fake_sd1_checkpoint(tmp_path / "model.safetensors")
    info = resolve_model(checkpoint, config=tiny_sd_path)
    assert info.pipeline_class_name == "StableDiffusionPipeline"
    assert info.options["config"] == str(tiny_sd_path)


def test_unknown_load_option_is_rejected(tiny_sd_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"does not take option.*variantt"):
        StableDiffusionBackbone.load(tiny_sd_path, device="cpu", variantt="fp16")


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    with pytest.raises(ConfigurationError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigurationError, match="CUDA is not available"):
            resolve_device("cuda")


def test_dtypes() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_dtype(torch.float32, cpu) == torch.float32
    with pytest.warns(UserWarning, match="float16 is not supported well on the CPU"):
        assert resolve_dtype("float16", cpu) == torch.float32
    with pytest.raises(ConfigurationError, match="unknown dtype 'float8'"):
        resolve_dtype("float8", cpu)


def test_bfloat16_on_cpu_renders(tiny_sd_path: Path) -> None:
    pipe = RPG.from_pretrained(tiny_sd_path, device="cpu", dtype="bfloat16")
    pipe.pipe.set_progress_bar_config(disable=True)
    assert pipe.backbone.dtype == torch.bfloat16
    result = pipe.generate(GenerationRequest(prompt="a cat left and a dog right", steps=1))
    assert result.images[0].size == (64, 64)
