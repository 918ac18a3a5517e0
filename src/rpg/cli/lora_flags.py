"""``--lora NAME[:SCALE]`` and ``--no-lora``: LoRA adapters for ``rpg generate`` and ``rpg batch``.

The flags set the request's ``loras`` field (see :mod:`rpg.lora`). With ``generate --from``,
``--lora`` replaces the recorded LoRAs and ``--no-lora`` renders without them; in a batch they
are the default of every line, which a line's own ``"loras"`` overrides. Local files are
checked (present, and unchanged when a hash is recorded) before any model loads.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rpg.pydantic_errors import problems

if TYPE_CHECKING:
    from rpg.lora_spec import LoraInput
    from rpg.models import GenerationRequest

__all__ = ["add_lora_arguments", "check_lora_flags", "lora_flag", "lora_overrides"]


def lora_flag(text: str) -> LoraInput:
    """``argparse`` type of ``--lora``: ``NAME[:SCALE]``."""
    from rpg.lora_spec import parse_lora

    try:
        return parse_lora(text)
    except (ValueError, ValidationError) as exc:
        found = problems(exc) if isinstance(exc, ValidationError) else None
        why = "; ".join(p.message for p in found) if found else str(exc)
        raise argparse.ArgumentTypeError(
            f"{text!r}: {why} (NAME[:SCALE], e.g. style.safetensors:0.8)"
        ) from None


def add_lora_arguments(p: argparse.ArgumentParser, *, batch: bool = False) -> None:
    group = p.add_argument_group("LoRA")
    where = 'every line (a line\'s own "loras" wins)' if batch else "the whole image"
    group.add_argument(
        "--lora",
        action="append",
        type=lora_flag,
        metavar="NAME[:SCALE]",
        help=f"a LoRA for {where}: a .safetensors file, a folder with "
        "pytorch_lora_weights.safetensors, or a cached hub id ('org/name', "
        "'org/name/file.safetensors'); SCALE defaults to 1; repeat for several. Recorded with "
        "the file's SHA-256 in the PNG"
        + ("" if batch else "; with --from it replaces the recorded LoRAs"),
    )
    if not batch:
        group.add_argument(
            "--no-lora",
            action="store_true",
            help="with --from: render without the recorded whole-image LoRAs",
        )


def lora_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``{"loras": [...]}`` when ``--lora`` or ``--no-lora`` was given, else ``{}``."""
    loras = getattr(args, "lora", None)
    if getattr(args, "no_lora", False):
        if loras:
            from rpg.cli.checks import UsageError

            raise UsageError("--lora and --no-lora contradict each other; give one")
        return {"loras": []}
    return {"loras": list(loras)} if loras else {}


def check_lora_flags(request: GenerationRequest) -> None:
    """Every local LoRA the request names is there and unchanged; no torch import."""
    from rpg.lora import check_lora_files, request_loras

    check_lora_files(request_loras(request))
