"""Train ``shapes-sd`` from scratch on the shapes world: a complete SD 1.x-architecture pipeline.

Run ``python -m rpg.eval.train_shapes --out FOLDER`` (see ``--help``). It is seeded: the same
arguments give the same data stream and the same initial weights (CPU float arithmetic makes the
final weights close, not bit-identical, across thread counts). It prints progress, saves the
loss curve as ``loss.png`` next to the model, and writes a diffusers folder (safetensors).

Why it learns in about an hour on two CPU cores: the world is flat colours, so a small
three-level VAE (latent factor 4, 16×16×4 latents at 64×64) reconstructs it after a few minutes
of training; the text encoder is a two-layer CLIP over a word-level vocabulary (one token per
word of :data:`rpg.eval.shapes.WORDS`); the UNet is small, with cross-attention at 16×16 and
8×8; data is generated on the fly, so there is no overfitting, and batches are large with a high
learning rate. Captions are dropped one time in ten so that classifier-free guidance works.
"""

from __future__ import annotations

import argparse
import itertools
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
from PIL import Image, ImageDraw

from rpg.eval.shapes import WORDS, render, sample_training_example

__all__ = ["build_components", "main", "word_tokenizer_files", "write_word_tokenizer"]

_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"
MAX_LENGTH = 77
TEXT_HIDDEN = 64


