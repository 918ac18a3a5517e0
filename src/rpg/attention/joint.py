"""Regional *joint* attention for MM-DiT models (FLUX.1, SD3 / SD3.5).

MM-DiT blocks have no cross-attention: text tokens and image tokens are concatenated and attend
jointly. With packed text ``[base | region 0 | … | region N−1]`` and image tokens on the patch
grid, every regional joint-attention call computes (see ``DESIGN.md``):

* image token ``p`` in cell ``R_r``: keys ``text(r) ∪ I(p)``, blended by ``β_r`` with keys
  ``text(base) ∪ I(p)``; ``I(p)`` is every image token (``image_attention="global"``, the
  default: image self-attention untouched, as RPG does in a UNet) or only ``R_r``'s
  (``"region"``, what the published FLUX regional-prompting methods do in their masked blocks);
* text token of region ``r``: keys ``text(r) ∪ image tokens of R_r``;
* text token of the base: keys ``text(base) ∪ all image tokens``;
* the negative half of a CFG batch: plain attention over the negative prompt, as stock.

In a call that is not regional (``regional_steps`` has passed, or a block skipped by
``regional_blocks``) image queries see ``text(base) ∪ all image tokens``; text keeps its rules.

Computed like :class:`~rpg.attention.processor.RegionalAttnProcessor`: the projections, norms and
RoPE run once over the whole joint sequence exactly as the stock processors run them; then every
region's queries are gathered (one permutation makes each region contiguous), attend to the keys
of their own set with one unmasked attention call each through diffusers' ``dispatch_attention_fn``
(so ``set_attention_backend`` still chooses the kernel), and are scattered back. No
``(T+P)²`` mask is built. With global image attention every region shares the image keys: they are
written once into a buffer and each region's text keys are written in front of (FLUX) or behind
(SD3) them, so no per-region copy of the image keys is made.

What this adds to the stock block: the packed text itself — text tokens pass through every
block's projections and MLPs, so the packed length is the cost driver — and, when some
``β_r > 0``, the base term. The base term shares ``I(p)`` with the region term, so the image keys
are attended once and the partial attentions over ``I(p)``, ``text(r)`` and ``text(base)`` are
merged exactly through their log-sum-exps (:mod:`rpg.attention.lse`); the image-to-image
attention is paid once, as in the stock block. That needs kernels returning the log-sum-exp
(diffusers' default backend, CPU or CUDA, no autograd); otherwise the two attentions are computed
separately, which gives the same result at the cost of one more image-to-image attention.

Under ``torch.compile`` (the transformer compiled whole, or its repeated blocks) a call reads
nothing from the device and no Python state that changes from one step to the next: the region
index is built before the loop (:meth:`JointRegions.prepare`), which half of a CFG pair a call is
comes from the batch size (SD3), the identity of the embeddings (FLUX) or the order of calls
(FLUX.2), and the step for ``regional_steps`` from the pipeline's step-end callback
(:meth:`JointRegions.step_callback`), as one flag that flips once, so a run compiles at most
one more graph, at the step where the image stops being regional.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from rpg.attention.flux2_layers import is_flux2, is_flux2_single_stream
from rpg.attention.joint_core import _JointAttention
from rpg.attention.joint_lora import region_lora_hooks
from rpg.attention.joint_processors import FluxRegionalAttnProcessor, SD3RegionalAttnProcessor
from rpg.attention.joint_regions import (
    ImageAttention,
    JointAttentionOptions,
    JointRegions,
    Rows,
)

__all__ = [
    "FluxRegionalAttnProcessor",
    "ImageAttention",
    "JointAttentionOptions",
    "JointRegions",
    "Rows",
    "SD3RegionalAttnProcessor",
    "joint_attention_names",
    "regional_joint",
]

# ---------------------------------------------------------------------------------- installing


def joint_attention_names(model: Any) -> list[str]:
    """Keys of ``model.attn_processors`` whose layers are joint (text + image) attention.

    FLUX: every ``FluxAttention`` (double-stream layers have added projections, single-stream
    layers see the joint sequence as their input). SD3: attention with added key/value
    projections; SD3.5's image-only ``attn2`` is left out.
    """
    from diffusers.models.transformers.transformer_flux import FluxAttention

    modules = dict(model.named_modules())
    names = []
    for key in model.attn_processors:
        module = modules.get(key.removesuffix(".processor"))
        if module is None:
            raise TypeError(f"cannot find the attention module of processor {key!r}")
        joint = isinstance(module, FluxAttention) or getattr(module, "added_kv_proj_dim", None)
        if joint or is_flux2_single_stream(module):
            names.append(key)
    return names


#: The regional processor class of each joint layer (by name) of a transformer.
ProcessorClasses = Callable[[Any, list[str]], list[type["_JointAttention"]]]


def _processor_classes(
    transformer: Any, names: list[str], chosen: ProcessorClasses | None
) -> list[type[_JointAttention]]:
    """The regional processor class for each of ``names``: ``chosen``'s (FLUX.2's come from
    :func:`rpg.attention.joint_flux2.regional_flux2`), else FLUX.1's or SD3's."""
    if chosen is not None:
        return chosen(transformer, names)
    if is_flux2(transformer):
        raise TypeError(
            "regional_joint needs FLUX.2's processors for a Flux2Transformer2DModel; use "
            "rpg.attention.joint_flux2.regional_flux2, which also numbers the packed text ids"
        )
    cls = FluxRegionalAttnProcessor if _is_flux(transformer) else SD3RegionalAttnProcessor
    return [cls] * len(names)


def _is_flux(model: Any) -> bool:
    from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel

    return isinstance(model, FluxTransformer2DModel)


def _timestep(value: Any) -> float | None:
    """The call's timestep on the host (a device sync: eager fallback for ``regional_steps``)."""
    if isinstance(value, torch.Tensor) and value.numel() and value.device.type != "meta":
        return float(value.reshape(-1)[0])
    if isinstance(value, int | float):
        return float(value)
    return None


