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
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from rpg.backbones.base import Backbone
from rpg.call_args import call_request, check_pipeline_kwargs
from rpg.construct import load_backbone, select_backbone, wrap_pipeline
from rpg.errors import ConfigurationError
from rpg.img2img import default_size, open_init_image, wants_img2img
from rpg.models import (
    GenerationRequest,
    GenerationResult,
    HiresFix,
    LoraInput,
    PlanResult,
    RegionPlan,
)
from rpg.planners.base import DEFAULT_PLANNER, Planner
from rpg.progress import NoProgress, RenderProgress
from rpg.route import render_request

if TYPE_CHECKING:
    from PIL.Image import Image

    from rpg.edit import EditResult
    from rpg.refine import RefineResult

__all__ = ["RPG", "select_backbone"]

_PLAN_CACHE_SIZE = 64


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
        planner: str | Planner = DEFAULT_PLANNER,
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
        #: Told about every stage and denoising step of a render (see :mod:`rpg.progress`).
        self.progress: RenderProgress = NoProgress()

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_pretrained(
        cls,
        model: str | os.PathLike[str],
        *,
        planner: str | Planner = DEFAULT_PLANNER,
        planner_options: dict[str, Any] | None = None,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        backbone: str | type[Backbone] | None = None,
        **options: Any,
    ) -> RPG:
        """Load ``model`` and pick its backbone from the registry by detection (or by name).

        ``model``: ``"tiny-sd"``, a diffusers folder, a ``.safetensors``/``.ckpt`` file, or a hub
        id already in the local Hugging Face cache (``org/name@revision`` pins one). What was
        loaded becomes :attr:`model` and every request's ``model``: the tiny name, the absolute
        path, or ``org/name@<commit>`` of the snapshot read. ``options`` go to the backbone's
        ``load``:
        ``config`` (diffusers folder for a single file), ``allow_download``, ``cache_dir``;
        ``controlnet`` (one or a list of ControlNet names, folders or files: the detected
        backbone's ControlNet flavour is used, e.g. ``sdxl`` → ``sdxl-controlnet``; control
        images then go to ``generate(..., image=...)`` or come from ``request.controls``, and
        the names as given here are what requests record).
        ``device``/``dtype``: ``"auto"`` picks CUDA > MPS > CPU and float16 on GPUs, float32 on
        the CPU.
        """
        loaded, canonical = load_backbone(
            model, device=device, dtype=dtype, backbone=backbone, **options
        )
        return cls(loaded, planner=planner, planner_options=planner_options, model=canonical)

    @classmethod
    def from_pipeline(
        cls,
        pipe: Any,
        *,
        planner: str | Planner = DEFAULT_PLANNER,
        planner_options: dict[str, Any] | None = None,
        backbone: str | type[Backbone] | None = None,
        model: str | None = None,
    ) -> RPG:
        """Wrap an existing diffusers pipeline (its device, dtype, LoRAs and offloading are kept).

        The backbone is the registered one that drives ``type(pipe)`` unless named.
        """
        wrapped, model = wrap_pipeline(pipe, backbone=backbone, model=model)
        return cls(wrapped, planner=planner, planner_options=planner_options, model=model)

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

    @property
    def planner_name(self) -> str:
        """The registered name of the default planner (``get_planner(None)``)."""
        return self._planner_name

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
        init_image: Image | str | os.PathLike[str] | None = None,
        **pipeline_kwargs: Any,
    ) -> GenerationResult:
        """Plan (unless the request has a plan), encode, denoise regionally and decode.

        ``request`` may be a bare prompt. ``output_type`` is ``"pil"`` (default), ``"np"``
        (float arrays in [0, 1]), ``"pt"`` or ``"latent"`` (undecoded latents); the stock
        pipeline decodes by its own rules. ``callback_on_step_end`` and ``pipeline_kwargs`` go
        to the stock pipeline call; extra inputs a backbone understands (ControlNet images) go
        through :meth:`~rpg.backbones.base.Backbone.prepare_inputs` first.

        LoRA: ``request.loras`` (whole image) and the plan's ``Region.loras`` (one region's text)
        are loaded with diffusers' ``load_lora_weights`` for this call and removed afterwards;
        the result's request records each file's SHA-256 (see :mod:`rpg.lora`).

        ControlNet: control images come from ``image=`` (one per ControlNet), else from the paths
        in ``request.controls``; scales from ``controlnet_conditioning_scale=``, else from
        ``request.controls``, else 1. The result's request records what was used (ControlNet
        names, image paths, scales, pixel hashes) and ``result.control_images`` holds the
        images. A request with ``controls`` on an RPG without ControlNet is an error.

        img2img: ``init_image`` (a PIL image or a path), else the file ``request.init_image``
        names, is rendered over with the family's stock img2img pipeline at ``request.strength``
        (default 0.75); without a size the render takes the picture's. The result's request
        records its path and pixel hash, and ``result.init_image`` holds it (a saved PNG embeds
        it). ``request.hires``: a second pass at ``hires.scale`` times the size, through
        img2img with the same plan (see :mod:`rpg.hires`).

        Timings (seconds) are recorded for ``plan``, ``encode``, ``denoise`` (the pipeline call up
        to the end of its last step) and ``decode`` (the rest of the call: VAE,
        post-processing, safety checker), plus ``total`` (and ``hires`` for the second pass).
        """
        if isinstance(request, str):
            request = GenerationRequest(prompt=request)
        check_pipeline_kwargs(pipeline_kwargs)
        img2img = wants_img2img(request, init_image)
        if img2img or request.hires is not None:
            self.backbone.img2img_backbone()  # a family without one is refused before planning
        started = time.perf_counter()
        timings: dict[str, float] = {}
        progress = self.progress
        progress.start(request.steps)
        progress.stage("plan")

        plan, plan_result, timings["plan"] = self._planned(request)
        request = self._filled(request, plan, init_image, img2img=img2img)
        hires_size = self._hires_size(request)  # refuses a bad hires pass before rendering
        routed = render_request(
            self.backbone,
            request,
            progress=progress,
            pipeline_kwargs=pipeline_kwargs,
            output_type="pil" if request.hires is not None else output_type,
            callback_on_step_end=callback_on_step_end,
            init_image=init_image,
        )
        timings.update(routed.timings)
        images = routed.rendered.images
        if hires_size is not None:
            from rpg.hires import hires_pass

            t = time.perf_counter()
            images = hires_pass(
                self.backbone,
                routed,
                hires_size,
                pipeline_kwargs=pipeline_kwargs,
                output_type=output_type,
                callback_on_step_end=callback_on_step_end,
                progress=progress,
            )
            timings["hires"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started
        progress.finish()

        return GenerationResult(
            images=images,
            plan=plan,
            request=routed.request,
            plan_result=plan_result,
            timings=timings,
            control_images=routed.control_images,
            nsfw_content_detected=routed.rendered.nsfw_content_detected,
            init_image=routed.init_image,
        )

    def _planned(self, request: GenerationRequest) -> tuple[RegionPlan, PlanResult | None, float]:
        """The request's plan, else the planner's (with the request's base ratio), the
        planner's answer (``None`` when the request had a plan) and the seconds planning took."""
        plan = request.effective_plan()
        if plan is not None:
            return plan, None, 0.0
        t = time.perf_counter()
        plan_result = self.plan(request.prompt, planner=request.planner)
        plan = plan_result.plan
        if request.base_ratio is not None:
            plan = plan.with_base_ratio(request.base_ratio)
        return plan, plan_result, time.perf_counter() - t

    def _filled(
        self,
        request: GenerationRequest,
        plan: RegionPlan,
        init_image: Image | str | os.PathLike[str] | None,
        *,
        img2img: bool,
    ) -> GenerationRequest:
        """The request with everything a re-render needs filled in: plan, seed, size (the
        model's native size, or an init image's), the loaded model; validated again."""
        native_w, native_h = self.backbone.native_size
        if img2img:
            source = init_image if init_image is not None else request.init_image
            if request.width is None and request.height is None:
                picture = open_init_image(source)
                native_w, native_h = default_size(picture, self.backbone.latent_factor)
        seed = request.seed if request.seed is not None else random.SystemRandom().randrange(2**31)
        request = request.model_copy(
            update={
                "plan": plan,
                "seed": seed,
                "width": request.width or native_w,
                "height": request.height or native_h,
                # what is loaded, not what the request asked for (RPG.model: see from_pretrained)
                "model": self.model or request.model,
            }
        )
        # Re-validate: model_copy does not, and the filled-in request is what gets saved.
        return GenerationRequest.model_validate(request.model_dump())

    def _hires_size(self, request: GenerationRequest) -> tuple[int, int] | None:
        """The hires pass's size (``None``: no hires pass), its strength and steps checked."""
        from rpg.hires import hires_size
        from rpg.img2img import check_strength

        hires = request.hires
        if hires is None:
            return None
        assert request.width is not None and request.height is not None
        steps = hires.steps if hires.steps is not None else request.steps
        check_strength(hires.strength, steps, "hires strength")
        return hires_size(request.width, request.height, hires.scale, self.backbone.latent_factor)

    def __call__(
        self,
        prompt: str | None = None,
        *,
        plan: RegionPlan | None = None,
        negative_prompt: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | None = None,
        scheduler: str | None = None,
        base_ratio: float | None = None,
        loras: Sequence[LoraInput | tuple[str, float] | str] | None = None,
        init_image: Image | str | os.PathLike[str] | None = None,
        strength: float | None = None,
        hires: HiresFix | float | None = None,
        output_type: str = "pil",
        callback_on_step_end: Callable[..., Any] | None = None,
        **pipeline_kwargs: Any,
    ) -> GenerationResult:
        """Render like a diffusers pipeline: ``rpg(prompt, num_inference_steps=30).images[0]``.

        The arguments are the stock pipelines' names for the fields of a
        :class:`~rpg.models.GenerationRequest`; this builds that request and calls
        :meth:`generate`. ``None`` keeps the request's default (30 steps, guidance 7, the
        model's native size, a random seed, the default scheduler). ``prompt`` may be omitted
        when ``plan`` is given (its base prompt, else its region prompts, become the prompt).

        Seeds: give ``seed=`` or ``generator=``, not both. A generator must be a CPU
        ``torch.Generator`` that has drawn nothing since ``manual_seed(s)`` (or a list seeded
        ``s, s+1, ...``, one per image): it stands for the seed ``s``, which the result's
        request records, because rpg draws image ``i`` from a new CPU generator seeded
        ``s + i`` so that every render can be repeated from its request.

        ``loras``: LoRA adapters for the whole image, as ``(name, scale)`` pairs,
        ``"NAME:SCALE"`` strings or :class:`~rpg.lora_spec.LoraInput` (see :mod:`rpg.lora`); they
        are loaded for this call only and the result's request records them with their files'
        SHA-256.

        Returns the :class:`~rpg.models.GenerationResult`: ``.images``, ``.plan`` and
        ``.request`` (the request this call implies; ``rpg.generate(result.request)`` renders
        the same pixels). ``pipeline_kwargs`` go to the stock pipeline (ControlNet ``image=``,
        ``eta=``, ``cross_attention_kwargs=`` ...).

        img2img: ``init_image`` (a picture or path) with ``strength``; hires fix: ``hires`` (a
        scale, or a :class:`~rpg.models.HiresFix` with strength and steps).
        """
        request = call_request(
            prompt,
            plan=plan,
            generator=generator,
            seed=seed,
            negative_prompt=negative_prompt,
            steps=num_inference_steps,
            guidance_scale=guidance_scale,
            height=height,
            width=width,
            num_images=num_images_per_prompt,
            scheduler=scheduler,
            base_ratio=base_ratio,
            loras=loras,
            strength=strength,
            hires=hires,
        )
        return self.generate(
            request,
            output_type=output_type,
            callback_on_step_end=callback_on_step_end,
            init_image=init_image,
            **pipeline_kwargs,
        )

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
