"""ControlNet for SD 1.x/2.x and SDXL: the stock ControlNet pipelines with regional attention.

One or several ControlNets (``controlnet=`` when loading) each take a control image (canny
edges, pose, depth... passed as images) and a conditioning scale at generation time, under the
stock pipelines' own argument names: ``image=`` and ``controlnet_conditioning_scale=``.

**ControlNet's own cross-attention gets the regional processor too**, the same one as the UNet.
The stock pipelines hand the ControlNet the same ``prompt_embeds`` as the UNet, which here are
the packed ``[base | region 0 | region 1 | ...]`` embeddings; left alone, the ControlNet would
attend to all of them at every position, and showing it only the base prompt would still mix
every entity's description into every region. The ControlNet's residuals are added to the
UNet's features at the same positions, so its text conditioning should be what the UNet sees
there: region ``r``'s queries read region ``r``'s prompt (blended with the base prompt by the
same weight). With one full-canvas region this is the stock pipeline exactly.

In guess mode (``guess_mode=True``, or ControlNets with ``global_pool_conditions``) the stock
pipelines run the ControlNet on the conditional half of the batch only, so the ControlNet gets a
processor of its own that treats its batch as all-positive.

Loading ControlNets and the names requests record for them are in
:mod:`rpg.backbones.controlnet_loading`; control images and scales (checked, recorded) in
:mod:`rpg.backbones.control_inputs`. This module is the backbones.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, ExitStack
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from rpg.attention.spec import RegionalConditioning, RegionalLayout
from rpg.backbones.base import (
    LOAD_OPTIONS,
    Backbone,
    PreparedInputs,
    StockCall,
    lora_call_scale,
)
from rpg.backbones.control_inputs import (
    as_list,
    check_control,
    open_control_image,
    resolve_controls,
)
from rpg.backbones.controlnet_loading import (
    ControlNetRef,
    load_controlnet,
    net_name,
    reference_name,
)
from rpg.backbones.loading import ModelInfo
from rpg.backbones.sd import StableDiffusionBackbone
from rpg.backbones.sdxl import StableDiffusionXLBackbone
from rpg.errors import ConfigurationError

if TYPE_CHECKING:
    from typing_extensions import Self

    from rpg.models import GenerationRequest

__all__ = [
    "ControlNetBackboneMixin",
    "ControlNetRef",
    "StableDiffusionControlNetBackbone",
    "StableDiffusionXLControlNetBackbone",
    "controlnet_backbone_for",
    "load_controlnet",
    "open_control_image",
]


class ControlNetBackboneMixin(Backbone):
    """What ControlNet adds to a backbone: loading ControlNets, checking images, attention.

    Combined with the SD or SDXL backbone (``class X(ControlNetBackboneMixin, SDBackbone)``);
    everything else — encoding, pooled embeddings, decoding — is the base backbone's.
    """

    #: Registry name of the plain backbone this one extends.
    base_backbone: ClassVar[str]

    def __init__(self, pipe: Any, *, info: ModelInfo | None = None) -> None:
        super().__init__(pipe, info=info)
        controlnet = getattr(pipe, "controlnet", None)
        if controlnet is None:
            raise ConfigurationError(f"{type(pipe).__name__} has no ControlNet")
        #: What each ControlNet was loaded from, recorded in requests (``controls``) so that
        #: ``rpg generate --from`` can load them again; :meth:`load` keeps the names as given.
        self.controlnet_names: list[str] = [net_name(net) for net in self.controlnets]
        expected = pipe.unet.config.cross_attention_dim
        for i, net in enumerate(self.controlnets):
            got = net.config.cross_attention_dim
            if got != expected:
                raise ConfigurationError(
                    f"ControlNet {i + 1} has cross-attention width {got} but the model's UNet has "
                    f"{expected}: it was trained for another architecture (use SD 1.x ControlNets "
                    "with SD 1.x, SD 2.x with SD 2.x, SDXL with SDXL)"
                )

    @classmethod
    def load_options(cls) -> tuple[str, ...]:
        return (*LOAD_OPTIONS, "controlnet", "controlnet_config")

    @classmethod
    def load(
        cls,
        source: ModelInfo | str | os.PathLike[str],
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        **options: Any,
    ) -> Self:
        """Load as :meth:`Backbone.load` does, remembering the ``controlnet=`` names as given.

        The names (``"tiny-controlnet"``, ``"./canny"``) rather than the resolved folders are
        what a saved request records, as ``model`` is recorded as given.
        """
        refs = options.get("controlnet")
        backbone = super().load(source, device=device, dtype=dtype, **options)
        if refs is not None and as_list(refs):
            backbone.controlnet_names = [reference_name(ref) for ref in as_list(refs)]
        return backbone

    @classmethod
    def load_pipeline(cls, info: ModelInfo, *, dtype: torch.dtype, **options: Any) -> Any:
        refs = options.pop("controlnet", None)
        controlnet_config = options.pop("controlnet_config", None)
        if refs is None or (isinstance(refs, (list, tuple)) and not refs):
            if info.pipeline_class_name in cls.pipeline_class_names:
                return super().load_pipeline(info, dtype=dtype, **options)
            raise ConfigurationError(
                f"backbone {cls.name!r} needs ControlNet models: pass controlnet=MODEL (CLI: "
                "--controlnet MODEL --control-image FILE), one or a list"
            )
        nets = [
            load_controlnet(
                ref,
                dtype=dtype,
                config=controlnet_config,
                allow_download=bool(info.options.get("allow_download", False)),
                cache_dir=info.options.get("cache_dir"),
            )
            for ref in as_list(refs)
        ]
        controlnet = nets[0] if len(nets) == 1 else nets
        return super().load_pipeline(info, dtype=dtype, controlnet=controlnet, **options)

    @property
    def controlnets(self) -> list[Any]:
        """The ControlNet models, in the order their images are given."""
        controlnet = self.pipe.controlnet
        nets = getattr(controlnet, "nets", None)
        return list(nets) if nets is not None else [controlnet]

    def attention_models(self) -> list[Any]:
        """The UNet and every ControlNet (ControlNets get their own processor in guess mode)."""
        return [*super().attention_models(), *self.controlnets]

    def check_control(
        self, image: Any, scale: Any, width: int, height: int
    ) -> tuple[list[Any], list[float]]:
        """Validate control images and scales against this model's ControlNets and the image
        size (:func:`rpg.backbones.control_inputs.check_control`)."""
        return check_control(image, scale, len(self.controlnets), width, height)

    def prepare_inputs(
        self,
        request: GenerationRequest,
        pipeline_kwargs: Mapping[str, Any],
        *,
        width: int,
        height: int,
    ) -> PreparedInputs:
        """Resolve control images and scales for this model's ControlNets and record them in the
        request's ``controls`` (:func:`rpg.backbones.control_inputs.resolve_controls`)."""
        return resolve_controls(
            request, pipeline_kwargs, self.controlnet_names, width=width, height=height
        )

    def inpaint_backbone_class(self) -> type[Backbone]:
        """The plain family (SD or SDXL): edits repaint without the source's ControlNet."""
        for cls in type(self).__mro__[1:]:
            if (
                issubclass(cls, Backbone)
                and not issubclass(cls, ControlNetBackboneMixin)
                and cls is not Backbone
            ):
                return cls
        raise ConfigurationError(f"{self.name!r} extends no plain backbone to edit with")

    def guess_mode(self, pipeline_kwargs: Mapping[str, Any]) -> bool:
        """Whether a call with ``pipeline_kwargs`` runs the ControlNets in guess mode.

        As the stock pipelines decide: ``guess_mode=True``, or any ControlNet whose config sets
        ``global_pool_conditions``.
        """
        return bool(pipeline_kwargs.get("guess_mode", False)) or any(
            bool(getattr(net.config, "global_pool_conditions", False)) for net in self.controlnets
        )

    def attention_context(
        self,
        conditioning: RegionalConditioning,
        layout: RegionalLayout,
        *,
        guidance: bool,
        cache_kv: bool,
        pipeline_kwargs: Mapping[str, Any],
        call: StockCall | None = None,
    ) -> AbstractContextManager[object]:
        """One processor for the UNet and the ControlNets, or two in guess mode.

        With guidance in guess mode the pipeline feeds the ControlNets only the conditional
        half of the batch, so they get a processor of their own that treats their batch as
        all-positive.
        """
        from rpg.attention.install import regional

        if not (guidance and self.guess_mode(pipeline_kwargs)):
            return super().attention_context(
                conditioning,
                layout,
                guidance=guidance,
                cache_kv=cache_kv,
                pipeline_kwargs=pipeline_kwargs,
                call=call,
            )
        stack = ExitStack()
        try:
            scale = lora_call_scale(pipeline_kwargs)
            isolation = call.isolation() if call is not None else {}
            unet_processor = stack.enter_context(
                regional(
                    [self.pipe.unet],
                    conditioning,
                    layout,
                    guidance=True,
                    cache_kv=cache_kv,
                    lora_scale=scale,
                    **isolation,
                )
            )
            controlnet_processor = stack.enter_context(
                regional(
                    self.controlnets,
                    conditioning,
                    layout,
                    guidance=False,
                    cache_kv=cache_kv,
                    lora_scale=scale,
                    **isolation,
                )
            )
            if call is not None:
                call.switch_regional_steps([unet_processor, controlnet_processor])
        except BaseException:
            stack.close()
            raise
        return stack

    def call_inputs(
        self, pipeline_kwargs: Mapping[str, Any], *, width: int, height: int
    ) -> dict[str, Any]:
        """Check the control images and scales and pass them as the stock pipeline takes them.

        One ControlNet takes one image and a float scale; several take lists.
        """
        kwargs = dict(pipeline_kwargs)
        images, scales = self.check_control(
            kwargs.pop("image", None),
            kwargs.pop("controlnet_conditioning_scale", 1.0),
            width,
            height,
        )
        single = len(self.controlnets) == 1
        # The img2img ControlNet pipelines take the picture to render over as ``image`` and
        # the control image as ``control_image``.
        kwargs["control_image" if self.img2img else "image"] = images[0] if single else images
        kwargs["controlnet_conditioning_scale"] = scales[0] if single else scales
        return kwargs

    def adopt(self, source: Backbone) -> None:
        """The ControlNet names as loaded (what requests record), not the modules' own."""
        names = getattr(source, "controlnet_names", None)
        if names:
            self.controlnet_names = list(names)


