"""The training loops of ``shapes-sd``: the VAE's reconstruction, then the UNet and text encoder
on its latents with EMA weights, and the staged save of the pipeline folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rpg.eval.shapes import (
    IMAGE_SIZE,
    OBJECT_COUNT_WEIGHTS,
    Scene,
    caption,
    crop_scene,
    render,
    sample_scene,
    sample_training_example,
)
from rpg.eval.shapes_components import MAX_LENGTH, write_word_tokenizer


def sample_batch(
    rng: random.Random,
    n: int,
    drop: float,
    partial: float = 0.0,
    count_weights: Sequence[float] = OBJECT_COUNT_WEIGHTS,
) -> tuple[torch.Tensor, list[str]]:
    """``n`` fresh scenes as pixels in [-1, 1] and their captions (each dropped with ``drop``)."""
    scenes, captions = [], []
    for _ in range(n):
        scene, text = sample_training_example(rng, partial=partial, count_weights=count_weights)
        scenes.append(scene)
        captions.append("" if rng.random() < drop else text)
    return scene_pixels(scenes), captions


def scene_pixels(scenes: list[Scene]) -> torch.Tensor:
    """The rendered ``scenes`` as one ``[N, 3, 64, 64]`` batch in [-1, 1], as the VAE reads it."""
    images = np.stack([np.asarray(render(scene), dtype=np.float32) for scene in scenes])
    return torch.from_numpy(images).permute(0, 3, 1, 2) / 127.5 - 1.0


def _smooth(values: list[float], k: int = 20) -> float:
    tail = values[-k:]
    return sum(tail) / max(len(tail), 1)


def edge_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]``: 1 where a pixel's 3×3 neighbourhood holds more than one colour."""
    spread = F.max_pool2d(pixels, 3, 1, 1) + F.max_pool2d(-pixels, 3, 1, 1)
    return (spread.abs().sum(dim=1, keepdim=True) > 1e-3).to(pixels.dtype)


def reconstruction_loss(
    recon: torch.Tensor, pixels: torch.Tensor, edge_weight: float
) -> torch.Tensor:
    """L1 + MSE with the pixels along colour edges weighted ``1 + edge_weight``.

    In a world of flat colours the edges are a few percent of the pixels but all of the shape: a
    plain mean lets a small star's points round off into a circle at almost no cost.
    """
    err = recon - pixels
    per_pixel = err.abs() + err.pow(2)
    if not edge_weight:
        return per_pixel.mean()
    weight = 1 + edge_weight * edge_pixels(pixels)
    return (weight * per_pixel).mean() / weight.mean()


def train_vae(vae: Any, rng: random.Random, args: argparse.Namespace, log: Any) -> list[float]:
    """Reconstruction of the posterior mean (:func:`reconstruction_loss`), until ``--vae-steps``
    or ``--vae-target``.

    Every ``--vae-check-every`` steps the round trip is scored (:mod:`rpg.eval.vae_fidelity`):
    the UNet can never draw what the VAE cannot decode. The learning rate decays (cosine, to a
    tenth) because a constant one leaves the round trip wandering; with ``--checkpoint-every``
    the best-scoring VAE so far is kept in ``OUT-vae-best`` for ``--vae-from``.
    """
    from rpg.eval.vae_fidelity import reconstruction_binding

    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    total = max(1, args.vae_steps)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    best = -1.0
    losses: list[float] = []
    start = time.monotonic()
    for step in range(1, args.vae_steps + 1):
        pixels, _ = sample_batch(rng, args.vae_batch, 0.0)
        # The posterior mean, not a sample: an untrained log-variance adds unit noise that the
        # decoder would first have to learn to ignore. A small penalty keeps the latents tame.
        mean = vae.encode(pixels).latent_dist.mode()
        recon = vae.decode(mean).sample
        loss = reconstruction_loss(recon, pixels, args.vae_edge_weight) + 1e-4 * mean.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        losses.append(float(loss.detach()))
        if step % args.log_every == 0 or step == args.vae_steps:
            rate = (time.monotonic() - start) / step
            log(f"vae  step {step}/{args.vae_steps} loss {_smooth(losses):.4f} ({rate:.2f} s/step)")
        if args.vae_check_every and (step % args.vae_check_every == 0 or step == args.vae_steps):
            kept = reconstruction_binding(vae, scenes=32)
            log(f"vae  step {step}/{args.vae_steps} reconstruction binding {kept:.3f}")
            if args.checkpoint_every and kept > best:
                best = kept
                vae.save_pretrained(Path(args.out).with_name(Path(args.out).name + "-vae-best"))
            if args.vae_target and kept >= args.vae_target:
                log(f"vae  reached --vae-target {args.vae_target}; on to the UNet")
                break
    return losses


