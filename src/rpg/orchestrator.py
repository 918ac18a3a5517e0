"""``rpg.RPG``: plan → encode → attend → denoise → decode, with one loaded model.

One object holds a backbone (a stock diffusers pipeline) and a planner. ``generate`` takes a
:class:`~rpg.models.GenerationRequest` and returns a :class:`~rpg.models.GenerationResult` whose
``request`` is complete (plan, seed, size, model and ControlNet inputs filled in), so saving it
next to the image (with ``result.control_images``, see :func:`rpg.metadata.save_png`) is enough
to render the same pixels again.

Determinism: image ``i`` of a request is drawn from a CPU ``torch.Generator`` seeded with
``seed + i`` (CPU so that the same seed gives the same starting noise on every device). Image
``i`` of a batch is therefore the single image of the same request with seed ``seed + i``;
:func:`rpg.metadata.image_request` writes exactly that request into each saved file.
"""

from __future__ import annotations

import os
import random
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from rpg.backbones.base import Backbone
from rpg.backbones.loading import ModelInfo, resolve_model
from rpg.errors import ConfigurationError, RegistryError
from rpg.models import ControlInput, GenerationRequest, GenerationResult, PlanResult
from rpg.planners.base import Planner

if TYPE_CHECKING:
    from PIL.Image import Image

    from rpg.edit import EditResult
    from rpg.refine import RefineResult

__all__ = ["RPG", "select_backbone"]

_PLAN_CACHE_SIZE = 64


def select_backbone(
    info: ModelInfo, backbone: str | type[Backbone] | None = None
) -> type[Backbone]:
    """The backbone class for ``info``: the one named, or the first registered one that detects it.

    Third-party backbones take part through the ``rpg_register_backbones`` hook.
    """
    from rpg.plugins import backbone_registry

    registry = backbone_registry()
    if isinstance(backbone, type):
        return backbone
    if backbone is not None:
        cls: type[Backbone] = registry.get(backbone).target
        return cls
    for entry in registry:
        if entry.target.detect(info):
            found: type[Backbone] = entry.target
            return found
    names = ", ".join(f"{e.name} ({e.description})" for e in registry) or "none"
    raise RegistryError(
        f"no registered backbone can load {info.describe()}; supported: {names}. Pass "
        "backbone=NAME to force one, or install a plugin for this architecture"
    )


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


