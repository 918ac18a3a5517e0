"""Single-file FLUX / SD3 transformers in their authors' layouts, loaded with ``--config``.

The writers in ``single_file`` are checked against diffusers' own converters; rpg then loads
the files into the config folder's pipeline and renders the folder's pixels, from Python and
from ``rpg generate``; the wrong or a missing ``--config`` is a clear error.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from diffusers.loaders.single_file_utils import (
    CHECKPOINT_KEY_NAMES,
    convert_flux_transformer_checkpoint_to_diffusers,
)
from PIL import Image
from safetensors.torch import save_file

from rpg.backbones.dit_single_file import FLUX1_WIDTH, flux_to_diffusers
from rpg.backbones.loading import resolve_model
from rpg.backbones.tiny.dit import tiny_sd3_transformer
from rpg.cli import main
from rpg.errors import ConfigurationError
from rpg.metadata import read_metadata
from rpg.models import GenerationRequest, RegionPlan
from rpg.orchestrator import RPG
from single_file import (
    flux_to_original_state_dict,
    save_transformer_single_file,
    sd3_to_original_state_dict,
)
from tiny_helpers import torch_threads

PROMPT = "a cat on the left and a dog on the right"
FAMILIES = ["flux", "sd3"]
TRANSFORMERS = {"flux": FluxTransformer2DModel, "sd3": SD3Transformer2DModel}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny FLUX and SD3 diffusers folders, written once for the module."""
    from rpg.backbones.tiny import tiny_model

    root = tmp_path_factory.mktemp("rpg-dit-single")
    out = {}
    for family in FAMILIES:
        found = tiny_model(f"tiny-{family}")
        assert found is not None
        out[family] = found.write(root / f"tiny-{family}")
    return out


