"""Single-file FLUX / SD3 transformers: a fine-tune's weights put into a diffusers pipeline.

FLUX and SD3 fine-tunes ship as one file holding only the transformer, in their authors' layouts
(Black Forest Labs' names for FLUX, Stability's MM-DiT names for SD3). The text encoders, VAE
and scheduler come from ``config``: a diffusers folder (or cached hub id) of the same family.
Before any weight is read, the file's family is checked against the folder's, so an SD3 file
with a FLUX folder is a clear error rather than a conversion crash.

diffusers' ``from_single_file`` converts the layout. Its FLUX converter assumes FLUX.1's width
(3072) when it splits the single-stream blocks' fused projection, so a FLUX-architecture
transformer of another width (rpg's ``tiny-flux``, pruned or distilled variants) is converted
here instead and handed to ``from_single_file`` already in diffusers' layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rpg.backbones.loading import ModelInfo, hf_offline, load_pipeline, resolve_model
from rpg.errors import ConfigurationError, ModelNotFoundError

if TYPE_CHECKING:
    from rpg.backbones.dit import JointBackbone

__all__ = ["FLUX1_WIDTH", "flux_to_diffusers", "load_single_file_pipeline"]

#: The hidden width of every FLUX.1 release, which diffusers' FLUX converter takes for granted.
FLUX1_WIDTH = 3072
#: Some trainers save every name under this prefix; diffusers and rpg accept both.
_PREFIX = "model.diffusion_model."


def _family_of(checkpoint_type: str | None) -> str | None:
    """The backbone whose single files diffusers' type names (``"flux-dev"`` → ``"flux"``)."""
    if checkpoint_type is None:
        return None
    from rpg.plugins import backbone_registry

    for entry in backbone_registry().detection_order():
        if checkpoint_type in entry.target.checkpoint_types:
            return entry.name
    return None


def check_family(backbone: type[JointBackbone], info: ModelInfo) -> None:
    """Refuse a single file whose architecture is not ``backbone``'s (the ``config`` folder's)."""
    found = info.checkpoint_type
    if found in backbone.checkpoint_types:
        return
    family = _family_of(found)
    what = f"a {family!r} checkpoint" if family else f"not a {backbone.name!r} transformer"
    raise ConfigurationError(
        f"{info.reference} is {what} (diffusers reads its tensor names as {found!r}), but "
        f"--config {info.options.get('config')} is a {info.pipeline_class_name} folder "
        f"({backbone.name}); pass --config with a diffusers folder of the file's own model family"
    )


def _tensor_shape(path: Path, key: str) -> tuple[int, ...] | None:
    """The shape of ``key`` in checkpoint ``path`` (with or without the prefix), reading no data."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            for name in (key, _PREFIX + key):
                if name in keys:
                    return tuple(handle.get_slice(name).get_shape())
        return None
    state = _read_checkpoint(path)
    for name in (key, _PREFIX + key):
        if name in state:
            return tuple(state[name].shape)
    return None


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    state = data.get("state_dict", data) if isinstance(data, dict) else {}
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


# Black Forest Labs' FLUX names → diffusers' (a module name also renames its .weight/.bias).
_FLUX_TOP = (
    ("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
    ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
    ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
    ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
    ("txt_in", "context_embedder"),
    ("img_in", "x_embedder"),
    ("final_layer.linear", "proj_out"),
)
_FLUX_DOUBLE = (
    ("img_mod.lin", "norm1.linear"),
    ("txt_mod.lin", "norm1_context.linear"),
    ("img_attn.proj", "attn.to_out.0"),
    ("txt_attn.proj", "attn.to_add_out"),
    ("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
    ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
    ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
    ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"),
    ("img_mlp.0", "ff.net.0.proj"),
    ("img_mlp.2", "ff.net.2"),
    ("txt_mlp.0", "ff_context.net.0.proj"),
    ("txt_mlp.2", "ff_context.net.2"),
)
_FLUX_SINGLE = (
    ("modulation.lin", "norm.linear"),
    ("linear2", "proj_out"),
    ("norm.query_norm.scale", "attn.norm_q.weight"),
    ("norm.key_norm.scale", "attn.norm_k.weight"),
)


def _renamed(name: str, table: tuple[tuple[str, str], ...]) -> str | None:
    for original, ours in table:
        if name == original:
            return ours
        if name.startswith(original + "."):
            return ours + name[len(original) :]
    return None


def flux_to_diffusers(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A FLUX transformer checkpoint in Black Forest Labs' layout, in diffusers' layout.

    Any width: the split of the fused projections is read from the tensors (``img_in`` gives
    the width). The parts are copied rather than left as views into the fused tensor: a view's
    offset in memory can change the CPU kernels' summation order, and so the last bits of a
    render. Names rpg does not know are an error rather than silently dropped weights.
    """
    state = {k.removeprefix(_PREFIX): v for k, v in checkpoint.items()}
    if "img_in.weight" not in state:
        raise ConfigurationError("not a FLUX transformer checkpoint: it has no img_in.weight")
    width = int(state["img_in.weight"].shape[0])
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        head, _, rest = key.partition(".")
        index, _, name = rest.partition(".")
        kind = name.rpartition(".")[2]
        if head == "double_blocks" and name in ("img_attn.qkv." + kind, "txt_attn.qkv." + kind):
            stream = "attn.to_{}" if name.startswith("img") else "attn.add_{}_proj"
            for part, chunk in zip("qkv", value.chunk(3, dim=0), strict=True):
                out[f"transformer_blocks.{index}.{stream.format(part)}.{kind}"] = chunk.clone()
            continue
        if head == "single_blocks" and name == "linear1." + kind:
            sizes = (width, width, width, value.shape[0] - 3 * width)
            parts = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
            for part, chunk in zip(parts, value.split(sizes, dim=0), strict=True):
                out[f"single_transformer_blocks.{index}.{part}.{kind}"] = chunk.clone()
            continue
        if key.startswith("final_layer.adaLN_modulation.1."):
            shift, scale = value.chunk(2, dim=0)  # diffusers' AdaLN reads (scale, shift)
            out[f"norm_out.linear.{kind}"] = torch.cat([scale, shift], dim=0)
            continue
        if head == "double_blocks":
            new = _renamed(name, _FLUX_DOUBLE)
            target = None if new is None else f"transformer_blocks.{index}.{new}"
        elif head == "single_blocks":
            new = _renamed(name, _FLUX_SINGLE)
            target = None if new is None else f"single_transformer_blocks.{index}.{new}"
        else:
            target = _renamed(key, _FLUX_TOP)
        if target is None:
            unknown.append(key)
        else:
            out[target] = value
    if unknown:
        shown = ", ".join(sorted(unknown)[:5]) + (" …" if len(unknown) > 5 else "")
        raise ConfigurationError(
            f"the FLUX checkpoint has {len(unknown)} parameter(s) that are not FLUX.1 "
            f"transformer weights: {shown}"
        )
    return out