def _bpe(word: str, merges: Sequence[str]) -> list[str]:
    """The pieces CLIP's byte-pair encoding makes of ``word`` (lowest-ranked merge first)."""
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
    pieces = [*list(word[:-1]), word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [
            (ranks.get((a, b), math.inf), i) for i, (a, b) in enumerate(itertools.pairwise(pieces))
        ]
        rank, i = min(pairs)
        if rank == math.inf:
            break
        pieces[i : i + 2] = [pieces[i] + pieces[i + 1]]
    return pieces


def word_tokenizer_files() -> tuple[dict[str, int], list[str]]:
    """A CLIP vocabulary with one token per world word, plus single characters for anything else.

    The merges build each word from its letters left to right; every intermediate piece is in
    the vocabulary, so any text still tokenizes (unknown words become letters).
    """
    letters = sorted({ch for w in WORDS for ch in w} | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    tokens: list[str] = []
    seen: set[str] = set()

    def add(token: str) -> None:
        if token not in seen:
            seen.add(token)
            tokens.append(token)

    for ch in letters + list(",.;:!?'-()"):
        add(ch)
        add(ch + "</w>")
    merges: list[str] = []
    for word in sorted(WORDS, key=len, reverse=True):
        # merge the first two pieces that BPE leaves until the word is one token; a merge added
        # later ranks lower, so it only fires once the earlier ones are done
        while len(pieces := _bpe(word, merges)) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            add(pieces[0] + pieces[1])
        add(pieces[0])
    add(_BOS)
    add(_EOS)
    return {t: i for i, t in enumerate(tokens)}, merges


def write_word_tokenizer(folder: Path) -> None:
    """Write the word-level CLIP tokenizer (vocab, merges and configs) to ``folder``."""
    from rpg.backbones.tiny.components import write_tokenizer

    write_tokenizer(folder, word_tokenizer_files())


def build_components(
    tok_dir: Path,
    *,
    seed: int,
    unet_channels: Sequence[int],
    vae_channels: Sequence[int] = (16, 32, 32),
    latent_channels: int = 4,
) -> dict[str, Any]:
    """Fresh tokenizer, text encoder, UNet, VAE and scheduler of shapes-sd (seeded weights)."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from rpg.backbones.tiny.components import SD_SCHEDULE

    write_word_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_HIDDEN,
            intermediate_size=4 * TEXT_HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            projection_dim=TEXT_HIDDEN,
        )
    )
    levels = len(unet_channels)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=latent_channels,
        out_channels=latent_channels,
        layers_per_block=1,
        block_out_channels=tuple(unet_channels),
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=tuple(vae_channels),
        layers_per_block=1,
        latent_channels=latent_channels,
        # few groups: with one channel per group, GroupNorm erases the colour of a flat image
        norm_num_groups=4,
        sample_size=64,
        mid_block_add_attention=False,
    )
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "unet": unet,
        "vae": vae,
        "train_scheduler": DDPMScheduler(**SD_SCHEDULE),
        "scheduler": DPMSolverMultistepScheduler(**SD_SCHEDULE),
    }


def _batch(rng: random.Random, n: int, drop: float) -> tuple[torch.Tensor, list[str]]:
    images, captions = [], []
    for _ in range(n):
        scene, text = sample_training_example(rng)
        images.append(np.asarray(render(scene), dtype=np.float32))
        captions.append("" if rng.random() < drop else text)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return pixels, captions


def plot_curves(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """A plain loss-curve picture (log scale, one line per curve) drawn with PIL."""
    w, h, pad = 720, 360, 48
    image = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(image)
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    points = [p for c in curves.values() for p in c if p[1] > 0]
    if not points:
        image.save(path)
        return
    lo = math.log10(min(v for _, v in points))
    hi = math.log10(max(v for _, v in points))
    hi = hi if hi > lo else lo + 1
    draw.rectangle((pad, pad // 2, w - pad // 2, h - pad), outline="black")
    for i, (name, curve) in enumerate(curves.items()):
        if not curve:
            continue
        last = max(s for s, _ in curve) or 1
        xy = [
            (
                pad + (w - 1.5 * pad) * s / last,
                h - pad - (h - 1.5 * pad) * (math.log10(max(v, 1e-12)) - lo) / (hi - lo),
            )
            for s, v in curve
            if v > 0
        ]
        if len(xy) > 1:
            draw.line(xy, fill=colours[i % len(colours)], width=2)
        draw.text((pad + 8, pad // 2 + 6 + 14 * i), f"{name} (steps 0-{last})", fill=colours[i % 4])
    draw.text((4, pad // 2), f"{10**hi:.3g}", fill="black")
    draw.text((4, h - pad - 10), f"{10**lo:.3g}", fill="black")
    draw.text((w // 2 - 60, h - pad + 12), "step (each curve its own axis)", fill="black")
    image.save(path)


def curves_from_log(text: str) -> dict[str, list[tuple[int, float]]]:
    """The (step, smoothed loss) points a training log printed, for a run stopped before the end.

    Both trainings print ``vae  step N/M loss L`` and ``unet step N/M loss L`` lines; when a run
    is stopped early (or resumed from a VAE) its loss picture is drawn from them.
    """
    import re

    curves: dict[str, list[tuple[int, float]]] = {"vae loss": [], "unet loss": []}
    for match in re.finditer(r"(vae|unet) +step (\d+)/\d+ loss ([0-9.]+)", text):
        curves[f"{match.group(1)} loss"].append((int(match.group(2)), float(match.group(3))))
    return curves


def _smooth(values: list[float], k: int = 20) -> float:
    tail = values[-k:]
    return sum(tail) / max(len(tail), 1)


def train_vae(vae: Any, rng: random.Random, args: argparse.Namespace, log: Any) -> list[float]:
    """Reconstruction (L1 + MSE) of the posterior mean, until ``--vae-steps`` or ``--vae-target``.

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
        pixels, _ = _batch(rng, args.vae_batch, 0.0)
        # The posterior mean, not a sample: an untrained log-variance adds unit noise that the
        # decoder would first have to learn to ignore. A small penalty keeps the latents tame.
        mean = vae.encode(pixels).latent_dist.mode()
        recon = vae.decode(mean).sample
        loss = F.l1_loss(recon, pixels) + F.mse_loss(recon, pixels) + 1e-4 * mean.pow(2).mean()
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


def _ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            ema[name].mul_(decay).add_(p.detach(), alpha=1 - decay)


def train_unet(parts: dict[str, Any], rng: random.Random, args: argparse.Namespace, log: Any):
    """Epsilon prediction on VAE latents, the text encoder trained with the UNet."""
    unet, text_encoder, vae, tokenizer = (
        parts["unet"],
        parts["text_encoder"],
        parts["vae"],
        parts["tokenizer"],
    )
    sched = parts["train_scheduler"]
    scaling = vae.config.scaling_factor
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2, betas=(0.9, 0.99))
    warmup = max(1, min(100, args.steps // 10))

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    emas = {
        "unet": {n: p.detach().clone() for n, p in unet.named_parameters()},
        "text_encoder": {n: p.detach().clone() for n, p in text_encoder.named_parameters()},
    }
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    losses: list[float] = []
    gen = torch.Generator().manual_seed(args.seed)
    start = time.monotonic()
    for step in range(1, args.steps + 1):
        pixels, captions = _batch(rng, args.batch, 0.1)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mode() * scaling
        ids = tokenizer(
            captions,
            padding="max_length",
            max_length=MAX_LENGTH,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        cond = text_encoder(ids)[0]
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), generator=gen)
        noisy = sched.add_noise(latents, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        # min-SNR-5 weighting: the easy, low-noise steps do not dominate a short training
        weight = torch.clamp(snr[t], max=5.0) / snr[t]
        loss = (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        _ema_update(emas["unet"], unet, decay)
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
            _save(parts, emas, Path(args.out).with_name(Path(args.out).name + "-ckpt"), args)
            log(f"checkpoint at step {step} -> {args.out}-ckpt")
        if out_of_time:
            log(f"stopping at step {step}: --max-minutes {args.max_minutes} reached")
            args.steps_done = step
            break
    else:
        args.steps_done = args.steps
    return losses, emas


def _save(parts: dict[str, Any], emas: dict[str, dict[str, torch.Tensor]], out: Path, args) -> None:
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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rpg.eval.train_shapes", description=__doc__)
    p.add_argument("--out", required=True, help="folder to write the pipeline to")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=2000, help="UNet training steps")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay of the saved weights")
    p.add_argument("--vae-steps", type=int, default=300)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-from", help="start the VAE from this AutoencoderKL folder")
    p.add_argument("--vae-channels", default="16,32,32", help="VAE block widths (3 levels)")
    p.add_argument("--latent-channels", type=int, default=4)
    p.add_argument(
        "--vae-check-every",
        type=int,
        default=0,
        help="score the VAE round trip every N steps (0: never; see rpg.eval.vae_fidelity)",
    )
    p.add_argument(
        "--vae-target",
        type=float,
        default=0.0,
        help="stop the VAE training once the round trip keeps this fraction of objects",
    )
    p.add_argument("--unet-channels", default="32,64,64")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument(
        "--max-minutes", type=float, default=0, help="stop the UNet training after this long"
    )
    p.add_argument(
        "--plot-log",
        metavar="LOG",
        help="only draw OUT-loss.png from the progress lines of a training log, and stop",
    )
    p.add_argument("--checkpoint-every", type=int, default=0, help="also save every N steps")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.plot_log:
        picture = out.with_name(out.name + "-loss.png")
        picture.parent.mkdir(parents=True, exist_ok=True)
        plot_curves(curves_from_log(Path(args.plot_log).read_text(encoding="utf-8")), picture)
        return picture
    rng = random.Random(args.seed)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        parts = build_components(
            Path(tmp) / "tok",
            seed=args.seed,
            unet_channels=[int(c) for c in args.unet_channels.split(",")],
            vae_channels=[int(c) for c in args.vae_channels.split(",")],
            latent_channels=args.latent_channels,
        )
    sizes = {
        k: sum(p.numel() for p in parts[k].parameters()) for k in ("unet", "vae", "text_encoder")
    }
    log(f"parameters: {sizes}; threads {torch.get_num_threads()}")
    if args.vae_from:
        from diffusers import AutoencoderKL

        parts["vae"] = AutoencoderKL.from_pretrained(args.vae_from)
        log(f"vae from {args.vae_from}")
    vae = parts["vae"]
    vae_losses = train_vae(vae, rng, args, log)
    vae.requires_grad_(False)
    vae.eval()
    with torch.no_grad():
        pixels, _ = _batch(random.Random(args.seed + 1), 64, 0.0)
        std = float(vae.encode(pixels).latent_dist.mode().std())
    vae.register_to_config(scaling_factor=1.0 / std)
    log(f"vae latent std {std:.4f} -> scaling_factor {1.0 / std:.4f}")
    if args.checkpoint_every:
        vae.save_pretrained(out.with_name(out.name + "-vae-ckpt"))
    unet_losses, emas = train_unet(parts, rng, args, log)
    _save(parts, emas, out, args)
    plot_curves(
        {
            "vae loss": list(enumerate(vae_losses, 1)),
            "unet loss": list(enumerate(unet_losses, 1)),
        },
        out.with_name(out.name + "-loss.png"),
    )
    log(f"saved {out} and {out.name}-loss.png")
    return out


if __name__ == "__main__":
    main()
