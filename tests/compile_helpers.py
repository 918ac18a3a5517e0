"""Tiny pipelines of every backbone and the calls the compile and host-sync tests make."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from rpg import RPG, GenerationRequest, RegionPlan
from rpg.attention.diagnostics import HostSyncCounter

SIZE = 64
STEPS = 2
PROMPT = "a red cat on the left and a blue dog on the right"
MODELS = ("tiny-sd", "tiny-sdxl", "tiny-sd-controlnet", "tiny-flux", "tiny-sd3", "tiny-flux2-klein")


def write_models(root: Path) -> Path:
    """Every tiny backbone (and a ControlNet for tiny-sd) under ``root``."""
    from rpg.backbones.tiny import tiny_model
    from rpg.backbones.tiny.controlnet import write_tiny_controlnet

    for name in MODELS:
        if name == "tiny-sd-controlnet":
            write_tiny_controlnet(root / "cn-sd", sdxl=False, seed=0)
            continue
        found = tiny_model(name)
        assert found is not None
        found.write(root / name)
    return root


def load(root: Path, name: str, *, device: str = "cpu", dtype: str = "float32") -> RPG:
    if name == "tiny-sd-controlnet":
        rpg = RPG.from_pretrained(
            root / "tiny-sd", device=device, dtype=dtype, controlnet=root / "cn-sd"
        )
    else:
        rpg = RPG.from_pretrained(root / name, device=device, dtype=dtype)
    rpg.pipe.set_progress_bar_config(disable=True)
    return rpg


def denoiser_names(pipe: Any) -> list[str]:
    names = ["transformer"] if hasattr(pipe, "transformer") else ["unet"]
    if getattr(pipe, "controlnet", None) is not None:
        names.append("controlnet")
    return names


def call_inputs(name: str) -> dict[str, Any]:
    """What a render of ``name`` needs besides the request (a ControlNet image)."""
    if name != "tiny-sd-controlnet":
        return {}
    image = Image.new("RGB", (SIZE, SIZE))
    image.paste((255, 255, 255), (16, 16, 48, 48))
    return {"image": image}


def canvas_plan(kind: str, *, base: bool) -> RegionPlan:
    """A canvas over a background: two overlapping boxes (``"hard"``), or a box under a
    feathered mask (``"soft"``, every grid has shared positions)."""
    from rpg.models import Layer, LayerMask

    top: Layer
    if kind == "soft":
        mask = torch.zeros(16, 16)
        mask[2:10, 6:15] = 1.0
        top = Layer(prompt="a blue dog", mask=LayerMask.from_image(mask.numpy(), soft_edge=0.1))
    else:
        top = Layer(prompt="a blue dog", box=(0.5, 0.25, 1.0, 0.875))
    return RegionPlan(
        layers=[Layer(prompt="a red cat", box=(0.0, 0.25, 0.625, 1.0)), top],
        base_prompt=PROMPT if base else None,
        base_ratio=0.3 if base else 0.0,
    )


def request(*, base: bool = True, canvas: str | None = None, **fields: Any) -> GenerationRequest:
    plan = RegionPlan.from_split_ratio(
        "1,1",
        ["a red cat", "a blue dog"],
        base_prompt=PROMPT if base else None,
        base_ratio=0.3 if base else 0.0,
    )
    if canvas is not None:
        plan = canvas_plan(canvas, base=base)
    fields = {"steps": STEPS, "seed": 1, "width": SIZE, "height": SIZE, **fields}
    return GenerationRequest(prompt=PROMPT, plan=plan, **fields)


def render(rpg: RPG, name: str, req: GenerationRequest, **call: Any) -> torch.Tensor:
    """The render's latents (decoding adds nothing the denoiser did)."""
    out = rpg.generate(req, output_type="latent", **call_inputs(name), **call)
    image: torch.Tensor = out.images[0]
    return image


def stock(rpg: RPG, name: str, **call: Any) -> Any:
    """The stock pipeline on the whole prompt, same size, steps, seed and scheduler."""
    with rpg.backbone.using_scheduler(rpg.backbone.request_scheduler()):
        return rpg.pipe(
            prompt=PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS,
            output_type="latent", generator=torch.Generator().manual_seed(1),
            **call_inputs(name), **call,
        )  # fmt: skip


def count_host_syncs(pipe: Any, run: Callable[[], Any]) -> HostSyncCounter:
    """One counter over every forward of the pipeline's denoisers during ``run()``."""
    counter = HostSyncCounter()
    with ExitStack() as watching:
        for name in denoiser_names(pipe):
            watching.enter_context(counter.watch(getattr(pipe, name)))
        run()
    return counter


class _EditPlanner:
    """An image-capable planner whose edit repaints region 1 as "a green frog"."""

    name = "edit-region-1"
    supports_images = True

    def plan(self, prompt: str, *, image: Any = None) -> Any:
        raise AssertionError("edit must not ask for a fresh plan")

    def review(self, prompt: str, plan: RegionPlan, image: Any) -> Any:
        raise AssertionError("edit does not review")

    def plan_edit(self, instruction: str, image: Any, plan: RegionPlan | None = None) -> Any:
        from rpg.planners.feedback import EditPlan, RegionChange

        change = RegionChange(index=1, prompt="a green frog")
        return EditPlan(explanation="region 1", plan=plan, changes=[change])


def edit_source(req: GenerationRequest) -> Image.Image:
    """A random ``SIZE``² image carrying ``req`` (plan, steps, seed, family options) as an rpg
    image does, for ``rpg edit`` to repaint."""
    import json

    import numpy as np

    from rpg.metadata import PNG_KEY

    pixels = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    image.info[PNG_KEY] = json.dumps({"request": req.model_dump(mode="json")})
    return image


def edit_render(rpg: RPG, req: GenerationRequest, **call: Any) -> Any:
    """``rpg edit`` of :func:`edit_source` (region 1 repainted): the edit's result."""
    from rpg.edit import edit

    return edit(rpg, edit_source(req), "make the dog a frog", planner=_EditPlanner(), **call)


def stock_inpaint(rpg: RPG, req: GenerationRequest, mask: Image.Image) -> Any:
    """The family's stock inpainting pipeline on the loaded modules, rpg nowhere."""
    from rpg.backbones.inpaint import build_inpaint_pipeline

    cls = rpg.backbone.inpaint_pipeline_class()
    pipe = build_inpaint_pipeline(rpg.pipe, cls)
    return pipe(
        prompt=PROMPT, image=edit_source(req), mask_image=mask, strength=1.0,
        num_inference_steps=STEPS, output_type="latent",
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
