"""How much of the shapes world survives a VAE round trip, read by the shapes scorer.

A diffusion model can never draw more than its VAE decodes: if encode → decode turns small stars
into blobs, no amount of UNet training makes the scorer find them. So the training script checks
its VAE with this number before it spends the long part of its time on the UNet, and
``python -m rpg.eval.vae_fidelity FOLDER`` measures a saved model's VAE.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from rpg.eval.shapes import render, sample_scene
from rpg.eval.shapes_score import match_objects, read_image

__all__ = ["main", "reconstruction_binding"]


def _to_pixels(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1)[None] / 127.5 - 1.0


def _to_image(pixels: torch.Tensor) -> Image.Image:
    array = ((pixels[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy())


def reconstruction_binding(vae: Any, *, scenes: int = 64, seed: int = 12345) -> float:
    """The fraction of objects (colour and shape) the scorer still finds after encode → decode.

    Uses the posterior mean, as the training does. ``vae`` is any object with diffusers'
    ``AutoencoderKL`` ``encode(x).latent_dist.mode()`` / ``decode(z).sample`` interface.
    """
    if scenes < 1:
        raise ValueError(f"scenes must be at least 1, got {scenes}")
    rng = random.Random(seed)
    found = total = 0
    was_training = bool(getattr(vae, "training", False))
    if hasattr(vae, "eval"):
        vae.eval()
    try:
        with torch.no_grad():
            for _ in range(scenes):
                scene = sample_scene(rng)
                pixels = _to_pixels(render(scene))
                decoded = vae.decode(vae.encode(pixels).latent_dist.mode()).sample
                checks = match_objects(
                    read_image(_to_image(decoded)),
                    [f"{o.colour} {o.shape}" for o in scene.objects],
                )
                found += sum(c.found for c in checks)
                total += len(checks)
    finally:
        if was_training:
            vae.train()
    return found / total


def main(argv: Sequence[str] | None = None) -> float:
    p = argparse.ArgumentParser(
        prog="python -m rpg.eval.vae_fidelity",
        description="Print the fraction of shapes-world objects a model's VAE keeps "
        "(colour and shape, read by the shapes scorer) after encode -> decode.",
    )
    p.add_argument(
        "model",
        help="a diffusers pipeline folder or its vae/ folder, or a reserved name (shapes-sd)",
    )
    p.add_argument("--scenes", type=int, default=100, help="random scenes to round-trip")
    p.add_argument("--seed", type=int, default=12345)
    args = p.parse_args(argv)
    from diffusers import AutoencoderKL

    from rpg.backbones.tiny import tiny_model, tiny_model_path

    folder = tiny_model_path(args.model) if tiny_model(args.model) else Path(args.model)
    if (folder / "vae").is_dir():
        folder = folder / "vae"
    if not (folder / "config.json").is_file():
        p.error(f"{args.model} has no VAE (no config.json in it or in its vae/ folder)")
    vae = AutoencoderKL.from_pretrained(folder)
    score = reconstruction_binding(vae, scenes=args.scenes, seed=args.seed)
    print(f"reconstruction binding {score:.3f} over {args.scenes} scenes ({folder})")
    return score


if __name__ == "__main__":
    main()