class RPG:
    """Regional prompting with a planner and a stock diffusers pipeline.

    Build it with :meth:`from_pretrained` (a model name, folder or file) or :meth:`from_pipeline`
    (a pipeline object you already have); ``planner`` is a registered planner name (see
    ``rpg plugins``) or any :class:`~rpg.planners.base.Planner`.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        planner: str | Planner = "rules",
        planner_options: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> None:
        self.backbone = backbone
        self.model = model
        self._planner_options = dict(planner_options or {})
        self._planners: dict[str, Planner] = {}
        if isinstance(planner, str):
            self._planner_name = planner
        else:
            self._planner_name = planner.name
            self._planners[planner.name] = planner
        self._plans: OrderedDict[tuple[str, str], PlanResult] = OrderedDict()

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str],
        *,
        planner: str | Planner = "rules",
        planner_options: dict[str, Any] | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        backbone: str | type[Backbone] | None = None,
        **options: Any,
    ) -> RPG:
        """Load ``model`` and pick its backbone from the registry by detection (or by name).

        ``model``: ``"tiny-sd"``, a diffusers folder, a ``.safetensors``/``.ckpt`` file, or a hub
        id already in the local Hugging Face cache. ``options`` go to the backbone's ``load``:
        ``config`` (diffusers folder for a single file), ``allow_download``, ``cache_dir``;
        ``controlnet`` (one or a list of ControlNet names, folders or files: the detected
        backbone's ControlNet flavour is used, e.g. ``sdxl`` → ``sdxl-controlnet``; control
        images then go to ``generate(..., image=...)`` or come from ``request.controls``, and
        the names as given here are what requests record).
        ``device``/``dtype``: ``"auto"`` picks CUDA > MPS > CPU and float16 on GPUs, float32 on
        the CPU.
        """
        resolve_opts = {
            k: options.pop(k) for k in ("config", "allow_download", "cache_dir") if k in options
        }
        info = resolve_model(model, **resolve_opts)
        backbone_cls = select_backbone(info, backbone)
        if options.get("controlnet") is not None:
            from rpg.backbones.controlnet import controlnet_backbone_for

            backbone_cls = controlnet_backbone_for(backbone_cls)
        loaded = backbone_cls.load(info, device=device, dtype=dtype, **options)
        return cls(loaded, planner=planner, planner_options=planner_options, model=os.fspath(model))

    @classmethod
    def from_pipeline(
        cls,
        pipe: Any,
        *,
        planner: str | Planner = "rules",
        planner_options: dict[str, Any] | None = None,
        backbone: str | type[Backbone] | None = None,
        model: str | None = None,
    ) -> RPG:
        """Wrap an existing diffusers pipeline (its device, dtype, LoRAs and offloading are kept).

        The backbone is the registered one that drives ``type(pipe)`` unless named.
        """
        from rpg.plugins import backbone_registry

        if backbone is None:
            matches = [e.target for e in backbone_registry() if e.target.accepts_pipeline(pipe)]
            if not matches:
                names = ", ".join(backbone_registry().names()) or "none"
                raise RegistryError(
                    f"no registered backbone drives {type(pipe).__name__}; backbones: {names}"
                )
            backbone_cls: type[Backbone] = matches[0]
        else:
            backbone_cls = select_backbone(ModelInfo("pipeline", "folder"), backbone)
        if model is None:
            # diffusers keeps what from_pretrained was given, which may be a Path
            source = getattr(getattr(pipe, "config", None), "_name_or_path", None)
            model = os.fspath(source) if source else None
        return cls(
            backbone_cls.from_pipeline(pipe),
            planner=planner,
            planner_options=planner_options,
            model=model,
        )

    # ----------------------------------------------------------------- planning

    @property
    def pipe(self) -> Any:
        """The stock diffusers pipeline underneath."""
        return self.backbone.pipe

    @property
    def controlnet_names(self) -> list[str]:
        """What this RPG's ControlNets were loaded from, in order (empty without ControlNet).

        These are the names a generated request records in ``controls``.
        """
        return list(getattr(self.backbone, "controlnet_names", None) or [])

    @property
    def planner(self) -> Planner:
        """The default planner (created on first use)."""
        return self.get_planner()

    def get_planner(self, name: str | None = None) -> Planner:
        """The planner registered as ``name`` (default: this RPG's own), created on first use.

        Each planner is created once and reused; the ``planner_options`` given to this RPG
        apply to its default planner only.
        """
        name = self._planner_name if name is None else name
        if name not in self._planners:
            from rpg import create_planner

            options = self._planner_options if name == self._planner_name else {}
            self._planners[name] = create_planner(name, **options)
        return self._planners[name]

    def plan(self, prompt: str, *, planner: str | None = None) -> PlanResult:
        """Ask the planner (default or named) for a plan; repeated prompts are answered from memory.

        The memory holds the last 64 plans per ``(planner, prompt)``; LLM planners also keep a
        disk cache of their own.
        """
        if not prompt.strip():
            raise ConfigurationError("the prompt is empty; describe the image to generate")
        name = planner or self._planner_name
        key = (name, prompt)
        cached = self._plans.get(key)
        if cached is not None:
            self._plans.move_to_end(key)
            return cached
        started = time.perf_counter()
        result = self.get_planner(name).plan(prompt)
        if not result.seconds:
            result = result.model_copy(update={"seconds": time.perf_counter() - started})
        self._plans[key] = result
        while len(self._plans) > _PLAN_CACHE_SIZE:
            self._plans.popitem(last=False)
        return result

    # ----------------------------------------------------------------- generation

    def generate(
        self,
        request: GenerationRequest | str,
        *,
        output_type: str = "pil",
        callback_on_step_end: Callable[..., Any] | None = None,
        **pipeline_kwargs: Any,
    ) -> GenerationResult:
        """Plan (unless the request has a plan), encode, denoise regionally and decode.

        ``request`` may be a bare prompt. ``output_type`` is ``"pil"`` (default), ``"np"``
        (float arrays in [0, 1]) or ``"pt"``. ``callback_on_step_end`` and ``pipeline_kwargs`` go
        to the stock pipeline call.

        ControlNet: control images come from ``image=`` (one per ControlNet), else from the paths
        in ``request.controls``; scales from ``controlnet_conditioning_scale=``, else from
        ``request.controls``, else 1. The result's request records what was used (ControlNet
        names, image paths, scales, pixel hashes) and ``result.control_images`` holds the
        images. A request with ``controls`` on an RPG without ControlNet is an error.

        Timings (seconds) are recorded for ``plan``, ``encode``, ``denoise`` (the pipeline call,
        returning latents) and ``decode`` (VAE and post-processing), plus ``total``.
        """
        if isinstance(request, str):
            request = GenerationRequest(prompt=request)
        started = time.perf_counter()
        timings: dict[str, float] = {}

        plan_result: PlanResult | None = None
        plan = request.effective_plan()
        if plan is None:
            t = time.perf_counter()
            plan_result = self.plan(request.prompt, planner=request.planner)
            plan = plan_result.plan
            if request.base_ratio is not None:
                plan = plan.with_base_ratio(request.base_ratio)
            timings["plan"] = time.perf_counter() - t
        else:
            timings["plan"] = 0.0

        native_w, native_h = self.backbone.native_size
        width = request.width or native_w
        height = request.height or native_h
        seed = request.seed if request.seed is not None else random.SystemRandom().randrange(2**31)
        request = request.model_copy(
            update={
                "plan": plan,
                "seed": seed,
                "width": width,
                "height": height,
                "model": request.model or self.model,
            }
        )
        # Re-validate: model_copy does not, and the filled-in request is what gets saved.
        request = GenerationRequest.model_validate(request.model_dump())
        request, pipeline_kwargs, control_images = self._controls(
            request, pipeline_kwargs, width, height
        )

        backbone = self.backbone
        backbone.set_scheduler(request.scheduler)
        guidance = backbone.uses_guidance(request.guidance_scale)

        t = time.perf_counter()
        conditioning = backbone.encode(
            plan, request.negative_prompt, guidance=guidance, prompt=request.prompt
        )
        layout = backbone.layout(plan, width, height)
        timings["encode"] = time.perf_counter() - t

        generators = [
            torch.Generator(device="cpu").manual_seed(seed + i) for i in range(request.num_images)
        ]
        generator: torch.Generator | list[torch.Generator] = (
            generators[0] if len(generators) == 1 else generators
        )
        t = time.perf_counter()
        latents = backbone.denoise(
            conditioning,
            layout,
            steps=request.steps,
            guidance_scale=request.guidance_scale,
            generator=generator,
            num_images=request.num_images,
            callback_on_step_end=callback_on_step_end,
            **pipeline_kwargs,
        )
        timings["denoise"] = time.perf_counter() - t

        t = time.perf_counter()
        images = backbone.decode(latents, output_type=output_type, generator=generator)
        timings["decode"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started

        return GenerationResult(
            images=images,
            plan=plan,
            request=request,
            plan_result=plan_result,
            timings=timings,
            control_images=control_images,
        )

    def _controls(
        self, request: GenerationRequest, kwargs: dict[str, Any], width: int, height: int
    ) -> tuple[GenerationRequest, dict[str, Any], list[Any]]:
        """Resolve ControlNet images and scales; record them in the request.

        Returns the request with ``controls`` filled in, the pipeline kwargs with the opened
        images and scales, and the images to embed (PIL images; ``None`` for arrays/tensors).
        """
        from PIL import Image as PILImage

        from rpg.backbones.controlnet import ControlNetBackboneMixin
        from rpg.metadata import image_sha256

        backbone = self.backbone
        recorded = list(request.controls)
        if not isinstance(backbone, ControlNetBackboneMixin):
            if recorded:
                wanted = ", ".join(repr(c.controlnet) for c in recorded)
                count = f"{len(recorded)} ControlNet input{'s' if len(recorded) != 1 else ''}"
                raise ConfigurationError(
                    f"the request has {count} ({wanted}) but this RPG was loaded without "
                    f"ControlNet, so the control would be ignored; load it with "
                    f"RPG.from_pretrained(model, controlnet=[{wanted}]) (CLI: --controlnet MODEL), "
                    "or remove the request's controls to render without control"
                )
            return request, kwargs, []
        names = self.controlnet_names
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
        kwargs = dict(kwargs)
        given = kwargs.pop("image", None)
        scale = kwargs.pop("controlnet_conditioning_scale", None)
        from_request = given is None and bool(recorded)
        if from_request:
            given = [_recorded_image(i, control) for i, control in enumerate(recorded)]
        if scale is None:
            scale = [c.scale for c in recorded] if recorded else 1.0
        images, scales = backbone.check_control(given, scale, width, height)
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
        return request.model_copy(update={"controls": controls}), kwargs, embeddable

    # ----------------------------------------------------------------- closed loop

    def refine(
        self, request: GenerationRequest | str, *, rounds: int = 2, **options: Any
    ) -> RefineResult:
        """Render, let a multimodal planner review and revise; see :func:`rpg.refine.refine`."""
        from rpg.refine import refine

        return refine(self, request, rounds=rounds, **options)

    def edit(
        self, image: Image | str | os.PathLike[str], instruction: str, **options: Any
    ) -> EditResult:
        """Repaint only the regions ``instruction`` concerns; see :func:`rpg.edit.edit`."""
        from rpg.edit import edit

        return edit(self, image, instruction, **options)

    def __repr__(self) -> str:
        return (
            f"RPG(backbone={self.backbone.name!r}, model={self.model!r}, "
            f"planner={self._planner_name!r})"
        )
