"""Refinement loop and regional edit on the tiny SD model, with a loopback multimodal planner."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rpg.cli import main
from rpg.edit import edit, region_mask
from rpg.errors import PlannerError
from rpg.metadata import load_request, save_png
from rpg.models import GenerationRequest, RegionPlan
from rpg.orchestrator import RPG
from rpg.planners.openai import OpenAIPlanner
from rpg.planners.rules import RulesPlanner
from rpg.planners.transport import RetryPolicy
from rpg.refine import refine
from servers import OpenAIServer

PROMPT = "a red cat on the left and a blue dog on the right"
PLAN = RegionPlan.from_split_ratio("1,1", ["a red cat", "a blue dog"])
REVISED = RegionPlan.from_split_ratio(
    "2,2,1;1", ["a big red cat", "a small blue dog", "green grass"], base_prompt="a garden"
)


def sent_image(request: Any) -> np.ndarray:
    """The PNG in an OpenAI chat request, as an array."""
    url = request.json["messages"][1]["content"][1]["image_url"]["url"]
    png = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def review(done: bool, plan: RegionPlan | None = None, critique: str = "c") -> str:
    return json.dumps(
        {"critique": critique, "done": done, "plan": None if plan is None else plan.model_dump()}
    )


@pytest.fixture(scope="module")
def rpg(tiny_sd_path: Path) -> RPG:
    pipe = RPG.from_pretrained(tiny_sd_path, device="cpu", dtype="float32")
    pipe.pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[OpenAIServer]:
    monkeypatch.setenv("RPG_CACHE_DIR", str(tmp_path / "cache"))
    with OpenAIServer() as s:
        yield s


@pytest.fixture
def planner(server: OpenAIServer) -> OpenAIPlanner:
    retry = RetryPolicy(retries=0)
    return OpenAIPlanner("vision", base_url=server.base_url, api_key="k", timeout=10, retry=retry)


def request(**kw: Any) -> GenerationRequest:
    fields: dict[str, Any] = {
        "prompt": PROMPT,
        "plan": PLAN,
        "seed": 5,
        "steps": 3,
        "width": 64,
        "height": 64,
    }
    return GenerationRequest(**{**fields, **kw})


# --------------------------------------------------------------------------- refine


def test_revised_plan_is_rendered_in_round_two_with_the_same_seed(
    rpg: RPG, server: OpenAIServer, planner: OpenAIPlanner
) -> None:
    server.push(server.chat(review(False, REVISED, "cat too small")), server.chat(review(True)))
    result = refine(rpg, request(), rounds=3, planner=planner)

    assert result.stop_reason == "done" and result.done
    assert [r.index for r in result.rounds] == [1, 2]
    first, second = result.rounds
    assert first.plan == PLAN and first.critique == "cat too small"
    assert second.plan == REVISED and second.review is not None and second.review.done
    assert second.result.request.seed == first.result.request.seed == 5
    # round 2 is exactly the revised plan rendered with the same seed
    again = rpg.generate(request(plan=REVISED))
    assert np.array_equal(np.asarray(second.image), np.asarray(again.images[0]))
    assert not np.array_equal(np.asarray(first.image), np.asarray(second.image))
    # the reviewer saw each round's own image and plan
    one, two = server.chat_requests
    assert np.array_equal(sent_image(one), np.asarray(first.image))
    assert np.array_equal(sent_image(two), np.asarray(second.image))
    assert REVISED.model_dump_json() in two.json["messages"][1]["content"][0]["text"]


def test_done_stops_after_one_review(
    rpg: RPG, server: OpenAIServer, planner: OpenAIPlanner
) -> None:
    server.push(server.chat(review(True, critique="matches")))
    result = refine(rpg, request(), rounds=3, planner=planner)
    assert len(server.chat_requests) == 1
    assert len(result.rounds) == 1 and result.final.critique == "matches"
    assert result.stop_reason == "done"


def test_rounds_run_out_and_last_image_is_not_reviewed(
    rpg: RPG, server: OpenAIServer, planner: OpenAIPlanner
) -> None:
    server.push(server.chat(review(False, REVISED)))
    result = refine(rpg, request(), rounds=1, planner=planner)
    assert len(server.chat_requests) == 1
    assert [r.plan for r in result.rounds] == [PLAN, REVISED]
    assert result.final.review is None and result.stop_reason == "rounds"


def test_unchanged_revision_stops(rpg: RPG, server: OpenAIServer, planner: OpenAIPlanner) -> None:
    server.push(server.chat(review(False, PLAN)))
    result = refine(rpg, request(), rounds=3, planner=planner)
    assert len(result.rounds) == 1 and result.stop_reason == "unchanged"


def test_refine_with_a_text_only_planner_names_the_multimodal_ones(rpg: RPG) -> None:
    with pytest.raises(PlannerError, match="'openai' or 'ollama'"):
        refine(rpg, request(), rounds=1, planner=RulesPlanner())
    with pytest.raises(PlannerError, match="cannot look at images"):
        refine(rpg, request(), rounds=1)  # rpg's default planner: rules


# --------------------------------------------------------------------------- edit


def edit_reply(*indices: int, plan: RegionPlan | None = None) -> str:
    changes = [{"index": i, "prompt": f"a green frog number {i}"} for i in indices]
    data = {"explanation": "e", "plan": None if plan is None else plan.model_dump()}
    return json.dumps({**data, "changes": changes})


def test_edit_keeps_pixels_outside_the_mask_and_changes_inside(
    rpg: RPG, server: OpenAIServer, planner: OpenAIPlanner, tmp_path: Path
) -> None:
    made = rpg.generate(request(guidance_scale=1.0))
    path = save_png(made.images[0], tmp_path / "in.png", made.request, made.plan)
    server.push(server.chat(edit_reply(1)))
    before = dict(rpg.pipe.unet.attn_processors)

    out = edit(rpg, path, "turn the dog into a frog", planner=planner, steps=3)

    assert dict(rpg.pipe.unet.attn_processors) == before  # regional processor removed again
    source = np.asarray(made.images[0])
    edited = np.asarray(out.image)
    mask = np.asarray(out.mask)
    assert edited.shape == source.shape
    assert mask[:, :20].max() == 0 and mask[:, 34:].min() == 255  # left kept, right repainted
    assert np.array_equal(edited[mask == 0], source[mask == 0])
    assert np.abs(edited[mask == 255].astype(int) - source[mask == 255]).mean() > 5
    # the plan came from the metadata; the edit changed region 1 only
    text = server.chat_requests[0].json["messages"][1]["content"][0]["text"]
    assert PLAN.model_dump_json() in text and "No plan is known" not in text
    assert out.plan.prompts == ["a red cat", "a green frog number 1"]
    assert out.request.seed == 5 and out.request.plan == out.plan
    assert out.request.prompt == PROMPT


def test_edit_on_a_plain_image_asks_for_a_plan(
    rpg: RPG, server: OpenAIServer, planner: OpenAIPlanner
) -> None:
    rng = np.random.default_rng(0)
    plain = Image.fromarray(rng.integers(0, 256, (60, 70, 3), dtype=np.uint8), "RGB")
    described = RegionPlan.from_split_ratio("1;1", ["blue sky", "green field"])
    server.push(server.chat(edit_reply(1, plan=described)))

    out = edit(rpg, plain, "make the field a lake", planner=planner, seed=1, steps=3, feather=4)

    text = server.chat_requests[0].json["messages"][1]["content"][0]["text"]
    assert "No plan is known" in text
    assert out.edit.plan == described
    assert out.plan.prompts == ["blue sky", "a green frog number 1"]
    assert out.image.size == (70, 60)  # not a multiple of 8: rendered at 64x56, composited back
    source, edited, mask = np.asarray(plain), np.asarray(out.image), np.asarray(out.mask)
    assert mask[:20].max() == 0 and mask[34:].min() == 255
    assert np.array_equal(edited[mask == 0], source[mask == 0])
    assert not np.array_equal(edited[mask == 255], source[mask == 255])
    assert (out.request.width, out.request.height) == (64, 56)


def test_edit_with_a_text_only_planner_fails_clearly(rpg: RPG) -> None:
    with pytest.raises(PlannerError, match="'openai' or 'ollama'"):
        edit(rpg, Image.new("RGB", (64, 64)), "make it blue", planner="rules")


def test_region_mask_covers_boxes_and_feathers_outwards() -> None:
    plan = RegionPlan.from_split_ratio("1,1,1", ["a", "b", "c"])
    hard = np.asarray(region_mask(plan, [1], (90, 30)))
    assert hard[:, 30:60].min() == 255 and hard[:, :30].max() == 0 and hard[:, 60:].max() == 0
    soft = np.asarray(region_mask(plan, [0, 2], (90, 30), feather=6))
    assert soft[:, :30].min() == 255 and soft[:, 60:].min() == 255
    assert soft[:, 45].max() == 0  # far from both boxes
    assert 0 < soft[15, 33] < 255  # the fade just outside box 0


def test_saved_edit_carries_the_new_plan(
    rpg: RPG, server: OpenAIServer, planner: OpenAIPlanner, tmp_path: Path
) -> None:
    server.push(server.chat(edit_reply(0, plan=PLAN)))
    out = edit(rpg, Image.new("RGB", (64, 64), (9, 9, 9)), "a frog", planner=planner, steps=2)
    path = save_png(out.image, tmp_path / "e.png", out.request, out.plan)
    assert load_request(path).plan == out.plan


# --------------------------------------------------------------------------- command line


def test_cli_generate_refine_saves_every_round_with_its_plan(
    tiny_sd_path: Path, server: OpenAIServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(PLAN.model_dump_json(), encoding="utf-8")
    server.push(server.chat(review(False, REVISED, "cat too small")), server.chat(review(True)))
    out = tmp_path / "x.png"
    argv = ["generate", PROMPT, "--model", str(tiny_sd_path), "--plan", str(plan_file)]
    argv += ["--planner", "openai", "--base-url", server.base_url, "--device", "cpu"]
    assert main([*argv, "--seed", "4", "--steps", "2", "--refine", "2", "--out", str(out)]) == 0

    first, second = tmp_path / "x.round-1.png", tmp_path / "x.round-2.png"
    assert load_request(first).plan == PLAN
    assert load_request(second).plan == REVISED
    assert load_request(second).seed == load_request(first).seed == 4
    assert not (tmp_path / "x.round-3.png").exists()  # the planner said done after round 2
    assert len(server.chat_requests) == 2
    with Image.open(out) as final, Image.open(second) as last:
        assert np.array_equal(np.asarray(final), np.asarray(last))
    printed = capsys.readouterr().out
    assert "round 1:" in printed and "cat too small" in printed


def test_cli_generate_refine_needs_a_multimodal_planner(
    tiny_sd_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", PROMPT, "--model", str(tiny_sd_path), "--device", "cpu", "--steps", "1"]
    assert main([*argv, "--refine", "1", "--out", str(tmp_path / "x.png")]) == 2
    assert "'openai' or 'ollama'" in capsys.readouterr().err
    assert not (tmp_path / "x.round-1.png").exists()


def test_cli_edit_uses_the_metadata_and_writes_the_new_plan(
    rpg: RPG,
    tiny_sd_path: Path,
    server: OpenAIServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    made = rpg.generate(request(model=str(tiny_sd_path)))
    source = save_png(made.images[0], tmp_path / "in.png", made.request, made.plan)
    server.push(server.chat(edit_reply(0)))
    out = tmp_path / "out.png"
    argv = ["edit", str(source), "make the cat a frog", "--planner", "openai"]
    argv += ["--base-url", server.base_url, "--planner-model", "vision", "--steps", "2"]
    assert main([*argv, "--device", "cpu", "--out", str(out), "--save-mask"]) == 0

    saved = load_request(out)
    assert saved.plan is not None and saved.plan.prompts == ["a green frog number 0", "a blue dog"]
    assert saved.seed == 5 and saved.steps == 2 and saved.model == str(tiny_sd_path)
    captured = capsys.readouterr()
    printed = captured.out
    assert "plan from its metadata" in printed and "repainted region 0" in printed
    assert "denoise" in captured.err and "2/2" in captured.err  # the edit's one progress bar
    with Image.open(out) as edited, Image.open(source) as original:
        e, o = np.asarray(edited.convert("RGB")), np.asarray(original.convert("RGB"))
    with Image.open(tmp_path / "out.mask.png") as m:
        mask = np.asarray(m)
    assert np.array_equal(e[mask == 0], o[mask == 0]) and (mask == 0).any()


def test_cli_edit_with_no_multimodal_planner_is_one_clear_line(
    tiny_sd_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "plain.png"
    Image.new("RGB", (64, 64)).save(image)
    argv = ["edit", str(image), "make it red", "--model", str(tiny_sd_path), "--device", "cpu"]
    assert main([*argv, "--planner", "rules"]) == 2
    err = capsys.readouterr().err
    assert "rpg edit: error:" in err and "'openai' or 'ollama'" in err


def test_sdxl_edit_uses_the_sdxl_inpainting_pipeline(
    tmp_path_factory: pytest.TempPathFactory, server: OpenAIServer, planner: OpenAIPlanner
) -> None:
    from rpg.backbones.sdxl import StableDiffusionXLBackbone
    from rpg.backbones.tiny.sdxl import write_tiny_sdxl
    from rpg.edit import inpaint_pipeline

    folder = write_tiny_sdxl(tmp_path_factory.mktemp("xl") / "tiny-sdxl", seed=0)
    xl = RPG(StableDiffusionXLBackbone.load(folder, device="cpu", dtype="float32"))
    xl.pipe.set_progress_bar_config(disable=True)
    assert type(inpaint_pipeline(xl.backbone)).__name__ == "StableDiffusionXLInpaintPipeline"
    rng = np.random.default_rng(1)
    plain = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    server.push(server.chat(edit_reply(1)))
    out = edit(xl, plain, "a frog on the right", plan=PLAN, planner=planner, seed=2, steps=2)
    source, edited, mask = np.asarray(plain), np.asarray(out.image), np.asarray(out.mask)
    assert np.array_equal(edited[mask == 0], source[mask == 0]) and (mask == 0).any()
    assert not np.array_equal(edited[mask == 255], source[mask == 255])