def encode_pool(
    vae: Any,
    rng: random.Random,
    count: int,
    log: Any,
    count_weights: Sequence[float] = OBJECT_COUNT_WEIGHTS,
) -> tuple[list[Scene], torch.Tensor]:
    """``count`` training scenes and their scaled VAE latents, encoded once.

    The VAE encoder works at 64×64 and costs several times the small UNet's step, so encoding
    every batch afresh spends most of a CPU run on it; a pool is encoded once and drawn from
    with fresh captions, noise and timesteps every time.
    """
    scenes: list[Scene] = []
    chunks: list[torch.Tensor] = []
    scaling = vae.config.scaling_factor
    start = time.monotonic()
    for first in range(0, count, 64):
        batch = [
            sample_scene(rng, avoid_held_out=True, count_weights=count_weights)
            for _ in range(min(64, count - first))
        ]
        with torch.no_grad():
            chunks.append(vae.encode(scene_pixels(batch)).latent_dist.mode())
        scenes += batch
        if len(scenes) % 4096 < 64 or len(scenes) == count:
            log(f"pool {len(scenes)}/{count} scenes encoded ({time.monotonic() - start:.0f} s)")
    return scenes, torch.cat(chunks) * scaling


#: Latent crop sizes (width, height) of a cropped batch on the 16×16 latent grid: halves,
#: thirds and quarters of the width, halves of the height, quarters of the canvas.
CROP_SIZES: tuple[tuple[int, int], ...] = ((8, 16), (5, 16), (4, 16), (16, 8), (8, 8))


def cropped_batch(
    scenes: Sequence[Scene],
    latents: torch.Tensor,
    rng: random.Random,
    n: int,
    partial: float,
    drop: float = 0.1,
) -> tuple[torch.Tensor, list[str], list[Scene]]:
    """``n`` latent rectangles of one size cut from the pool, each captioned with what it shows.

    A region of an rpg plan is a narrower canvas than any the model saw in training; real
    models are trained on many aspect ratios, and this gives the shapes model the same: crops
    that are halves, thirds or quarters of the canvas, each holding whole objects only
    (:func:`~rpg.eval.shapes.crop_scene`), captioned as a picture of their own. The third
    value is what each crop shows.
    """
    side = latents.shape[-1]
    factor = IMAGE_SIZE // side
    w, h = rng.choice(CROP_SIZES)
    chunks: list[torch.Tensor] = []
    captions: list[str] = []
    seen_scenes: list[Scene] = []
    attempts = 0
    while len(chunks) < n:
        attempts += 1
        if attempts > 1000 * n:
            raise ValueError(
                f"no {w}x{h} latent crop of the {len(scenes)} pool scenes holds whole objects "
                "only; use a larger --latent-pool"
            )
        i = rng.randrange(len(scenes))
        lx, ly = rng.randint(0, side - w), rng.randint(0, side - h)
        box = (lx * factor, ly * factor, (lx + w) * factor, (ly + h) * factor)
        seen = crop_scene(scenes[i], box)
        if seen is None:
            continue
        chunks.append(latents[i, :, ly : ly + h, lx : lx + w])
        captions.append("" if rng.random() < drop else caption(seen, rng, partial=partial))
        seen_scenes.append(seen)
    return torch.stack(chunks), captions, seen_scenes


