"""The VAE round-trip check that tells a training run whether its VAE can carry the shapes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from rpg.eval import vae_fidelity


class _Identity:
    """encode → decode gives back the pixels: every object survives."""

    def encode(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(latent_dist=SimpleNamespace(mode=lambda: x))

    def decode(self, z: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=z)


class _Flat(_Identity):
    """Decodes everything to one flat grey: no object survives."""

    def decode(self, z: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=torch.zeros_like(z))


def test_a_perfect_round_trip_keeps_every_object() -> None:
    assert vae_fidelity.reconstruction_binding(_Identity(), scenes=40) >= 0.99


def test_a_round_trip_that_loses_the_picture_keeps_nothing() -> None:
    assert vae_fidelity.reconstruction_binding(_Flat(), scenes=10) == 0.0


def test_scenes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        vae_fidelity.reconstruction_binding(_Identity(), scenes=0)


def test_command_line_names_a_folder_without_a_vae(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        vae_fidelity.main([str(tmp_path)])
    assert stop.value.code == 2
    assert "has no VAE" in capsys.readouterr().err


def test_command_line_takes_the_reserved_name_of_the_shipped_model(capsys) -> None:
    from rpg.backbones.tiny import tiny_model_path

    kept = vae_fidelity.main(["shapes-sd", "--scenes", "4"])
    out = capsys.readouterr().out
    assert f"reconstruction binding {kept:.3f} over 4 scenes" in out
    assert f"({tiny_model_path('shapes-sd') / 'vae'})" in out


def test_training_stops_the_vae_once_the_round_trip_reaches_the_target(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    from rpg.eval import train_shapes

    calls: list[int] = []

    def fake_binding(vae, *, scenes: int = 64, seed: int = 12345) -> float:
        calls.append(scenes)
        return 0.5 if len(calls) == 1 else 0.995

    monkeypatch.setattr(vae_fidelity, "reconstruction_binding", fake_binding)
    train_shapes.main(
        [
            "--out",
            str(tmp_path / "m"),
            "--steps",
            "1",
            "--vae-steps",
            "50",
            "--vae-check-every",
            "1",
            "--vae-target",
            "0.99",
            "--batch",
            "2",
            "--vae-batch",
            "2",
            "--log-every",
            "1",
            "--threads",
            "1",
            "--checkpoint-every",
            "5",
            "--latent-channels",
            "8",
            "--vae-channels",
            "8,8,8",
        ]
    )
    out = capsys.readouterr().out
    assert len(calls) == 2  # checked after steps 1 and 2, stopped at 2 of 50
    assert "vae  step 2/50 reconstruction binding 0.995" in out
    assert "reached --vae-target 0.99" in out
    assert "vae  step 3/50" not in out
    assert (tmp_path / "m-vae-best" / "config.json").is_file()  # the best round trip, kept
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "m")
    assert pipe.vae.config.latent_channels == 8 and pipe.unet.config.in_channels == 8
