"""Backbones own their options: declared per family, validated against the loaded model, offered
by the CLI from the declarations and checked before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from rpg.backbones.options import (
    BUILTIN_OPTIONS,
    FluxOptions,
    JointOptions,
    NoOptions,
    UNetOptions,
    cli_option_fields,
    option_fields,
)
from rpg.errors import ConfigurationError
from rpg.models import GenerationRequest
from rpg.orchestrator import RPG
from rpg.plugins import backbone_registry
from test_cli_failfast import PROMPT, run_rpg


def test_the_cli_table_is_what_the_backbones_declare() -> None:
    declared = {}
    for entry in backbone_registry():
        for name in entry.target.pipeline_class_names:
            declared[name] = entry.target.options_model
    for pipeline, model in BUILTIN_OPTIONS.items():
        assert declared[pipeline] is model, pipeline


def test_flags_come_from_the_declarations() -> None:
    flags = {f.name: f.flag for f in cli_option_fields()}
    assert flags == {
        "image_attention": "--image-attention",
        "group_norm": "--group-norm",
        "regional_steps": "--regional-steps",
        "regional_blocks": "--regional-blocks",
        "true_cfg_scale": "--true-cfg",
    }
    assert [f.name for f in option_fields(NoOptions)] == []
    unet = [f.name for f in option_fields(UNetOptions)]
    assert unet == ["image_attention", "group_norm", "regional_steps"]
    assert {f.name for f in option_fields(FluxOptions)} > {
        f.name for f in option_fields(JointOptions)
    }


def test_the_request_has_no_family_fields() -> None:
    fields = set(GenerationRequest.model_fields)
    for model in BUILTIN_OPTIONS.values():
        assert not fields & set(model.model_fields)


def test_the_loaded_family_validates_and_records_options(tiny_rpg: RPG) -> None:
    request = GenerationRequest(prompt="a cat", steps=1, seed=0, options={"true_cfg_scale": 2})
    with pytest.raises(ConfigurationError, match=r"true_cfg_scale does not apply to 'sd'"):
        tiny_rpg.generate(request)
    result = tiny_rpg.generate(request.model_copy(update={"options": {}}))
    assert result.request.options == {}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--regional-steps", "5"], "--regional-steps: input should be less than or equal to 1"),
        (["--true-cfg", "4"], "--true-cfg does not apply to tiny-sd"),
        (
            ["--group-norm", "rows"],
            "--group-norm: invalid choice: 'rows' (choose from 'global', 'region')",
        ),
        (["--model", "tiny-sd3", "--true-cfg", "4"], "--true-cfg does not apply to tiny-sd3"),
        (["--regional-blocks", "0"], "--regional-blocks: input should be greater than or equal"),
    ],
)
def test_bad_option_flags_fail_before_loading(
    tmp_path: Path, args: list[str], message: str
) -> None:
    code, heavy, err = run_rpg(["generate", PROMPT, *args], tmp_path)
    assert code == 2 and heavy == []
    assert message in err
    assert not (tmp_path / "cache").exists()
