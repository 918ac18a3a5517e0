"""Test-only: export a tiny SDXL as one original-layout (SGM) ``.safetensors`` file.

The original SDXL checkpoint layout (Stability's "SGM" names). diffusers converts it to its own
layout when loading; this is the inverse for the tiny architectures, so a tiny SDXL can be
shared and loaded exactly like a fine-tune downloaded as one file, and ``from_single_file`` is
tested for real.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# The original SDXL checkpoint layout (Stability's "SGM" names). diffusers converts it to its
# own layout when loading; this is the inverse for the architectures written above, so a tiny
# SDXL can be shared and loaded exactly like a fine-tune downloaded as one file.

_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet_key(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET.get(head, head)}.{tail}"


def _layer_key(blocks: str, index: int, kind: str, rest: str) -> str:
    """A resnet's (``kind == "resnets"``) or attention's parameter in original block ``index``."""
    if kind == "resnets":
        return f"{blocks}.{index}.0.{_resnet_key(rest)}"
    return f"{blocks}.{index}.1.{rest}"


def _unet_key(key: str, layers: int, up_with_attention: set[int]) -> str:
    """One diffusers UNet parameter name in the original layout."""
    for new, old in _UNET_FIXED.items():
        if key.startswith(new + "."):
            return old + key[len(new) :]
    parts = key.split(".")
    if parts[0] == "down_blocks":
        block = int(parts[1])
        first = 1 + block * (layers + 1)
        if parts[2] == "downsamplers":  # down_blocks.b.downsamplers.0.conv.* → op
            return f"input_blocks.{first + layers}.0.op.{'.'.join(parts[5:])}"
        return _layer_key("input_blocks", first + int(parts[3]), parts[2], ".".join(parts[4:]))
    if parts[0] == "mid_block":
        rest = ".".join(parts[3:])
        if parts[1] == "resnets":
            return f"middle_block.{2 * int(parts[2])}.{_resnet_key(rest)}"
        return f"middle_block.1.{rest}"
    if parts[0] == "up_blocks":
        block = int(parts[1])
        first = block * (layers + 1)
        if parts[2] == "upsamplers":
            # after the last layer's resnet (.0) and attention (.1) when the block has one
            slot = 2 if block in up_with_attention else 1
            return f"output_blocks.{first + layers}.{slot}.conv.{'.'.join(parts[5:])}"
        return _layer_key("output_blocks", first + int(parts[3]), parts[2], ".".join(parts[4:]))
    raise ValueError(f"no original-layout name for UNet parameter {key!r}")


def _unet_state_dict(unet: Any) -> dict[str, torch.Tensor]:
    state = unet.state_dict()
    layers = int(unet.config.layers_per_block)
    with_attention = {
        int(k.split(".")[1]) for k in state if k.startswith("up_blocks.") and ".attentions." in k
    }
    return {
        "model.diffusion_model." + _unet_key(k, layers, with_attention): v for k, v in state.items()
    }


def _vae_key(key: str, n_blocks: int) -> str:
    parts = key.split(".")
    coder = parts[0]
    if parts[1] in ("conv_in", "conv_out"):
        return key
    if parts[1] == "conv_norm_out":
        return f"{coder}.norm_out.{parts[2]}"
    if coder in ("quant_conv", "post_quant_conv"):
        return key
    if parts[1] == "mid_block":
        if parts[2] == "resnets":
            rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{coder}.mid.block_{int(parts[3]) + 1}.{rest}"
        name = {
            "group_norm": "norm",
            "to_q": "q",
            "to_k": "k",
            "to_v": "v",
            "to_out": "proj_out",
        }[parts[4]]
        tail = parts[-1]
        return f"{coder}.mid.attn_1.{name}.{tail}"
    if parts[1] in ("down_blocks", "up_blocks"):
        block = int(parts[2])
        level, word = (block, "down") if parts[1] == "down_blocks" else (n_blocks - 1 - block, "up")
        if parts[3] == "resnets":
            rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
            return f"{coder}.{word}.{level}.block.{parts[4]}.{rest}"
        sampler = "downsample" if word == "down" else "upsample"
        return f"{coder}.{word}.{level}.{sampler}.conv.{parts[-1]}"
    raise ValueError(f"no original-layout name for VAE parameter {key!r}")


def _vae_state_dict(vae: Any) -> dict[str, torch.Tensor]:
    n_blocks = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        new = _vae_key(key, n_blocks)
        if ".mid.attn_1." in new and new.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original attention uses 1×1 convolutions
        out["first_stage_model." + new] = value
    return out


def _clip_l_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    prefix = "conditioner.embedders.0.transformer."
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("position_ids"):
            continue
        name = key if key.startswith("text_model.") else "text_model." + key
        out[prefix + name] = value
    return out


def _open_clip_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    prefix = "conditioner.embedders.1.model."
    state = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
    out = {
        prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        prefix + "ln_final.weight": state.pop("final_layer_norm.weight"),
        prefix + "ln_final.bias": state.pop("final_layer_norm.bias"),
        # OpenCLIP multiplies by the projection from the right: store the transpose.
        prefix + "text_projection": state.pop("text_projection.weight").T.contiguous(),
    }
    state.pop("embeddings.position_ids", None)
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            )
            out[f"{dst}attn.out_proj.{kind}"] = state.pop(f"{src}self_attn.out_proj.{kind}")
            out[f"{dst}ln_1.{kind}"] = state.pop(f"{src}layer_norm1.{kind}")
            out[f"{dst}ln_2.{kind}"] = state.pop(f"{src}layer_norm2.{kind}")
            out[f"{dst}mlp.c_fc.{kind}"] = state.pop(f"{src}mlp.fc1.{kind}")
            out[f"{dst}mlp.c_proj.{kind}"] = state.pop(f"{src}mlp.fc2.{kind}")
    if state:
        raise ValueError(f"text_encoder_2 parameters with no original-layout name: {sorted(state)}")
    return out


def sdxl_to_single_file_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """All weights of an SDXL pipeline under their original single-file (SGM) names."""
    parts: list[Mapping[str, torch.Tensor]] = [
        _unet_state_dict(pipe.unet),
        _vae_state_dict(pipe.vae),
        _clip_l_state_dict(pipe.text_encoder),
        _open_clip_state_dict(pipe.text_encoder_2),
    ]
    out: dict[str, torch.Tensor] = {}
    for part in parts:
        for key, value in part.items():
            if key in out:
                raise ValueError(f"two parameters map to the single-file name {key!r}")
            out[key] = value.detach().contiguous().cpu()
    return out


def save_sdxl_single_file(folder: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Save the SDXL pipeline in diffusers ``folder`` as one original-layout ``.safetensors``.

    Loading it back offline needs the architecture's configs:
    ``StableDiffusionXLPipeline.from_single_file(path, config=folder, local_files_only=True)``
    (rpg: ``RPG.from_pretrained(path, config=folder)``).
    """
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    pipe = StableDiffusionXLPipeline.from_pretrained(os.fspath(folder), local_files_only=True)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(sdxl_to_single_file_state_dict(pipe), str(target))
    return target