class StableDiffusionControlNetBackbone(ControlNetBackboneMixin, StableDiffusionBackbone):
    """SD 1.x / 2.x with one or several ControlNets (``StableDiffusionControlNetPipeline``)."""

    name: ClassVar[str] = "sd-controlnet"
    description: ClassVar[str] = (
        "Stable Diffusion 1.x / 2.x with ControlNet (StableDiffusionControlNetPipeline)"
    )
    pipeline_class_names: ClassVar[tuple[str, ...]] = ("StableDiffusionControlNetPipeline",)
    checkpoint_types: ClassVar[tuple[str, ...]] = ()
    base_backbone: ClassVar[str] = StableDiffusionBackbone.name
    img2img_pipeline_name: ClassVar[str] = "StableDiffusionControlNetImg2ImgPipeline"

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import StableDiffusionControlNetPipeline

        return StableDiffusionControlNetPipeline


class StableDiffusionXLControlNetBackbone(ControlNetBackboneMixin, StableDiffusionXLBackbone):
    """SDXL with one or several ControlNets (``StableDiffusionXLControlNetPipeline``)."""

    name: ClassVar[str] = "sdxl-controlnet"
    description: ClassVar[str] = (
        "Stable Diffusion XL with ControlNet (StableDiffusionXLControlNetPipeline)"
    )
    pipeline_class_names: ClassVar[tuple[str, ...]] = ("StableDiffusionXLControlNetPipeline",)
    checkpoint_types: ClassVar[tuple[str, ...]] = ()
    base_backbone: ClassVar[str] = StableDiffusionXLBackbone.name
    img2img_pipeline_name: ClassVar[str] = "StableDiffusionXLControlNetImg2ImgPipeline"

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import StableDiffusionXLControlNetPipeline

        return StableDiffusionXLControlNetPipeline


def controlnet_backbone_for(backbone: type[Backbone]) -> type[Backbone]:
    """The registered ControlNet backbone that extends ``backbone`` (itself if it is one).

    ``RPG.from_pretrained(model, controlnet=...)`` detects the model's architecture first
    (say ``sdxl``) and then needs its ControlNet flavour; plugins can add their own by
    registering a :class:`ControlNetBackboneMixin` subclass with ``base_backbone`` set.
    """
    from rpg.plugins import backbone_registry

    if issubclass(backbone, ControlNetBackboneMixin):
        return backbone
    for entry in backbone_registry():
        target = entry.target
        if (
            isinstance(target, type)
            and issubclass(target, ControlNetBackboneMixin)
            and target.base_backbone == backbone.name
        ):
            return target
    supported = [
        e.target.base_backbone
        for e in backbone_registry()
        if isinstance(e.target, type) and issubclass(e.target, ControlNetBackboneMixin)
    ]
    raise ConfigurationError(
        f"backbone {backbone.name!r} has no ControlNet support; ControlNet works with: "
        f"{', '.join(sorted(supported)) or 'none'}"
    )