def load_single_file_pipeline(
    backbone: type[JointBackbone], info: ModelInfo, *, dtype: torch.dtype, **options: Any
) -> Any:
    """The stock pipeline of ``config`` with the transformer from the single file ``info``.

    ``options`` go to the pipeline's ``from_pretrained`` (as for a folder).
    """
    config = info.options.get("config")
    if config is None:
        raise ConfigurationError(
            f"{info.reference} is a single file; a {backbone.name} transformer checkpoint needs "
            f"--config (Python: config=) with a diffusers folder of the same model family "
            f"({backbone.name}, e.g. the base model it was fine-tuned from) for the text "
            "encoders, VAE and scheduler"
        )
    check_family(backbone, info)
    assert info.path is not None
    import diffusers

    from rpg.backbones.loading import _dtype_keyword

    transformer_class = getattr(diffusers, backbone.transformer_class_name)
    source: str | dict[str, torch.Tensor] = str(info.path)
    if backbone.transformer_class_name == "FluxTransformer2DModel":
        width = _tensor_shape(info.path, "img_in.weight")
        if width is not None and width[0] != FLUX1_WIDTH:  # diffusers' converter would fail
            source = flux_to_diffusers(_read_checkpoint(info.path))
    folder = resolve_model(
        os.fspath(config),
        allow_download=bool(info.options.get("allow_download", False)),
        cache_dir=info.options.get("cache_dir"),
    )
    common: dict[str, Any] = {
        "local_files_only": hf_offline() or not info.options.get("allow_download", False),
        _dtype_keyword(): dtype,
    }
    if "cache_dir" in info.options:
        common["cache_dir"] = info.options["cache_dir"]
    assert folder.path is not None
    config_source = str(folder.path)  # a folder, or the cached snapshot of a hub id
    if folder.kind == "hub" and not (folder.path / "transformer" / "config.json").is_file():
        # not cached yet (allow_download): diffusers fetches it, at the revision resolved
        config_source = folder.reference.partition("@")[0]
        common["config_revision"] = folder.path.name
    try:
        transformer = transformer_class.from_single_file(
            source, config=config_source, subfolder="transformer", **common
        )
    except OSError as exc:
        raise ModelNotFoundError(
            f"cannot load the {backbone.name} transformer {info.path}: the configs of --config "
            f"{config} are missing ({exc}); pass a diffusers folder of the same model"
        ) from exc
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ConfigurationError(
            f"{info.path} does not fit the transformer of --config {config} ({exc}); pass the "
            f"diffusers folder of the {backbone.name} model the file was made from (the same "
            "size and variant)"
        ) from exc
    return load_pipeline(
        backbone.pipeline_class(), folder, dtype=dtype, transformer=transformer, **options
    )