# ------------------------------------------------------------------ MM-DiT transformers
#
# FLUX and SD3 fine-tunes ship as one transformer file in their authors' layouts (Black Forest
# Labs' ``flux`` repository, Stability's ``sd3`` reference code). The writers below are the
# inverse of what diffusers' ``from_single_file`` converts: names renamed, the separate q/k/v
# projections fused, and the final AdaLN's (scale, shift) halves stored as (shift, scale).


def _halves_swapped(weight: torch.Tensor) -> torch.Tensor:
    """diffusers' AdaLayerNormContinuous reads (scale, shift); the originals hold (shift, scale)."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


class _Renamer:
    """Moves parameters out of a diffusers state dict under new names, and says what is left."""

    def __init__(self, state: Mapping[str, torch.Tensor]) -> None:
        self.state = dict(state)
        self.out: dict[str, torch.Tensor] = {}

    def move(self, source: str, target: str) -> None:
        """``source.weight``/``.bias`` (whichever exist, or ``source`` itself) → ``target``."""
        if source in self.state:
            self._put(target, self.state.pop(source))
            return
        found = False
        for kind in ("weight", "bias"):
            if f"{source}.{kind}" in self.state:
                self._put(f"{target}.{kind}", self.state.pop(f"{source}.{kind}"))
                found = True
        if not found:
            raise KeyError(f"no parameter {source!r} in the diffusers state dict")

    def fuse(self, sources: list[str], target: str) -> None:
        """Concatenate the sources' weights (and biases) along the output axis into ``target``."""
        for kind in ("weight", "bias"):
            parts = [self.state.pop(f"{s}.{kind}") for s in sources]
            self._put(f"{target}.{kind}", torch.cat(parts, dim=0))

    def swap(self, source: str, target: str) -> None:
        for kind in ("weight", "bias"):
            self._put(f"{target}.{kind}", _halves_swapped(self.state.pop(f"{source}.{kind}")))

    def _put(self, key: str, value: torch.Tensor) -> None:
        if key in self.out:
            raise ValueError(f"two parameters map to the original name {key!r}")
        self.out[key] = value

    def done(self, what: str) -> dict[str, torch.Tensor]:
        if self.state:
            raise ValueError(f"{what} parameters with no original name: {sorted(self.state)}")
        return {k: v.detach().contiguous().cpu() for k, v in self.out.items()}