def _weights_device(model: Any) -> torch.device | None:
    for p in model.parameters():
        if p.device.type != "meta":
            return torch.device(p.device)
    return None


@contextmanager
def regional_joint(
    transformer: Any,
    regions: JointRegions,
    *,
    guidance_batch: int | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    processor_classes: ProcessorClasses | None = None,
) -> Iterator[list[_JointAttention]]:
    """Use regional joint-attention processors on every joint layer of ``transformer``.

    ``transformer`` is a ``FluxTransformer2DModel`` or an ``SD3Transformer2DModel``; a
    ``Flux2Transformer2DModel`` goes through :func:`rpg.attention.joint_flux2.regional_flux2`,
    which passes its ``processor_classes`` (one class per layer name) and text ids. The
    processors go in through ``set_attn_processor`` (keeping each replaced processor's attention
    backend) and the previous ones are restored on exit, also on error. A forward pre-hook on the
    transformer (removed on exit) tells the processors which rows of a call are negative and which
    step is running:

    * ``guidance_batch=n`` (SD3 classifier-free guidance over ``n`` images): a call whose batch
      is ``2n`` is ``[negative, positive]``; any other call (SD3.5 skip-layer guidance) is
      positive;
    * ``negative_prompt_embeds`` (FLUX true CFG, a separate forward per half): the call that
      receives this very tensor as ``encoder_hidden_states`` is the negative one.

    The regional flag of ``regional_steps`` follows :meth:`JointRegions.step_callback` when the
    pipeline call has it (``JointBackbone.render`` passes it); otherwise, eager only, the step
    counter advances whenever the timestep changes (a pipeline's timesteps decrease; an increase
    starts a new run), which reads the timestep on the host in each forward.

    ``transformer`` may be compiled (``torch.compile(transformer)`` is unwrapped to the module it
    compiles); the region index is built before the loop on the conditioning's device.
    """
    from rpg.attention.install import unwrap_compiled

    transformer = unwrap_compiled(transformer)
    names = joint_attention_names(transformer)
    if not names:
        raise ValueError(f"{type(transformer).__name__} has no joint attention layers")
    classes = _processor_classes(transformer, names, processor_classes)
    previous = dict(transformer.attn_processors)
    every = regions.options.regional_blocks
    installed: dict[str, Any] = {}
    processors: list[_JointAttention] = []
    for i, (name, cls) in enumerate(zip(names, classes, strict=True)):
        proc = cls(regions, regional_block=i % every == 0)  # type: ignore[call-arg]
        old = previous[name]
        proc._attention_backend = getattr(old, "_attention_backend", None)
        proc._parallel_config = getattr(old, "_parallel_config", None)
        installed[name] = proc
        processors.append(proc)
    state = regions.state

    stepped_by_timestep = regions.options.regional_steps < 1 and regions.steps is not None

    def before(module: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        del module
        context = kwargs.get("encoder_hidden_states")
        if context is None and len(args) > 1:
            context = args[1]
        if negative_prompt_embeds is not None and context is negative_prompt_embeds:
            # identity, not values: compiled code tells it from the inputs' aliasing, no sync
            state.rows = "negative"
        elif (
            guidance_batch is not None
            and isinstance(context, torch.Tensor)
            and context.shape[0] == 2 * guidance_batch
        ):
            state.rows = "negative+positive"
        else:
            state.rows = "positive"
        if stepped_by_timestep and not torch.compiler.is_compiling() and not state.driven:
            t = _timestep(kwargs.get("timestep"))
            if t is not None:
                if state.last_timestep is None or t > state.last_timestep:
                    state.step = 0
                elif t < state.last_timestep:
                    state.step += 1
                state.last_timestep = t
                regions._update_regional()

    state.reset()
    handle = None
    try:
        # where the conditioning was made; else where the weights are (not under offloading)
        regions.prepare(regions.device or _weights_device(transformer))
        transformer.set_attn_processor({k: installed.get(k, v) for k, v in previous.items()})
        handle = transformer.register_forward_pre_hook(before, with_kwargs=True)
        with region_lora_hooks(transformer, regions):  # region LoRAs on their own text rows
            yield processors
    finally:
        if handle is not None:
            handle.remove()
        transformer.set_attn_processor(dict(previous))
        regions._indices.clear()
        regions._text_cells.clear()
