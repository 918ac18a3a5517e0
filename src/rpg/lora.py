"""LoRA adapters a request names: found offline, checked, loaded for one render, put away after.

A request's ``loras`` (whole image) and its plan's ``Region.loras`` (one region's text only) are
loaded into the stock pipeline with diffusers' own ``load_lora_weights`` under names of rpg's
own, activated with ``set_adapters`` for the render, and removed afterwards, also when the render
fails: the pipeline's own adapters, which ones were active, their scales and whether they were
enabled are as they were before the call (a pipeline that had no LoRA has none again).

A request that names LoRAs renders with exactly those: adapters the user loaded into the
pipeline are switched off for that call, so the recorded request says everything that shaped the
image. A request without LoRAs leaves the pipeline's adapters alone (whatever the user set up).

**Finding a LoRA** follows the rules for models (:mod:`rpg.backbones.loading`): a local
``.safetensors`` file, a folder holding ``pytorch_lora_weights.safetensors``, or a hub id
(``org/name`` for that file in the repo, ``org/name/path/file.safetensors`` for another) read
from the local Hugging Face cache; downloading only with ``allow_download`` and never under
``HF_HUB_OFFLINE``. The request records the name (local files as absolute paths), the scale and
the SHA-256 of the file's bytes; a recorded hash that the file no longer has is an error.

**Per-region LoRA**: region ``r``'s adapters change only what region ``r``'s own text gives;
everything every region shares stays global. On **UNet models** that is the keys and values its
tokens are projected to (``to_k``/``to_v`` of every cross-attention layer), and only where region
``r``'s image positions read them::

    out[R_r] = (1 − β_r) · Attn(x[R_r], K_r', V_r') + β_r · Attn(x[R_r], ctx[S_base])
    K_r' = to_k(ctx[S_r]) + Σ_a s_a · ΔW_k,a · ctx[S_r]      (V_r' likewise with to_v)

and in the unconditional half the same with the region's negative prompt (its own, else the
shared one) in place of ``S_r`` and the shared negative as the base term. Everything else (the
queries, ``to_out``, self-attention, resnets, feed-forwards, the text encoders, the base prompt)
is the same for every region and stays global.

On **MM-DiT models** (FLUX.1, SD3 / SD3.5, FLUX.2 klein) a region's text is the rows of its
token span ``S_r`` in the transformer's text stream, and region ``r``'s adapters act on exactly
those rows, in every layer that maps a text row to a text row by itself::

    y[S_r] = W·x[S_r] + Σ_a s_a · ΔW_a · x[S_r]       (y = W·x on every other row)

in double-stream (FLUX) and joint (SD3) blocks the context stream's ``attn.add_q_proj``,
``add_k_proj``, ``add_v_proj``, ``to_add_out`` and ``ff_context``; in single-stream blocks, where
text and image rows go through shared ``to_q``/``to_k``/``to_v``/``proj_mlp``/``proj_out``
(FLUX.2: ``to_qkv_mlp_proj``/``to_out``), on region ``r``'s text rows only, the image rows
untouched. The regional joint attention then carries the changed text where the definition
sends it (region ``r``'s image tokens read ``text(r)``). What stays global: every layer of the
image stream, the modulations (``norm1_context``, adaLN linears), ``time_text_embed``,
``context_embedder``, ``x_embedder``, the model's ``proj_out``, the text encoders, the base
prompt's tokens and the canvas background's (the whole prompt packed for it), and the negative
prompt: with classifier-free guidance (SD3, FLUX true CFG, klein) the negative half is the
stock forward over one negative prompt, one text stream every image token reads, so it gets no
region LoRA (unlike the UNet, where each region's negative keys are projected on their own).
Regions with the same prompt share its tokens and must have the same LoRAs.

A region LoRA with weights on a layer that stays global is refused, naming the layers, rather
than silently applied to the whole image.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpg.errors import ConfigurationError, ModelNotFoundError
from rpg.lora_adapters import _check_region_adapter, _Snapshot, lora_delta, region_lora_refusal
from rpg.lora_spec import LoraInput

if TYPE_CHECKING:
    from rpg.backbones.base import Backbone
    from rpg.models import GenerationRequest

__all__ = [
    "DEFAULT_WEIGHT_NAME",
    "RegionAdapters",
    "applied_loras",
    "check_lora_files",
    "file_sha256",
    "lora_delta",
    "region_lora_refusal",
    "request_loras",
    "resolve_lora",
]

#: The file diffusers' ``save_lora_weights`` writes, looked for in folders and hub repos.
DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
_SUFFIXES = (".safetensors", ".bin")
_PREFIX = "rpg-lora-"
# A hub id's 'org/name' part, spelled as rpg.backbones.loading spells model ids.
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

#: Per region, the (adapter name, scale) pairs that act on that region's text only.
RegionAdapters = tuple[tuple[tuple[str, float], ...], ...]

_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 (hex) of a file's bytes; remembered per (path, size, mtime) for repeat renders."""
    p = Path(path)
    stat = p.stat()
    key = (str(p.resolve()), stat.st_size, stat.st_mtime_ns)
    found = _HASHES.get(key)
    if found is None:
        digest = hashlib.sha256()
        with p.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        found = _HASHES[key] = digest.hexdigest()
    return found


