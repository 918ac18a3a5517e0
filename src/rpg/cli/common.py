"""Options and model loading shared by the commands that render (``generate``, ``batch``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpg.cli.checks import make_planner, read_plan_file, warn_if_slow
from rpg.cli.layout import parse_size
from rpg.cli.preflight import (
    check_cache_dir,
    check_device_dtype,
    check_model_flags,
    finite_float,
    seed_value,
)
from rpg.planners.base import DEFAULT_PLANNER, Planner

if TYPE_CHECKING:
    from rpg.models import GenerationRequest
    from rpg.orchestrator import RPG

#: The model used when ``--model`` is not given: runs offline anywhere (random weights).
DEFAULT_MODEL = "tiny-sd"


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The ``model`` group: what to load, where, and whether to keep projected prompts."""
    model = p.add_argument_group("model")
    model.add_argument(
        "--model",
        help="hub id (read from the local Hugging Face cache), diffusers folder, or "
        f".safetensors/.ckpt file; default: {DEFAULT_MODEL} (random weights, offline)",
    )
    model.add_argument(
        "--config",
        metavar="FOLDER",
        help="diffusers folder with the configs of a single-file --model (needed offline)",
    )
    model.add_argument(
        "--allow-download",
        action="store_true",
        help="download a hub model (also the --planner hf model) that is not in the cache "
        "(default: cache only)",
    )
    model.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    model.add_argument("--dtype", help="auto (default), float16, bfloat16 or float32")
    model.add_argument(
        "--no-kv-cache",
        dest="kv_cache",
        action="store_false",
        help="project the prompts' keys and values at every step instead of once per render "
        "(saves their memory, about 245 MiB for SDXL with 8 regions + base in float16, and "
        "costs time; the pixels are the same)",
    )


class DeprecatedAlias(argparse.Action):
    """A hidden old spelling of an option: stores into the new option's ``dest`` and warns.

    Kept for one release after a rename, so scripts keep working while they are told the new
    name (``rpg plan --model`` → ``--planner-model``, ``--host`` → ``--ollama-host``).
    """

    def __init__(self, option_strings: list[str], dest: str, *, new: str, **kwargs: Any) -> None:
        self.new = new
        kwargs["help"] = argparse.SUPPRESS
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f"{parser.prog}: warning: {option_string} is deprecated and will be removed in the "
            f"next release; use {self.new}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def add_deprecated_alias(
    group: argparse._ArgumentGroup | argparse.ArgumentParser, old: str, new: str, dest: str
) -> None:
    """``old`` as a hidden, warning alias of the option ``new`` (whose ``dest`` is ``dest``)."""
    group.add_argument(old, dest=dest, action=DeprecatedAlias, new=new, default=argparse.SUPPRESS)


