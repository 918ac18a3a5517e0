"""Train ``shapes-sd`` from scratch on the shapes world: a complete SD 1.x-architecture pipeline.

Run ``python -m rpg.eval.train_shapes --out FOLDER`` (see ``--help``). It is seeded: the same
arguments give the same data stream and the same initial weights (CPU float arithmetic makes the
final weights close, not bit-identical, across thread counts). It prints progress, saves the
loss curve as ``loss.png`` next to the model, and writes a diffusers folder (safetensors).

Why it learns in about two hours on two CPU cores: the world is flat colours, so a small
three-level VAE (latent factor 4, 16×16×16 latents at 64×64, a loss that weighs colour edges)
reconstructs it in about half an hour; the text encoder is a two-layer CLIP over a word-level
vocabulary (one token per word of :data:`rpg.eval.shapes.WORDS`); the UNet is small, with
cross-attention at 8×8 and 4×4 only (``--unet-attention``); the VAE encodes a large pool of
scenes once (``--latent-pool``) and every draw gets a fresh caption, noise and timestep; batches
are large with a high learning rate. Captions are dropped one time in ten so that
classifier-free guidance works.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

# the command line lives here; what the model is made of, how it is trained and the loss picture
# live in shapes_components, shapes_training and loss_curves (all importable from here as before)
from rpg.eval.loss_curves import curves_from_log, plot_curves
from rpg.eval.shapes import OBJECT_COUNT_WEIGHTS
from rpg.eval.shapes_components import (
    MAX_LENGTH as MAX_LENGTH,
)
from rpg.eval.shapes_components import (
    TEXT_HIDDEN as TEXT_HIDDEN,
)
from rpg.eval.shapes_components import (
    attention_levels,
    build_components,
    grow_unet_attention,
    word_tokenizer_files,
    write_word_tokenizer,
)
from rpg.eval.shapes_training import sample_batch, save_pipeline, train_unet, train_vae

__all__ = ["build_components", "main", "word_tokenizer_files", "write_word_tokenizer"]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rpg.eval.train_shapes", description=__doc__)
    p.add_argument("--out", required=True, help="folder to write the pipeline to")
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the initial weights (and the data, without --data-seed)",
    )
    p.add_argument(
        "--data-seed",
        type=int,
        help="seed of the scenes, captions, noise and timesteps instead of --seed (a run that "
        "goes on with --unet-from sees new scenes rather than replaying the first run's)",
    )
    p.add_argument("--steps", type=int, default=2000, help="UNet training steps")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--text-lr",
        type=float,
        default=0.0,
        help="learning rate of the text encoder (0: keep it at its seeded initialisation; "
        "trained from scratch with the UNet it collapses to one output for every caption)",
    )
    p.add_argument("--ema", type=float, default=0.995, help="EMA decay of the saved weights")
    p.add_argument("--vae-steps", type=int, default=300)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-from", help="start the VAE from this AutoencoderKL folder")
    p.add_argument("--vae-channels", default="32,64,64", help="VAE block widths (3 levels)")
    p.add_argument("--latent-channels", type=int, default=16)
    p.add_argument(
        "--vae-edge-weight",
        type=float,
        default=4.0,
        help="extra loss weight of pixels on a colour edge (0: plain L1 + MSE)",
    )
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
    p.add_argument(
        "--latent-pool",
        type=int,
        default=0,
        help="encode this many training scenes once and draw UNet batches from them "
        "(0: encode fresh scenes every step)",
    )
    p.add_argument(
        "--prediction-type",
        choices=("v_prediction", "epsilon"),
        default="v_prediction",
        help="what the UNet predicts (v: the high-noise steps that lay out the picture learn)",
    )
    p.add_argument(
        "--zero-terminal-snr",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="rescale the SD schedule so its last step is pure noise (needs v-prediction; "
        "experimental: 2000 steps from a trained UNet drew mostly empty images)",
    )
    p.add_argument(
        "--snr-gamma",
        type=float,
        default=5.0,
        help="min-SNR weighting: the loss of steps with SNR above this is scaled down (0: off)",
    )
    p.add_argument(
        "--offset-noise",
        type=float,
        default=0.0,
        help="add a per-image, per-channel constant of this std to the training noise, so the "
        "mean of the starting noise no longer tells the UNet the picture's mean colour (0: off)",
    )
    p.add_argument(
        "--partial-captions",
        type=float,
        default=0.0,
        help="the share of scenes with several objects whose caption names only some of them "
        "(0: every caption names every object, and the UNet learns that it names all there is)",
    )
    p.add_argument(
        "--object-counts",
        type=_weights,
        default=OBJECT_COUNT_WEIGHTS,
        metavar="W1,W2,W3,W4",
        help="relative weights of scenes with 1, 2, 3 and 4 objects (default "
        + ",".join(f"{w:g}" for w in OBJECT_COUNT_WEIGHTS)
        + "); with partial captions, more objects per scene means more captions that leave "
        "some out",
    )
    p.add_argument(
        "--crops",
        type=float,
        default=0.0,
        help="the share of steps whose batch is cut from the latent pool as narrower canvases "
        "(halves, thirds, quarters), each captioned with the whole objects it shows; needs "
        "--latent-pool (0: every batch is the whole 64×64 canvas)",
    )
    p.add_argument("--unet-from", help="start the UNet from this pipeline or UNet folder")
    p.add_argument("--unet-channels", default="32,64,96", help="UNet block widths")
    p.add_argument(
        "--unet-attention",
        help="UNet levels with cross-attention (0: the 16×16 latent; default 1,2); with "
        "--unet-from, naming more levels than it has grows new blocks into it that start as "
        "no-ops (default: its own levels)",
    )
    p.add_argument("--unet-heads", type=int, default=2, help="attention heads per UNet block")
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
    args = p.parse_args(argv)
    if args.zero_terminal_snr and args.prediction_type == "epsilon":
        p.error(
            "--zero-terminal-snr needs --prediction-type v_prediction (at the last step the "
            "noise is the whole input, so epsilon says nothing)"
        )
    if not 0.0 <= args.partial_captions <= 1.0:
        p.error(f"--partial-captions is a share of scenes, 0 to 1; got {args.partial_captions}")
    if not 0.0 <= args.crops <= 1.0:
        p.error(f"--crops is a share of steps, 0 to 1; got {args.crops}")
    if args.crops and not args.latent_pool:
        p.error("--crops cuts batches from the latent pool; give --latent-pool N as well")
    if args.data_seed is None:
        args.data_seed = args.seed
    return args


def _weights(text: str) -> tuple[float, ...]:
    """``"4,3,2,1.5"`` as four non-negative weights, not all zero (an argparse type)."""
    try:
        weights = tuple(float(part) for part in text.split(","))
    except ValueError:
        weights = ()
    if len(weights) != 4 or min(weights) < 0 or not sum(weights) > 0:
        raise argparse.ArgumentTypeError(
            f"four weights for 1, 2, 3 and 4 objects, e.g. 4,3,2,1.5; got {text!r}"
        )
    return weights


def _int_list(text: str) -> list[int]:
    """``"32,64,96"`` as ``[32, 64, 96]`` (an empty string is an empty list)."""
    return [int(part) for part in text.split(",") if part.strip()]


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
    rng = random.Random(args.data_seed)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        parts = build_components(
            Path(tmp) / "tok",
            seed=args.seed,
            unet_channels=_int_list(args.unet_channels),
            unet_attention=_int_list(args.unet_attention or "1,2"),
            unet_heads=args.unet_heads,
            vae_channels=_int_list(args.vae_channels),
            latent_channels=args.latent_channels,
            prediction_type=args.prediction_type,
            zero_terminal_snr=args.zero_terminal_snr,
        )
    sizes = {
        k: sum(p.numel() for p in parts[k].parameters()) for k in ("unet", "vae", "text_encoder")
    }
    log(f"parameters: {sizes}; threads {torch.get_num_threads()}")
    if args.vae_from:
        from diffusers import AutoencoderKL

        parts["vae"] = AutoencoderKL.from_pretrained(args.vae_from)
        log(f"vae from {args.vae_from}")
    if args.unet_from:
        from diffusers import UNet2DConditionModel

        folder = Path(args.unet_from)
        unet = UNet2DConditionModel.from_pretrained(
            folder / "unet" if (folder / "unet").is_dir() else folder
        )
        log(f"unet from {folder}")
        if args.unet_attention is not None and _int_list(args.unet_attention) != (
            have := attention_levels(unet)
        ):
            try:
                unet = grow_unet_attention(unet, _int_list(args.unet_attention), seed=args.seed)
            except ValueError as err:
                raise SystemExit(f"--unet-from {folder}: {err} with --unet-attention") from None
            log(f"grew cross-attention from levels {have} to {attention_levels(unet)}")
        parts["unet"] = unet
    # training.json records the levels the UNet has, whether named, defaulted or loaded
    args.unet_attention = ",".join(map(str, attention_levels(parts["unet"])))
    vae = parts["vae"]
    vae_losses = train_vae(vae, rng, args, log)
    vae.requires_grad_(False)
    vae.eval()
    with torch.no_grad():
        pixels, _ = sample_batch(random.Random(args.seed + 1), 64, 0.0)
        std = float(vae.encode(pixels).latent_dist.mode().std())
    vae.register_to_config(scaling_factor=1.0 / std)
    log(f"vae latent std {std:.4f} -> scaling_factor {1.0 / std:.4f}")
    if args.checkpoint_every:
        vae.save_pretrained(out.with_name(out.name + "-vae-ckpt"))
    unet_losses, emas = train_unet(parts, rng, args, log)
    save_pipeline(parts, emas, out, args)
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
