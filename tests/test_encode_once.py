"""Each text goes through each text encoder once per call, for every family and option mix."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from rpg.models import GenerationRequest, RegionPlan
from rpg.orchestrator import RPG
from tiny_helpers import torch_threads, write_tiny_models

NAMES = ("tiny-sd", "tiny-sdxl", "tiny-flux", "tiny-sd3", "tiny-flux2-klein")
PROMPT = "a red cat and a blue dog in a garden"
PLANS = {
    "base": RegionPlan.from_split_ratio(
        "1,1", ["a red cat", "a blue dog"], base_prompt="a garden", base_ratio=0.3
    ),
    "no base": RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"]),
    "one region": RegionPlan.single(PROMPT),
}
JOINT = {"tiny-flux", "tiny-sd3", "tiny-flux2-klein"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RPG]:
    folders = write_tiny_models(tmp_path_factory.mktemp("rpg-encode-cache"), NAMES)
    out = {}
    for name, folder in folders.items():
        pipe = RPG.from_pretrained(folder, device="cpu", dtype="float32")
        pipe.pipe.set_progress_bar_config(disable=True)
        out[name] = pipe
    return out


def _encoders(pipe: Any) -> dict[str, Any]:
    return {
        key: getattr(pipe, key)
        for key in ("text_encoder", "text_encoder_2", "text_encoder_3")
        if getattr(pipe, key, None) is not None
    }


def _count_forwards(pipe: RPG, request: GenerationRequest) -> dict[str, Counter[tuple[int, ...]]]:
    """Text-encoder forwards of one ``generate``, per encoder: token-id row → times seen."""
    seen: dict[str, Counter[tuple[int, ...]]] = {}
    handles = []
    for key, encoder in _encoders(pipe.pipe).items():
        counter: Counter[tuple[int, ...]] = Counter()
        seen[key] = counter

        def hook(module: Any, args: Any, kwargs: Any, counter: Counter[Any] = counter) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            for row in ids:
                counter[tuple(int(x) for x in row)] += 1

        handles.append(encoder.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        pipe.generate(request, output_type="latent")
    finally:
        for handle in handles:
            handle.remove()
    return seen


def _cases() -> list[tuple[str, str, dict[str, Any]]]:
    cases = []
    for name in NAMES:
        for plan in PLANS:
            options: list[dict[str, Any]] = [{}]
            options.append({"regional_steps": 0.5})  # packs the whole prompt without a base
            if name == "tiny-flux":
                options.append({"regional_steps": 0.5, "true_cfg_scale": 2.0})
            cases += [(name, plan, o) for o in options]
    return cases


@pytest.mark.parametrize(("name", "plan", "options"), _cases())
def test_every_text_is_encoded_once_per_call(
    models: dict[str, RPG], name: str, plan: str, options: dict[str, Any]
) -> None:
    pipe = models[name]
    request = GenerationRequest(
        prompt=PROMPT,
        plan=PLANS[plan],
        steps=1,
        seed=0,
        width=64,
        height=64,
        negative_prompt="blurry",
        options=options,
    )
    seen = _count_forwards(pipe, request)
    assert any(seen.values()), "no text encoder ran"
    for key, counter in seen.items():
        twice = {ids: n for ids, n in counter.items() if n > 1}
        assert not twice, f"{name} {key}: {len(twice)} token rows encoded more than once"