def resolve_lora(
    name: str,
    *,
    allow_download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[str, Path]:
    """``(recorded name, local file)`` of a LoRA reference, touching no network unless allowed.

    Local files and folders are recorded as absolute paths; hub ids as given.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return str(path.resolve()), path.resolve()
    if path.is_dir():
        inside = path / DEFAULT_WEIGHT_NAME
        if inside.is_file():
            return str(path.resolve()), inside.resolve()
        found = sorted(p.name for p in path.iterdir() if p.suffix in _SUFFIXES)
        hint = f"; it holds {', '.join(found)}: pass one of them" if found else ""
        raise ModelNotFoundError(f"LoRA folder {path} has no {DEFAULT_WEIGHT_NAME}{hint}")
    parts = name.strip().split("/")
    repo = "/".join(parts[:2])
    local_looking = (
        name.startswith((".", "~", os.sep))
        or (path.suffix in _SUFFIXES and len(parts) <= 2)
        or not _REPO_ID.match(repo)
    )
    if local_looking:
        raise ModelNotFoundError(
            f"LoRA {name!r}: no such file or folder; pass a .safetensors file, a folder with "
            f"{DEFAULT_WEIGHT_NAME}, or a hub id ('org/name') in the local Hugging Face cache"
        )
    from rpg.backbones.loading import hub_file  # imports torch: only for hub ids

    filename = "/".join(parts[2:]) or DEFAULT_WEIGHT_NAME
    file = hub_file(
        repo,
        filename,
        allow_download=allow_download,
        cache_dir=cache_dir,
        what="LoRA",
        name=name,
        how_to="pass a local .safetensors file",
    )
    return name, file


def check_lora_files(specs: Sequence[LoraInput]) -> None:
    """Fail fast, before any model loads: every local LoRA exists and has its recorded hash.

    Hub ids are looked up in the cache when the render loads them; nothing here imports torch.
    """
    for spec in specs:
        path = Path(spec.name).expanduser()
        parts = spec.name.split("/")
        hub = not path.exists() and _REPO_ID.match("/".join(parts[:2])) is not None
        if hub and not (path.suffix in _SUFFIXES and len(parts) <= 2):
            continue
        _checked(spec)


def request_loras(request: GenerationRequest) -> list[LoraInput]:
    """Every LoRA a request names: the whole image's, then each region's."""
    return [*request.loras, *(s for r in _plan_regions(request) for s in r.loras)]


def _checked(spec: LoraInput, **options: Any) -> tuple[LoraInput, Path]:
    """The spec with its resolved name and file hash, refusing a file that changed."""
    name, file = resolve_lora(spec.name, **options)
    digest = file_sha256(file)
    if spec.sha256 is not None and spec.sha256 != digest:
        raise ConfigurationError(
            f"LoRA {spec.name!r} has changed since the image was rendered: its file {file} has "
            f"sha256 {digest[:12]}…, the request recorded {spec.sha256[:12]}…; put the original "
            "file back, or name the LoRA again (--lora NAME, or a LoRA without sha256) to render "
            "with the file as it is now"
        )
    return spec.model_copy(update={"name": name, "sha256": digest}), file


# ----------------------------------------------------------------- the context


@dataclass(frozen=True)
class AppliedLoras:
    """What :func:`applied_loras` did: the request as rendered and the region adapters."""

    #: The request with every LoRA's resolved name and file hash recorded (plan included).
    request: GenerationRequest
    #: Per region, the adapters acting on its text only; ``None`` when no region has any.
    region_adapters: RegionAdapters | None = None


def _plan_regions(request: GenerationRequest) -> list[Any]:
    plan = request.plan
    return list(getattr(plan, "regions", ()) or ()) if plan is not None else []


@contextmanager
def applied_loras(
    backbone: Backbone,
    request: GenerationRequest,
    *,
    allow_download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Iterator[AppliedLoras]:
    """Load the request's LoRAs into ``backbone.pipe`` for the block; remove them after.

    Everything is checked before anything is loaded: every file is found and hashed, and a
    per-region LoRA on a backbone that cannot take one is refused.
    """
    regions = _plan_regions(request)
    if not request.loras and not any(r.loras for r in regions):
        yield AppliedLoras(request)
        return
    pipe = backbone.pipe
    if not hasattr(pipe, "load_lora_weights"):
        raise ConfigurationError(
            f"{type(pipe).__name__} ({backbone.name!r}) has no LoRA loader in diffusers, so it "
            "cannot render with LoRAs; remove them from the request (or --lora)"
        )
    if any(r.loras for r in regions):
        why = region_lora_refusal(backbone)
        if why is not None:
            raise ConfigurationError(why)
    try:
        import peft  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "rendering with LoRAs needs the 'peft' package (diffusers loads LoRAs through it): "
            "pip install 'rpg-diffusion[lora]' (or pip install peft)"
        ) from None

    options = {"allow_download": allow_download, "cache_dir": cache_dir}
    global_specs = [_checked(s, **options) for s in request.loras]
    region_specs = [[_checked(s, **options) for s in r.loras] for r in regions]

    plan = request.plan
    if plan is not None and any(region_specs):
        plan = _with_region_loras(plan, [[s for s, _ in specs] for specs in region_specs])
    recorded = request.model_copy(update={"loras": tuple(s for s, _ in global_specs), "plan": plan})

    existing = {a for names in pipe.get_list_adapters().values() for a in names}
    clash = sorted(a for a in existing if a.startswith(_PREFIX))
    if clash:
        raise ConfigurationError(
            f"the pipeline already holds adapters named {', '.join(clash)}, rpg's own names; "
            "delete them (pipe.delete_adapters) before rendering with LoRAs"
        )
    snapshot = _Snapshot.take(pipe)
    ours: list[str] = []
    try:
        global_names = []
        for i, (_spec, file) in enumerate(global_specs):
            adapter = f"{_PREFIX}{i}"
            ours.append(adapter)
            pipe.load_lora_weights(str(file), adapter_name=adapter)
            global_names.append(adapter)
        by_file: dict[Path, str] = {}
        region_adapters: list[tuple[tuple[str, float], ...]] = []
        for specs in region_specs:
            pairs = []
            for spec, file in specs:
                found = by_file.get(file)
                if found is None:
                    found = by_file[file] = f"{_PREFIX}region-{len(by_file)}"
                    ours.append(found)
                    pipe.load_lora_weights(str(file), adapter_name=found)
                    _check_region_adapter(pipe, found, spec.name)
                pairs.append((found, spec.scale))
            region_adapters.append(tuple(pairs))
        if global_names:
            pipe.set_adapters(global_names, [s.scale for s, _ in global_specs])
            pipe.enable_lora()  # the user may have disabled theirs; ours must act
        else:
            pipe.disable_lora()  # region adapters act through the processor only
        yield AppliedLoras(recorded, tuple(region_adapters) if any(region_adapters) else None)
    finally:
        snapshot.restore(pipe, ours)


def _with_region_loras(plan: Any, specs: list[list[LoraInput]]) -> Any:
    """``plan`` with each region's LoRAs replaced by their recorded (resolved, hashed) form."""
    if plan.layers:
        layers = [
            x.model_copy(update={"loras": tuple(s)})
            for x, s in zip(plan.layers, specs, strict=True)
        ]
        return plan.model_copy(update={"layers": tuple(layers)})
    rows, k = [], 0
    for row in plan.rows:
        regions = []
        for region in row.regions:
            regions.append(region.model_copy(update={"loras": tuple(specs[k])}))
            k += 1
        rows.append(row.model_copy(update={"regions": tuple(regions)}))
    return plan.model_copy(update={"rows": tuple(rows)})
