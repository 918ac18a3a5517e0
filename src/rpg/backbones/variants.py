"""A backbone's sibling pipelines: the family's stock inpainting and img2img pipelines.

``rpg edit`` repaints with the family's inpainting pipeline, and an init image or the hires fix
renders with its img2img pipeline. Both are built from the loaded pipeline's own modules (no
weights are copied) and driven by a backbone that encodes, lays out and attends exactly as the
original one, so every render goes through the same route. A family without one is refused
here, before any planning or encoding.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, cast

from rpg.backbones.loading import ModelInfo
from rpg.errors import ConfigurationError

__all__ = ["PipelineVariants"]

#: The backbone class this is mixed into (``Backbone``; a type variable so that this module
#: needs no import of the base class, which imports it).
BackboneT = TypeVar("BackboneT", bound="PipelineVariants[Any]")


class PipelineVariants(Generic[BackboneT]):
    """The part of :class:`~rpg.backbones.base.Backbone` that builds the inpainting and img2img
    backbones of the same model (a mixin: ``Backbone.__init__`` sets the state it reads)."""

    name: ClassVar[str]
    inpaint_pipeline_name: ClassVar[str]
    img2img_pipeline_name: ClassVar[str]
    pipe: Any
    info: ModelInfo | None
    inpainting: bool
    img2img: bool
    keeps_pipeline_scheduler: bool
    cache_kv: bool

    if TYPE_CHECKING:

        def __init__(self, pipe: Any, *, info: ModelInfo | None = None) -> None: ...

    def inpaint_pipeline_class(self) -> type | None:
        """The stock inpainting pipeline class for this model (``None``: the family or this
        diffusers has none)."""
        from rpg.backbones.inpaint import diffusers_class

        return diffusers_class(self.inpaint_pipeline_name)

    def inpaint_refusal(self) -> str | None:
        """Why this model cannot be edited although diffusers has its inpainting pipeline
        (``None``: it can)."""
        return None

    def edit_refusal(
        self, width: int, height: int, pipeline_kwargs: Mapping[str, Any]
    ) -> str | None:
        """Why this family cannot repaint a ``width`` × ``height`` image with these pipeline
        arguments (``None``: it can). ``edit`` asks before any planner call or encoding."""
        return None

    def inpaint_backbone_class(self) -> type[BackboneT]:
        """The backbone class that drives the inpainting pipeline (the family's own)."""
        return cast("type[BackboneT]", type(self))

    def inpaint_backbone(self) -> BackboneT:
        """This model's stock inpainting pipeline, sharing its modules, as a backbone.

        It encodes, lays out and attends exactly as this one does, so ``edit`` renders through
        the same route as ``generate``. A family without an inpainting pipeline is a
        :class:`~rpg.errors.ConfigurationError` here, before any planning or encoding.
        """

        from rpg.backbones.inpaint import build_inpaint_pipeline

        cls = self.inpaint_pipeline_class()
        why = self.inpaint_refusal()
        if cls is None or why is not None:
            why = why or _missing(
                self.inpaint_pipeline_name, "the family has no stock inpainting pipeline"
            )
            raise ConfigurationError(
                f"rpg edit cannot repaint with {self.name!r}: {why}; edit with an SD, SDXL, "
                "FLUX.1, SD3 or FLUX.2 [klein] model, or regenerate with a changed plan instead"
            )
        painter = self.inpaint_backbone_class()(
            build_inpaint_pipeline(self.pipe, cls), info=self.info
        )
        painter.inpainting = True
        painter.cache_kv = self.cache_kv
        painter.keeps_pipeline_scheduler = self.keeps_pipeline_scheduler
        return painter

    # ----------------------------------------------------------------- img2img

    def img2img_pipeline_class(self) -> type | None:
        """The stock img2img pipeline class for this model (``None``: the family or this
        diffusers has none)."""
        from rpg.backbones.inpaint import diffusers_class

        return diffusers_class(self.img2img_pipeline_name)

    def img2img_refusal(self) -> str | None:
        """Why this model cannot render over an init image although diffusers has its img2img
        pipeline (``None``: it can)."""
        return None

    def img2img_backbone(self) -> BackboneT:
        """This model's stock img2img pipeline, sharing its modules, as a backbone of this class.

        It encodes, lays out and attends exactly as this one does, so an init image or a hires
        pass renders through the same route as ``generate``. Built on every call (no weights are
        copied; a few objects are made), so it always shares the pipeline's current modules and
        scheduler. A family without one is a :class:`~rpg.errors.ConfigurationError` here,
        before any planning or encoding.
        """

        from rpg.backbones.inpaint import build_inpaint_pipeline

        if self.img2img:
            return cast(BackboneT, self)
        cls = self.img2img_pipeline_class()
        why = self.img2img_refusal()
        if cls is None or why is not None:
            why = why or _missing(
                self.img2img_pipeline_name, "diffusers has no img2img pipeline for this family"
            )
            raise ConfigurationError(
                f"img2img and the hires fix cannot render with {self.name!r}: {why}; leave out "
                "the init image and --hires, or use an SD, SDXL, ControlNet, FLUX.1 or SD3 model"
            )
        painter = cast("type[BackboneT]", type(self))(
            build_inpaint_pipeline(self.pipe, cls), info=self.info
        )
        painter.img2img = True
        painter.cache_kv = self.cache_kv
        painter.keeps_pipeline_scheduler = self.keeps_pipeline_scheduler
        painter.adopt(cast(BackboneT, self))
        return painter

    def adopt(self, source: BackboneT) -> None:
        """Take over per-model state from ``source`` when this backbone wraps a pipeline built
        from its modules (the img2img one); ControlNet backbones keep their recorded names."""
        del source


def _missing(wanted: str | None, otherwise: str) -> str:
    """Why a family's stock pipeline is missing: the installed diffusers lacks the class it
    names, else the family names none."""
    import diffusers

    return f"diffusers {diffusers.__version__} has no {wanted}" if wanted else otherwise