def _block_indices(state: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    return sorted({int(k[len(prefix) :].split(".")[0]) for k in state if k.startswith(prefix)})


def flux_to_original_state_dict(transformer: Any) -> dict[str, torch.Tensor]:
    """A diffusers ``FluxTransformer2DModel``'s weights under Black Forest Labs' names."""
    r = _Renamer(transformer.state_dict())
    embedders = {"timestep": "time_in", "text": "vector_in", "guidance": "guidance_in"}
    for ours, theirs in embedders.items():
        if f"time_text_embed.{ours}_embedder.linear_1.weight" in r.state:
            r.move(f"time_text_embed.{ours}_embedder.linear_1", f"{theirs}.in_layer")
            r.move(f"time_text_embed.{ours}_embedder.linear_2", f"{theirs}.out_layer")
    r.move("context_embedder", "txt_in")
    r.move("x_embedder", "img_in")
    for i in _block_indices(r.state, "transformer_blocks."):
        src, dst = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for stream, attn, norm, ff, proj in (
            ("img", "attn.to_", "attn.norm_", "ff", "attn.to_out.0"),
            ("txt", "attn.add_", "attn.norm_added_", "ff_context", "attn.to_add_out"),
        ):
            names = [f"{src}{attn}{p}" + ("_proj" if stream == "txt" else "") for p in "qkv"]
            r.fuse(names, f"{dst}{stream}_attn.qkv")
            r.move(f"{src}{norm}q.weight", f"{dst}{stream}_attn.norm.query_norm.scale")
            r.move(f"{src}{norm}k.weight", f"{dst}{stream}_attn.norm.key_norm.scale")
            r.move(f"{src}{proj}", f"{dst}{stream}_attn.proj")
            r.move(f"{src}{ff}.net.0.proj", f"{dst}{stream}_mlp.0")
            r.move(f"{src}{ff}.net.2", f"{dst}{stream}_mlp.2")
        r.move(f"{src}norm1.linear", f"{dst}img_mod.lin")
        r.move(f"{src}norm1_context.linear", f"{dst}txt_mod.lin")
    for i in _block_indices(r.state, "single_transformer_blocks."):
        src, dst = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        r.fuse([f"{src}attn.to_q", f"{src}attn.to_k", f"{src}attn.to_v", f"{src}proj_mlp"],
               f"{dst}linear1")  # fmt: skip
        r.move(f"{src}attn.norm_q.weight", f"{dst}norm.query_norm.scale")
        r.move(f"{src}attn.norm_k.weight", f"{dst}norm.key_norm.scale")
        r.move(f"{src}proj_out", f"{dst}linear2")
        r.move(f"{src}norm.linear", f"{dst}modulation.lin")
    r.move("proj_out", "final_layer.linear")
    r.swap("norm_out.linear", "final_layer.adaLN_modulation.1")
    return r.done("FLUX transformer")


def sd3_to_original_state_dict(transformer: Any) -> dict[str, torch.Tensor]:
    """A diffusers ``SD3Transformer2DModel``'s weights under Stability's (MM-DiT) names.

    The last block is ``context_pre_only``: its text stream has no output projection or MLP,
    and its text AdaLN (scale, shift only) is stored swapped like the final layer's.
    """
    r = _Renamer(transformer.state_dict())
    r.move("pos_embed.pos_embed", "pos_embed")
    r.move("pos_embed.proj", "x_embedder.proj")
    r.move("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0")
    r.move("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2")
    r.move("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0")
    r.move("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2")
    r.move("context_embedder", "context_embedder")
    blocks = _block_indices(r.state, "transformer_blocks.")
    for i in blocks:
        src, x, c = (
            f"transformer_blocks.{i}.",
            f"joint_blocks.{i}.x_block.",
            f"joint_blocks.{i}.context_block.",
        )
        r.fuse([f"{src}attn.to_{p}" for p in "qkv"], f"{x}attn.qkv")
        r.fuse([f"{src}attn.add_{p}_proj" for p in "qkv"], f"{c}attn.qkv")
        for ours, theirs in (("norm_", x), ("norm_added_", c)):
            for p in "qk":
                if f"{src}attn.{ours}{p}.weight" in r.state:
                    r.move(f"{src}attn.{ours}{p}.weight", f"{theirs}attn.ln_{p}.weight")
        r.move(f"{src}attn.to_out.0", f"{x}attn.proj")
        if f"{src}attn2.to_q.weight" in r.state:  # SD3.5's image-only second attention
            r.fuse([f"{src}attn2.to_{p}" for p in "qkv"], f"{x}attn2.qkv")
            for p in "qk":
                if f"{src}attn2.norm_{p}.weight" in r.state:
                    r.move(f"{src}attn2.norm_{p}.weight", f"{x}attn2.ln_{p}.weight")
            r.move(f"{src}attn2.to_out.0", f"{x}attn2.proj")
        r.move(f"{src}norm1.linear", f"{x}adaLN_modulation.1")
        r.move(f"{src}ff.net.0.proj", f"{x}mlp.fc1")
        r.move(f"{src}ff.net.2", f"{x}mlp.fc2")
        if i == blocks[-1]:
            r.swap(f"{src}norm1_context.linear", f"{c}adaLN_modulation.1")
            continue
        r.move(f"{src}attn.to_add_out", f"{c}attn.proj")
        r.move(f"{src}norm1_context.linear", f"{c}adaLN_modulation.1")
        r.move(f"{src}ff_context.net.0.proj", f"{c}mlp.fc1")
        r.move(f"{src}ff_context.net.2", f"{c}mlp.fc2")
    r.move("proj_out", "final_layer.linear")
    r.swap("norm_out.linear", "final_layer.adaLN_modulation.1")
    return r.done("SD3 transformer")


def save_transformer_single_file(
    folder: str | os.PathLike[str], path: str | os.PathLike[str], *, prefix: str = ""
) -> Path:
    """Save the transformer of the FLUX or SD3 diffusers ``folder`` as one original-layout file.

    ``prefix`` (e.g. ``"model.diffusion_model."``) is put before every name, as some trainers
    save them. Loading it back: ``RPG.from_pretrained(path, config=folder)``.
    """
    import json

    from safetensors.torch import save_file

    config = json.loads((Path(folder) / "transformer" / "config.json").read_text())
    name = config["_class_name"]
    import diffusers

    transformer = getattr(diffusers, name).from_pretrained(Path(folder) / "transformer")
    writers = {
        "FluxTransformer2DModel": flux_to_original_state_dict,
        "SD3Transformer2DModel": sd3_to_original_state_dict,
    }
    state = writers[name](transformer)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v for k, v in state.items()}, str(target))
    return target