def add_planner_service_arguments(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """``--planner-model``, ``--base-url`` and ``--ollama-host``: the same names in every command.

    ``--host`` (the Ollama server until 0.1) is kept as a hidden alias of ``--ollama-host``:
    in ``rpg ui``, ``--host`` is the address the server binds, so one name had to change.
    """
    group.add_argument(
        "--planner-model", help="the LLM planner's model (e.g. gpt-4o-mini, qwen2.5:7b)"
    )
    group.add_argument(
        "--base-url", help="OpenAI-compatible server URL for the openai planner (vLLM, llama.cpp)"
    )
    group.add_argument(
        "--ollama-host",
        dest="ollama_host",
        help="Ollama server URL for the ollama planner (default: $OLLAMA_HOST or localhost)",
    )
    add_deprecated_alias(group, "--host", "--ollama-host", "ollama_host")


def add_planner_arguments(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """``--plan``, ``--planner`` and the LLM planner options; returns the group to extend."""
    plan = p.add_argument_group("plan")
    plan.add_argument("--plan", type=Path, metavar="PLAN.json", help="use this plan, no planner")
    add_planner_choice(plan)
    add_planner_service_arguments(plan)
    plan.add_argument("--base-ratio", type=finite_float, help="weight of the base prompt, 0 to 1")
    return plan


def add_planner_choice(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """``--planner``, with the one default the library uses too."""
    group.add_argument(
        "--planner",
        help=f"planner name (see 'rpg plugins'); default '{DEFAULT_PLANNER}' (offline, no "
        "model); 'auto': openai if OPENAI_API_KEY is set, else a running Ollama, else rules",
    )


def add_render_arguments(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Size, steps, seed, guidance, negative prompt, scheduler, image count."""
    render = p.add_argument_group("rendering")
    render.add_argument("--size", type=parse_size, help="WxH, multiples of 8; default: native")
    render.add_argument("--steps", type=int, help="denoising steps (default 30)")
    render.add_argument(
        "--seed", type=seed_value, help="random seed, 0 to 2**64-1 (default: random, recorded)"
    )
    render.add_argument(
        "--guidance",
        type=finite_float,
        help="guidance scale (default: the model's own; 7 for SD, SDXL and SD3, 3.5 for "
        "FLUX.1, 4 for FLUX.2 klein)",
    )
    render.add_argument("--negative", help="negative prompt for the whole image")
    render.add_argument(
        "--scheduler",
        help="dpm++2m-karras (SD/SDXL default), euler-a, euler, ddim, ...; FLUX/SD3: default",
    )
    render.add_argument("--num-images", type=int, help="images to render (default 1)")
    add_option_arguments(p)
    return render


def add_option_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per option a model family declares (:mod:`rpg.backbones.options`).

    The flags come from the families' options models, so a family's new option is a new flag
    without a line here; a value goes to ``request.options`` and is checked against the
    model's family before it loads (:func:`rpg.cli.checks.check_option_flags`).
    """
    from rpg.backbones.options import cli_option_fields, families_taking

    group = p.add_argument_group("model family options (see each family's options)")
    for f in cli_option_fields():
        families = ", ".join(families_taking(f.name))
        kind: Any = {"float": finite_float, "int": int}.get(f.kind, str)
        group.add_argument(
            f.flag,
            dest=f"option_{f.name}",
            type=kind,
            choices=f.choices,
            metavar=None if f.choices else f.kind.upper(),
            help=f"{f.description} (default {f.default}; {families})",
        )


def option_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The family options set on the command line, by option name."""
    prefix = "option_"
    return {
        k.removeprefix(prefix): v
        for k, v in vars(args).items()
        if k.startswith(prefix) and v is not None
    }


def request_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The request fields set on the command line (options not given are left out)."""
    fields: dict[str, Any] = {
        "steps": args.steps,
        "seed": args.seed,
        "guidance_scale": args.guidance,
        "negative_prompt": args.negative,
        "scheduler": args.scheduler,
        "num_images": args.num_images,
        "base_ratio": args.base_ratio,
        "planner": args.planner,
        "options": option_overrides(args) or None,
    }
    if args.size is not None:
        fields["width"], fields["height"] = args.size
    if args.plan is not None:
        fields["plan"] = read_plan_file(args.plan)
    return {k: v for k, v in fields.items() if v is not None}


def planner_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options for the planner factory from ``--planner-model``, ``--base-url``,
    ``--ollama-host``.

    ``--allow-download`` also lets the ``hf`` planner fetch a hub model that is not cached.
    """
    pairs = (
        ("model", getattr(args, "planner_model", None)),
        ("base_url", getattr(args, "base_url", None)),
        ("host", getattr(args, "ollama_host", None)),
    )
    options = {key: value for key, value in pairs if value is not None}
    if getattr(args, "planner", None) == "hf" and getattr(args, "allow_download", False):
        options["allow_download"] = True
    return options


def prepare_planner(
    args: argparse.Namespace, name: str | None, *, images: str | None = None
) -> Planner:
    """Make the planner a command will use, before any model loads (see :func:`make_planner`).

    ``name`` is the request's planner (from ``--planner`` or a ``--from`` image), else the
    default; ``images`` is the reason the planner must read images (``"--refine"``).
    """
    return make_planner(name or DEFAULT_PLANNER, planner_options(args), images=images)


def check_loading(
    args: argparse.Namespace, model: str | None, controlnet: list[str] | None = None
) -> None:
    """The loading flags, before torch is imported: ``--device``, ``--dtype``, ``--model``
    file, ``--config`` folder, and a cache that can take the tiny models to be written.

    ``model`` is ``None`` when it is known only later (``rpg edit`` reads it from the image).
    """
    check_device_dtype(getattr(args, "device", None), getattr(args, "dtype", None))
    if model is not None:
        check_model_flags(model, getattr(args, "config", None))
    check_cache_dir([*([model] if model is not None else []), *(controlnet or ())])


def load_rpg(
    args: argparse.Namespace,
    model: str,
    planner: Planner | str | None = None,
    *,
    controlnet: list[str] | None = None,
) -> RPG:
    """Load ``model`` through :meth:`RPG.from_pretrained` with the command-line options.

    ``planner`` is one made by :func:`prepare_planner` (or a name, made on first use). With
    ``controlnet`` the detected backbone's ControlNet variant loads those ControlNets. The
    pipeline's own progress bar is off; unless ``--no-progress``, the render shows rpg's one bar
    on a terminal (:class:`rpg.progress.BarProgress`), or a few plain lines when stderr is a
    file or pipe (:class:`rpg.progress.LineProgress`). Says on stderr when the model is a tiny
    random-weight one, so nobody mistakes its noise for a bug.
    """
    from rpg.cli.output import quiet_libraries
    from rpg.orchestrator import RPG
    from rpg.progress import progress_for

    quiet_libraries(verbose=getattr(args, "verbose", False))
    options: dict[str, Any] = {"config": args.config, "allow_download": args.allow_download}
    if controlnet:
        options["controlnet"] = controlnet
    pipe = RPG.from_pretrained(
        model,
        planner=planner if planner is not None else DEFAULT_PLANNER,
        planner_options=planner_options(args)
        if planner is None or isinstance(planner, str)
        else None,
        device=args.device or "auto",
        dtype=args.dtype or "auto",
        **options,
    )
    info = pipe.backbone.info
    if info is not None and info.is_tiny:
        print(
            f"note: {model!r} has random weights; its images are noise (it is for trying rpg "
            "offline). Pass --model with a real checkpoint for pictures.",
            file=sys.stderr,
        )
    pipe.backbone.cache_kv = getattr(args, "kv_cache", True)
    pipe.pipe.set_progress_bar_config(disable=True)
    if not getattr(args, "no_progress", False):
        pipe.progress = progress_for()  # a bar on a terminal, a few plain lines in a log
    return pipe


def check_render(pipe: RPG, request: GenerationRequest) -> None:
    """Checks that need the loaded model but must come before the render (its size on a CPU)."""
    warn_if_slow(pipe.backbone, request)