@pytest.fixture(scope="module")
def files(folders: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tiny transformer as one original-layout ``.safetensors`` file."""
    root = tmp_path_factory.mktemp("rpg-dit-files")
    return {
        family: save_transformer_single_file(folder, root / f"{family}.safetensors")
        for family, folder in folders.items()
    }


def _transformer(folder: Path, family: str) -> Any:
    return TRANSFORMERS[family].from_pretrained(folder / "transformer")


def _realigned(pipe: RPG) -> RPG:
    """The transformer's weights copied into fresh (64-byte aligned) memory.

    Weights read from a safetensors file sit wherever the file put them; on the CPU, a weight's
    address can change the matmul kernels' summation order and so the last bit of a result
    (about 2e-7 here). Two loads of the same weights render the same pixels once both sit in
    fresh memory.
    """
    with torch.no_grad():
        for parameter in pipe.pipe.transformer.parameters():
            parameter.data = parameter.data.clone()
    return pipe


def _assert_same_weights(ours: Any, reference: Any) -> None:
    a, b = ours.state_dict(), reference.state_dict()
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


# ------------------------------------------------------------------ the writers, against diffusers


def test_sd3_file_round_trips_through_diffusers_from_single_file(
    folders: dict[str, Path], files: dict[str, Path]
) -> None:
    loaded = SD3Transformer2DModel.from_single_file(
        str(files["sd3"]), config=str(folders["sd3"]), subfolder="transformer",
        local_files_only=True,
    )  # fmt: skip
    _assert_same_weights(loaded, _transformer(folders["sd3"], "sd3"))


def test_flux_file_matches_diffusers_converter(folders: dict[str, Path]) -> None:
    """diffusers' FLUX converter splits the single-stream ``linear1`` at FLUX.1's width (3072)
    whatever the model's; padding q, k, v and the MLP rows to those sizes lets it read the tiny
    file, and cropping its output gives back every weight exactly."""
    reference = _transformer(folders["flux"], "flux")
    width = reference.config.num_attention_heads * reference.config.attention_head_dim
    original = flux_to_original_state_dict(reference)
    padded = dict(original)
    sizes = [FLUX1_WIDTH] * 3 + [4 * FLUX1_WIDTH]
    for key, value in original.items():
        if ".linear1." in key:
            parts = value.split([width, width, width, value.shape[0] - 3 * width])
            padded[key] = torch.cat(
                [torch.nn.functional.pad(p, (0, 0) * (p.ndim - 1) + (0, n - len(p)))
                 for p, n in zip(parts, sizes, strict=True)]
            )  # fmt: skip
    converted = convert_flux_transformer_checkpoint_to_diffusers(padded)
    state = reference.state_dict()
    for key, value in converted.items():
        if key.startswith("single_transformer_blocks.") and ".norm_" not in key:
            converted[key] = value[: len(state[key])]
    assert converted.keys() == state.keys()
    assert [k for k in state if not torch.equal(converted[k], state[k])] == []


@pytest.mark.parametrize("family", FAMILIES)
def test_files_are_recognised_by_diffusers_key_names(family: str, files: dict[str, Path]) -> None:
    """The files carry the names diffusers tests for; rpg reads the family from them."""
    info = resolve_model(files[family])
    keys = _keys(files[family])
    assert any(k in keys for k in CHECKPOINT_KEY_NAMES[family])
    # tiny-flux has a guidance embedding; diffusers itself types SD3 only at its released widths
    # ("v1" otherwise), rpg by the names
    expected = {"flux": "flux-dev", "sd3": "sd3"}[family]
    assert info.checkpoint_type == expected


def _keys(path: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys())


def test_rpg_flux_converter_reads_any_width_and_prefix(folders: dict[str, Path]) -> None:
    reference = _transformer(folders["flux"], "flux")
    original = flux_to_original_state_dict(reference)
    prefixed = {"model.diffusion_model." + k: v for k, v in original.items()}
    for checkpoint in (original, prefixed):
        converted = flux_to_diffusers(checkpoint)
        state = reference.state_dict()
        assert converted.keys() == state.keys()
        assert all(torch.equal(converted[k], state[k]) for k in state)
    with pytest.raises(ConfigurationError, match=r"not FLUX\.1 transformer weights: lora_up"):
        flux_to_diffusers({**original, "lora_up.weight": torch.zeros(1)})


# ------------------------------------------------------------------ rpg loading and rendering


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_renders_the_folder_pixels(
    family: str, folders: dict[str, Path], files: dict[str, Path], tmp_path: Path
) -> None:
    folder = folders[family]
    prefixed = tmp_path / "prefixed.safetensors"  # as some trainers save it
    save_transformer_single_file(folder, prefixed, prefix="model.diffusion_model.")
    stock = _realigned(RPG.from_pretrained(folder, device="cpu", dtype="float32"))
    plan = RegionPlan.from_split_ratio("1,1", ["a cat", "a dog"], base_prompt="pets")
    request = GenerationRequest(prompt=PROMPT, plan=plan, steps=2, seed=4, width=64, height=64)
    expected = np.asarray(stock.generate(request).images[0])
    for file in (files[family], prefixed):
        loaded = RPG.from_pretrained(file, config=folder, device="cpu", dtype="float32")
        assert loaded.backbone.name == family
        assert loaded.model == str(file.resolve())
        assert loaded.pipe.transformer.dtype == torch.float32
        _assert_same_weights(loaded.pipe.transformer, stock.pipe.transformer)
        _assert_same_weights(loaded.pipe.vae, stock.pipe.vae)  # the rest is the folder's
        latents = loaded.generate(request, output_type="latent").images[0]
        assert (
            latents - stock.generate(request, output_type="latent").images[0]
        ).abs().max() < 1e-5
        image = _realigned(loaded).generate(request).images[0]
        assert np.array_equal(np.asarray(image), expected)


def test_single_file_takes_the_dtype(folders: dict[str, Path], files: dict[str, Path]) -> None:
    loaded = RPG.from_pretrained(
        files["sd3"], config=folders["sd3"], device="cpu", dtype="bfloat16"
    )
    assert loaded.pipe.transformer.dtype == torch.bfloat16
    assert loaded.pipe.vae.dtype == torch.bfloat16


@pytest.mark.parametrize("family", FAMILIES)
def test_cli_generate_with_config(
    family: str,
    folders: dict[str, Path],
    files: dict[str, Path],
    tmp_path: Path,
) -> None:
    common = [PROMPT, "--size", "64x64", "--steps", "2", "--seed", "2", "--no-progress"]
    from_file, from_folder = tmp_path / "file.png", tmp_path / "folder.png"
    args = ["--model", str(files[family]), "--config", str(folders[family])]
    assert main(["generate", *common, *args, "--out", str(from_file)]) == 0
    assert main(["generate", *common, "--model", str(folders[family]), "--out",
                 str(from_folder)]) == 0  # fmt: skip
    assert read_metadata(from_file)["request"]["model"] == str(files[family].resolve())
    with Image.open(from_file) as a, Image.open(from_folder) as b:
        assert a.size == (64, 64)
        # the same weights at other addresses: equal up to float rounding (see _realigned)
        diff = np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int))
        assert diff.max() <= 1 and diff.mean() < 0.01


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_without_config_says_to_pass_one(
    family: str, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigurationError, match=rf"--config .*same model family \({family}"):
        RPG.from_pretrained(files[family], device="cpu")
    assert main(["generate", PROMPT, "--model", str(files[family]), "--steps", "1"]) != 0
    err = capsys.readouterr().err
    assert "--config" in err and "diffusers folder of the same model family" in err


@pytest.mark.parametrize(("family", "other"), [("sd3", "flux"), ("flux", "sd3")])
def test_config_of_another_family_is_refused(
    family: str, other: str, folders: dict[str, Path], files: dict[str, Path]
) -> None:
    pipeline = {"flux": "FluxPipeline", "sd3": "StableDiffusion3Pipeline"}[other]
    message = rf"is a '{family}' checkpoint .* is a {pipeline} folder \({other}\)"
    with pytest.raises(ConfigurationError, match=message):
        RPG.from_pretrained(files[family], config=folders[other], device="cpu")


def test_a_file_of_no_dit_family_is_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3)}, path)
    with pytest.raises(ConfigurationError, match=r"is a 'sd' checkpoint .*\(flux\)"):
        RPG.from_pretrained(path, config=folders["flux"], device="cpu")
    path = tmp_path / "other.safetensors"
    save_file({"something.weight": torch.zeros(2)}, path)
    with pytest.raises(ConfigurationError, match=r"own model family"):
        RPG.from_pretrained(path, config=folders["sd3"], device="cpu")


def test_config_may_be_a_cached_hub_id(
    folders: dict[str, Path], files: dict[str, Path], tmp_path: Path
) -> None:
    """``--config org/name@commit`` reads the configs and components from the cache."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    base = tmp_path / "hub" / "models--org--tiny-sd3"
    shutil.copytree(folders["sd3"], base / "snapshots" / commit)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    loaded = RPG.from_pretrained(
        files["sd3"], config=f"org/tiny-sd3@{commit}", cache_dir=tmp_path / "hub", device="cpu"
    )
    assert loaded.backbone.name == "sd3"
    _assert_same_weights(loaded.pipe.transformer, _transformer(folders["sd3"], "sd3"))
    assert Path(loaded.pipe.vae.config._name_or_path).is_relative_to(base)


def test_a_file_of_another_size_is_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    """A file with two joint blocks for a config with three."""
    full = sd3_to_original_state_dict(tiny_sd3_transformer(text_width=64, pooled_width=64))
    state = {k: v for k, v in full.items() if not k.startswith("joint_blocks.2.")}
    path = tmp_path / "two-blocks.safetensors"
    save_file(state, path)
    with pytest.raises(ConfigurationError, match=r"does not fit .* same size"):
        RPG.from_pretrained(path, config=folders["sd3"], device="cpu")


def test_flux_at_flux1_width_goes_through_diffusers_converter(
    folders: dict[str, Path], files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """rpg converts only the widths diffusers cannot: at FLUX.1's, the file goes to diffusers
    as it is (here its converter then fails on the tiny file: that is the point)."""
    import rpg.backbones.dit_single_file as module

    def not_called(checkpoint: Any) -> Any:
        raise AssertionError("rpg converted a file diffusers converts")

    monkeypatch.setattr(module, "FLUX1_WIDTH", 16)
    monkeypatch.setattr(module, "flux_to_diffusers", not_called)
    with pytest.raises(ConfigurationError, match="does not fit the transformer"):
        RPG.from_pretrained(files["flux"], config=folders["flux"], device="cpu")
