"""Scorers for ``rpg eval``: the exact shapes scorer and CLIP scores, registered as plugins.

A scorer has a ``name`` and ``score(image, item, plan) -> dict[str, float]``: ``image`` is the
rendered PIL image, ``item`` the :class:`~rpg.eval.prompts.EvalPrompt`, ``plan`` the plan the
image was rendered with (``None`` for the stock pipeline). Scorers are registered through the
``rpg_register_scorers`` hook like planners and backbones::

    @rpg.hookimpl
    def rpg_register_scorers(registry):
        registry.register("my-score", MyScorer, description="...")

A factory is called with the user's options (``model=`` for the CLIP scorers) and returns a
scorer. The built-ins:

- ``shapes``: reads the image back into objects (:mod:`rpg.eval.shapes_score`); ``binding`` is
  the fraction of expected objects present with the right colour and shape, ``placement`` the
  fraction also centred in their expected region, ``correct`` 1 when every object is placed,
  ``precision`` the fraction of the objects found that are an expected one in its region
  (missing when none was found). Option ``scale``: image pixels per pixel of the 64×64 world
  (``rpg eval`` sets the model's native size over 64 when it is not given; left at ``None``,
  the shorter side of each image is 64 world pixels);
- ``clip``: CLIP score of the image against the whole prompt (100 · max(cos, 0));
- ``region-clip``: the mean CLIP score of each region's crop against its regional prompt (for
  the stock pipeline, the regions of the item's exact plan).

The CLIP scorers load any CLIP model from a folder or the local Hugging Face cache through
transformers (``--scorer-option model=openai/clip-vit-base-patch32``); nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING, Any, Protocol

from rpg.errors import ConfigurationError, ModelNotFoundError

if TYPE_CHECKING:
    from PIL import Image

    from rpg.eval.prompts import EvalPrompt
    from rpg.models import RegionPlan

__all__ = ["ClipScorer", "RegionClipScorer", "Scorer", "ShapesScorer"]

#: The CLIP model the CLIP scorers use when none is given (it must be in the local cache).
DEFAULT_CLIP = "openai/clip-vit-base-patch32"


class Scorer(Protocol):
    """What ``rpg eval`` calls for every image."""

    name: str

    def score(
        self, image: Image.Image, item: EvalPrompt, plan: RegionPlan | None
    ) -> dict[str, float]: ...


class ShapesScorer:
    """Exact colour, shape and placement check of shapes-world images (no learned model)."""

    name = "shapes"

    def __init__(self, scale: float | str | None = None, **unknown: Any) -> None:
        if unknown:
            raise ConfigurationError(
                f"the shapes scorer takes only the option scale, got {sorted(unknown)}"
            )
        self.scale: float | None = None
        if scale is None or scale in ("", "auto"):
            return
        with contextlib.suppress(ValueError):  # not a number: the message below says so
            self.scale = float(scale)
        if not (self.scale or 0) > 0:
            raise ConfigurationError(
                f"the shapes scorer's scale must be a positive number (image pixels per pixel "
                f"of the 64×64 world, e.g. scale=1), got {scale!r}"
            )

    def score(
        self, image: Image.Image, item: EvalPrompt, plan: RegionPlan | None
    ) -> dict[str, float]:
        from rpg.eval.shapes_score import match_objects, read_image, region_precision

        if not item.objects:
            return {}
        reading = read_image(image, self.scale)
        regions = item.object_regions()
        checks = match_objects(reading, item.objects, regions)
        n = len(checks)
        found = sum(c.found for c in checks)
        placed = sum(c.placed for c in checks)
        scores = {
            "binding": found / n,
            "placement": placed / n,
            "correct": float(placed == n),
            "extra_objects": float(max(0, len(reading.objects) - n)),
        }
        precision = region_precision(reading, item.objects, regions)
        if precision is not None:
            scores["precision"] = precision
        return scores


class ClipScorer:
    """CLIP score of the whole image against the whole prompt: ``100 · max(cos, 0)``."""

    name = "clip"

    def __init__(self, model: str | os.PathLike[str] = DEFAULT_CLIP, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        ref = os.fspath(model)
        try:
            loaded: Any = CLIPModel.from_pretrained(ref, local_files_only=True)
            self.model = loaded.to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(ref, local_files_only=True)
        except OSError as exc:
            raise ModelNotFoundError(
                f"CLIP model {ref!r} is not a folder or in the local Hugging Face cache ({exc}); "
                "give one with --scorer-option model=PATH_OR_ID (nothing is downloaded)"
            ) from None
        self.device = device

    def similarity(self, images: list[Image.Image], texts: list[str]) -> list[float]:
        """``100 · max(cos, 0)`` of each image with the text at the same index."""
        import torch

        inputs = self.processor(
            text=texts, images=images, return_tensors="pt", padding=True, truncation=True
        ).to(self.device)
        with torch.no_grad():
            img = self.model.get_image_features(pixel_values=inputs["pixel_values"])
            txt = self.model.get_text_features(
                input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
            )
        img = getattr(img, "pooler_output", img)
        txt = getattr(txt, "pooler_output", txt)
        cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
        return [100.0 * max(float(c), 0.0) for c in cos]

    def score(
        self, image: Image.Image, item: EvalPrompt, plan: RegionPlan | None
    ) -> dict[str, float]:
        return {"clip": self.similarity([image.convert("RGB")], [item.prompt])[0]}


class RegionClipScorer(ClipScorer):
    """Mean CLIP score of every region's crop against its own prompt."""

    name = "region-clip"

    def score(
        self, image: Image.Image, item: EvalPrompt, plan: RegionPlan | None
    ) -> dict[str, float]:
        used = plan if plan is not None else item.plan
        if used is None:
            return {}
        w, h = image.size
        crops, texts = [], []
        for (x0, y0, x1, y1), prompt in zip(used.boxes(), used.prompts, strict=True):
            box = (
                round(x0 * w),
                round(y0 * h),
                max(round(x1 * w), round(x0 * w) + 1),
                max(round(y1 * h), round(y0 * h) + 1),
            )
            crops.append(image.convert("RGB").crop(box))
            texts.append(prompt)
        scores = self.similarity(crops, texts)
        return {"region_clip": sum(scores) / len(scores)}