def snr_weight(snr: torch.Tensor, gamma: float, velocity: bool) -> torch.Tensor:
    """Min-SNR-``gamma`` loss weights (Hang et al. 2023): in terms of the image, a step counts
    with weight min(SNR, ``gamma``), so the easy, low-noise steps do not dominate a short
    training. A zero-SNR step (pure noise, :func:`build_components` with
    ``zero_terminal_snr``) keeps weight 1, as diffusers' training scripts do.
    """
    if not gamma:
        return torch.ones_like(snr)
    capped = torch.clamp(snr, max=gamma)
    weight = capped / (snr + 1) if velocity else capped / snr
    return torch.where(snr == 0, torch.ones_like(snr), weight)


def training_noise(shape: torch.Size, gen: torch.Generator, offset: float) -> torch.Tensor:
    """Gaussian noise, plus a constant per image and channel of std ``offset`` ("offset noise").

    Under the SD schedule the last timestep keeps 7% of the image, and over a 16×16 latent the
    per-channel mean of plain noise (std 1/16) is as large as that signal: a UNet trained on plain
    noise reads the seed's noise mean as the picture's background. With the offset the noise
    mean varies far more than the image's share of it, so at high noise the UNet learns to take
    the mean colour from the caption; sampling still starts from plain noise.
    """
    noise = torch.randn(shape, generator=gen)
    if offset:
        noise = noise + offset * torch.randn((shape[0], shape[1], 1, 1), generator=gen)
    return noise


def _ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            ema[name].mul_(decay).add_(p.detach(), alpha=1 - decay)


