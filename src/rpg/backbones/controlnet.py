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
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from rpg.attention.spec import RegionalConditioning, RegionalLayout
from rpg.backbones.base import LOAD_OPTIONS, Backbone, PreparedInputs, StockCall
from rpg.backbones.loading import SINGLE_FILE_SUFFIXES, ModelInfo, hf_offline
from rpg.backbones.sd import StableDiffusionBackbone
from rpg.backbones.sdxl import StableDiffusionXLBackbone
from rpg.backbones.tiny import tiny_model
from rpg.errors import ConfigurationError, ModelNotFoundError
from rpg.models import MAX_CONTROL_SCALE, ControlInput

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

#: What ``controlnet=`` accepts: a reserved tiny name, a folder, a file, a cached hub id, a model.
ControlNetRef = Any

# Aspect ratios of a control image and the render may differ by this much (rounding to 8 px).
_ASPECT_TOLERANCE = 0.02


# ----------------------------------------------------------------------------- loading


def load_controlnet(
    reference: ControlNetRef,
    *,
    dtype: torch.dtype | None = None,
    config: str | os.PathLike[str] | None = None,
    allow_download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Load one ``ControlNetModel`` from a reference, offline unless ``allow_download``.

    ``reference``: a ``ControlNetModel`` (returned as is), ``"tiny-controlnet"`` /
    ``"tiny-sdxl-controlnet"`` (random weights, written once into rpg's cache), a diffusers
    folder with ``config.json``, a single ``.safetensors``/``.ckpt`` file (offline it needs
    ``config=`` a diffusers ControlNet folder of the same architecture), or a hub id in the local
    Hugging Face cache.
    """
    from diffusers import ControlNetModel

    if isinstance(reference, ControlNetModel):
        model: Any = reference
        return model if dtype is None else model.to(dtype=dtype)
    if not isinstance(reference, (str, os.PathLike)):
        raise ConfigurationError(
            f"controlnet must be a name, folder, file or ControlNetModel, not "
            f"{type(reference).__name__}"
        )
    ref = os.fspath(reference).strip()
    local_only = hf_offline() or not allow_download
    common: dict[str, Any] = {"local_files_only": local_only}
    if dtype is not None:
        common["torch_dtype"] = dtype
    if cache_dir is not None:
        common["cache_dir"] = os.fspath(cache_dir)
    tiny = tiny_model(ref, "controlnet")
    path = tiny.path() if tiny is not None else Path(ref).expanduser()
    how = (
        "pass a diffusers ControlNet folder (with config.json), a .safetensors file (with "
        "config=FOLDER offline), a hub id already in the Hugging Face cache, or "
        "'tiny-controlnet' / 'tiny-sdxl-controlnet' (random weights)"
    )
    try:
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise ModelNotFoundError(f"controlnet {ref!r}: folder has no config.json; {how}")
            return ControlNetModel.from_pretrained(str(path), **common)
        if path.is_file():
            if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise ModelNotFoundError(f"controlnet {ref!r} is not a checkpoint file; {how}")
            if config is not None:
                common["config"] = os.fspath(config)
            return ControlNetModel.from_single_file(str(path), **common)
        if "/" in ref and not path.suffix and not ref.startswith((".", "/", "~")):
            return ControlNetModel.from_pretrained(ref, **common)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ModelNotFoundError):
            raise
        raise ModelNotFoundError(f"cannot load controlnet {ref!r}: {exc}; {how}") from exc
    raise ModelNotFoundError(f"controlnet {ref!r}: no such file or folder; {how}")


# ----------------------------------------------------------------------------- control images


def open_control_image(item: Any) -> Any:
    """A control image given as a path, opened as RGB; anything else is returned unchanged."""
    if isinstance(item, (str, os.PathLike)):
        from PIL import Image as PILImage

        path = Path(item)
        try:
            with PILImage.open(path) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise ConfigurationError(f"control image not found: {path}") from None
        except OSError as exc:
            raise ConfigurationError(f"cannot read control image {path}: {exc}") from None
    return item


def _image_size(item: Any) -> tuple[int, int]:
    """``(width, height)`` of a PIL image, an ``[H, W, C]`` array or a ``[.., C, H, W]`` tensor."""
    if isinstance(item, torch.Tensor):
        return int(item.shape[-1]), int(item.shape[-2])
    if isinstance(item, np.ndarray):
        if item.ndim == 4:
            item = item[0]
        return int(item.shape[1]), int(item.shape[0])
    size = getattr(item, "size", None)
    if isinstance(size, tuple) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise ConfigurationError(
        f"a control image must be a PIL image, a numpy array, a torch tensor or a file path, "
        f"not {type(item).__name__}"
    )


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _net_name(net: Any) -> str:
    """Where a loaded ControlNet came from (diffusers' ``_name_or_path``), for the record."""
    name = str(getattr(getattr(net, "config", None), "_name_or_path", "") or "").strip()
    return name or f"unnamed {type(net).__name__}"


def _ref_name(ref: ControlNetRef) -> str:
    """A ``controlnet=`` reference as it will be recorded: names and paths as given."""
    if isinstance(ref, (str, os.PathLike)):
        return os.fspath(ref).strip()
    return _net_name(ref)


def _same_name(name: str) -> str:
    """A ControlNet name normalised for comparison (``./a/b`` and ``a/b`` are the same)."""
    expanded = os.path.expanduser(name)
    return os.path.realpath(expanded) if os.path.exists(expanded) else os.path.normpath(expanded)


def _recorded_image(index: int, control: ControlInput) -> str:
    """The path of a recorded control image, or a :class:`ConfigurationError` saying what to do."""
    what = f"control image {index + 1} (for ControlNet {control.controlnet!r})"
    how = (
        "pass the control image again (image=..., CLI: --control-image FILE); a PNG saved by rpg "
        "embeds its control images, so 'rpg generate --from IMAGE.png' needs no file"
    )
    if control.image is None:
        raise ConfigurationError(f"{what} has no recorded path; {how}")
    if not os.path.isfile(os.path.expanduser(control.image)):
        raise ConfigurationError(f"{what} not found: {control.image}; {how}")
    return os.path.expanduser(control.image)


# ----------------------------------------------------------------------------- backbones


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
        self.controlnet_names: list[str] = [_net_name(net) for net in self.controlnets]
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
        if refs is not None and _as_list(refs):
            backbone.controlnet_names = [_ref_name(ref) for ref in _as_list(refs)]
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
            for ref in _as_list(refs)
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
        """Validate control images and scales against the ControlNets and the image size.

        One image per ControlNet, each with the render's aspect ratio (the pipeline resizes it
        to the render size; a different shape would be distorted); one scale for all or one per
        ControlNet, each finite and non-negative. Paths are opened as RGB images.
        """
        n = len(self.controlnets)
        if image is None:
            raise ConfigurationError(
                f"this model has {n} ControlNet{'s' if n > 1 else ''}; pass one control image "
                "per ControlNet (image=..., CLI: --control-image FILE)"
            )
        images = _as_list(image)
        if len(images) != n:
            raise ConfigurationError(
                f"got {len(images)} control image{'s' if len(images) != 1 else ''} for {n} "
                f"ControlNet{'s' if n != 1 else ''}; give exactly one image per ControlNet, in "
                "the order the ControlNets were given"
            )
        images = [open_control_image(item) for item in images]
        for i, item in enumerate(images):
            w, h = _image_size(item)
            if w <= 0 or h <= 0:
                raise ConfigurationError(f"control image {i + 1} is empty ({w}x{h})")
            if abs(math.log((w / h) / (width / height))) > _ASPECT_TOLERANCE:
                raise ConfigurationError(
                    f"control image {i + 1} is {w}x{h} but the image to generate is "
                    f"{width}x{height}: the aspect ratios differ, so the control would be "
                    f"distorted; resize or crop the control image, or generate at its size "
                    f"(--size {w // 8 * 8}x{h // 8 * 8})"
                )
        scales = [float(s) for s in _as_list(scale)]
        if len(scales) == 1:
            scales = scales * n
        if len(scales) != n:
            raise ConfigurationError(
                f"got {len(scales)} control scales for {n} ControlNets; give one scale for all "
                "or one per ControlNet"
            )
        for s in scales:
            if not math.isfinite(s) or s < 0:
                raise ConfigurationError(f"control scale must be a non-negative number, got {s}")
            if s > MAX_CONTROL_SCALE:
                raise ConfigurationError(
                    f"control scale must be at most {MAX_CONTROL_SCALE:g}, got {s:g}"
                )
        return images, scales

    def prepare_inputs(
        self,
        request: GenerationRequest,
        pipeline_kwargs: Mapping[str, Any],
        *,
        width: int,
        height: int,
    ) -> PreparedInputs:
        """Resolve control images and scales and record them in the request's ``controls``.

        Images come from ``image=`` (one per ControlNet), else from the paths recorded in
        ``request.controls``; scales from ``controlnet_conditioning_scale=``, else from the
        request, else 1. Returns the request with ``controls`` filled in (ControlNet names, image
        paths, scales, pixel hashes), the pipeline kwargs with the opened images and scales, and
        the images to embed (PIL images; ``None`` for arrays and tensors).
        """
        from PIL import Image as PILImage

        from rpg.metadata import image_sha256

        names = self.controlnet_names
        recorded = list(request.controls)
        n = len(names)
        if recorded and len(recorded) != n:
            raise ConfigurationError(
                f"the request has {len(recorded)} ControlNet inputs but this RPG has {n} "
                f"ControlNet{'s' if n != 1 else ''} ({', '.join(names)}); load the ControlNets "
                "the request names, or give one control image per loaded ControlNet"
            )
        if recorded and [_same_name(c.controlnet) for c in recorded] != [
            _same_name(x) for x in names
        ]:
            warnings.warn(
                f"the request names ControlNet(s) {[c.controlnet for c in recorded]} but this RPG "
                f"has {names}; rendering with the loaded ones and recording those",
                stacklevel=3,
            )
        kwargs = dict(pipeline_kwargs)
        given = kwargs.pop("image", None)
        scale = kwargs.pop("controlnet_conditioning_scale", None)
        from_request = given is None and bool(recorded)
        if from_request:
            given = [_recorded_image(i, control) for i, control in enumerate(recorded)]
        if scale is None:
            scale = [c.scale for c in recorded] if recorded else 1.0
        images, scales = self.check_control(given, scale, width, height)
        sources = given if isinstance(given, (list, tuple)) else [given]

        controls: list[ControlInput] = []
        embeddable: list[Any] = []
        for i, (image, source, value) in enumerate(zip(images, sources, scales, strict=True)):
            pil = image if isinstance(image, PILImage.Image) else None
            digest = image_sha256(pil) if pil is not None else None
            before = recorded[i] if recorded else None
            if from_request and before is not None:
                path: str | None = before.image  # as recorded, not as expanded to open it
            elif isinstance(source, (str, os.PathLike)):
                path = os.fspath(source)
            elif before is not None and digest is not None and digest == before.sha256:
                path = before.image  # the same pixels as recorded: keep the recorded path
            else:
                path = None
            if from_request and before is not None and before.sha256 not in (None, digest):
                warnings.warn(
                    f"control image {i + 1} ({path}) has changed since the request was recorded "
                    "(its sha256 differs), so the render will differ",
                    stacklevel=3,
                )
            controls.append(
                ControlInput(controlnet=names[i], image=path, scale=value, sha256=digest)
            )
            embeddable.append(pil)
        kwargs["image"] = images
        kwargs["controlnet_conditioning_scale"] = scales
        return PreparedInputs(
            request.model_copy(update={"controls": tuple(controls)}), kwargs, embeddable
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
            stack.enter_context(
                regional([self.pipe.unet], conditioning, layout, guidance=True, cache_kv=cache_kv)
            )
            stack.enter_context(
                regional(self.controlnets, conditioning, layout, guidance=False, cache_kv=cache_kv)
            )
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