def train_unet(parts: dict[str, Any], rng: random.Random, args: argparse.Namespace, log: Any):
    """The UNet on VAE latents, predicting v (or epsilon, ``--prediction-type``).

    The text encoder stays at its seeded initialisation unless ``--text-lr`` is set: trained
    from scratch next to a UNet that does not read it yet, it collapsed to one output for every
    caption within a thousand steps (nothing rewards it for telling captions apart before the
    cross-attention uses it), while its random initial features already tell every word and
    word order apart.

    With ``--latent-pool N`` the latents come from :func:`encode_pool` (re-captioned every
    draw); without, every batch is fresh scenes encoded on the spot.
    """
    unet, text_encoder, vae, tokenizer = (
        parts["unet"],
        parts["text_encoder"],
        parts["vae"],
        parts["tokenizer"],
    )
    sched = parts["train_scheduler"]
    scaling = vae.config.scaling_factor
    params = list(unet.parameters())
    groups: list[dict[str, Any]] = [{"params": list(params)}]
    if args.text_lr:
        groups.append({"params": list(text_encoder.parameters()), "lr": args.text_lr})
        params += groups[-1]["params"]
    else:
        text_encoder.requires_grad_(False)
    opt = torch.optim.AdamW(groups, lr=args.lr, weight_decay=1e-2, betas=(0.9, 0.99))
    warmup = max(1, min(100, args.steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        if args.max_minutes:  # a run stopped by the clock still ends at the low learning rate
            progress = max(progress, (time.monotonic() - start) / (60 * args.max_minutes))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    start = time.monotonic()  # lr_at reads it; restarted once the pool is encoded
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    emas = {
        "unet": {n: p.detach().clone() for n, p in unet.named_parameters()},
        "text_encoder": {n: p.detach().clone() for n, p in text_encoder.named_parameters()},
    }
    alphas = sched.alphas_cumprod
    # v-prediction: with epsilon, the nearly pure noise of the first sampling steps is predicted
    # well by any model (the target is almost the input), so the steps that lay out the picture,
    # and where the caption matters most, taught next to nothing; samples were formless
    velocity = sched.config.prediction_type == "v_prediction"
    snr = alphas / (1 - alphas)
    losses: list[float] = []
    gen = torch.Generator().manual_seed(args.data_seed)
    pool = (
        encode_pool(vae, rng, args.latent_pool, log, args.object_counts)
        if args.latent_pool
        else None
    )
    start = time.monotonic()
    for step in range(1, args.steps + 1):
        if pool is None:
            pixels, captions = sample_batch(
                rng, args.batch, 0.1, args.partial_captions, args.object_counts
            )
            with torch.no_grad():
                latents = vae.encode(pixels).latent_dist.mode() * scaling
        elif args.crops and rng.random() < args.crops:
            latents, captions, _ = cropped_batch(
                pool[0], pool[1], rng, args.batch, args.partial_captions
            )
        else:
            drawn = rng.sample(range(len(pool[0])), args.batch)
            latents = pool[1][drawn]
            partial = args.partial_captions
            captions = [
                "" if rng.random() < 0.1 else caption(pool[0][i], rng, partial=partial)
                for i in drawn
            ]
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=MAX_LENGTH,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        with torch.set_grad_enabled(bool(args.text_lr)):
            cond = text_encoder(ids)[0]
        noise = training_noise(latents.shape, gen, args.offset_noise)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen)
        noisy = sched.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        target = sched.get_velocity(latents, noise, t) if velocity else noise
        weight = snr_weight(snr[t], args.snr_gamma, velocity)
        loss = (weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        _ema_update(emas["unet"], unet, decay)
        if args.text_lr:  # a frozen encoder's average drifts by rounding: keep it exact
            _ema_update(emas["text_encoder"], text_encoder, decay)
        losses.append(float(loss.detach()))
        out_of_time = bool(args.max_minutes) and time.monotonic() - start > 60 * args.max_minutes
        if step % args.log_every == 0 or step == args.steps or out_of_time:
            rate = (time.monotonic() - start) / step
            left = rate * (args.steps - step) / 60
            log(
                f"unet step {step}/{args.steps} loss {_smooth(losses):.4f} "
                f"lr {lr_sched.get_last_lr()[0]:.2e} ({rate:.2f} s/step, {left:.0f} min left)"
            )
        if args.checkpoint_every and step % args.checkpoint_every == 0:
            save_pipeline(
                parts, emas, Path(args.out).with_name(Path(args.out).name + "-ckpt"), args
            )
            log(f"checkpoint at step {step} -> {args.out}-ckpt")
        if out_of_time:
            log(f"stopping at step {step}: --max-minutes {args.max_minutes} reached")
            args.steps_done = step
            break
    else:
        args.steps_done = args.steps
    return losses, emas


def save_pipeline(
    parts: dict[str, Any], emas: dict[str, dict[str, torch.Tensor]], out: Path, args
) -> None:
    """Write the pipeline folder with the EMA weights (staged, so a crash leaves no half folder)."""
    import copy

    from rpg.backbones.tiny.components import sd_pipeline

    unet = copy.deepcopy(parts["unet"])
    text_encoder = copy.deepcopy(parts["text_encoder"])
    with torch.no_grad():
        for name, p in unet.named_parameters():
            p.copy_(emas["unet"][name])
        for name, p in text_encoder.named_parameters():
            p.copy_(emas["text_encoder"][name])
    pipe = sd_pipeline(
        vae=parts["vae"],
        text_encoder=text_encoder,
        tokenizer=parts["tokenizer"],
        unet=unet,
        scheduler=parts["scheduler"],
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        staging = Path(tmp) / "model"
        pipe.save_pretrained(staging, safe_serialization=True)
        tok_dir = Path(tmp) / "tok"
        write_word_tokenizer(tok_dir)
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(tok_dir / name, staging / "tokenizer" / name)
        (staging / "training.json").write_text(
            json.dumps({k: v for k, v in vars(args).items()}, indent=2, default=str), "utf-8"
        )
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
