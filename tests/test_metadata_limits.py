"""Every file rpg writes, rpg reads: bounded requests, bounded text chunks, both directions."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin
from pydantic import ValidationError

from rpg.cli import main
from rpg.metadata import (
    MAX_TEXT_CHUNK_BYTES,
    MetadataError,
    load_request,
    read_metadata,
    save_png,
)
from rpg.models import (
    MAX_PLAN_JSON_BYTES,
    MAX_PROMPT_CHARS,
    MAX_REQUEST_JSON_BYTES,
    MAX_SEED,
    GenerationRequest,
    Region,
    RegionPlan,
    Row,
)


def test_pillow_reads_what_the_limits_allow() -> None:
    """The limit rpg writes with is the one Pillow reads with (else files would not open)."""
    assert MAX_TEXT_CHUNK_BYTES <= PngImagePlugin.MAX_TEXT_CHUNK
    # request (plan included) + the plan again + the JSON envelope fit in one chunk
    assert MAX_REQUEST_JSON_BYTES + 2 * MAX_PLAN_JSON_BYTES + 4096 < MAX_TEXT_CHUNK_BYTES


def test_prompt_longer_than_the_maximum_is_refused_naming_it() -> None:
    GenerationRequest(prompt="x" * MAX_PROMPT_CHARS)
    with pytest.raises(ValidationError, match=f"at most {MAX_PROMPT_CHARS} characters"):
        GenerationRequest(prompt="x" * (MAX_PROMPT_CHARS + 1))
    with pytest.raises(ValidationError, match="at most"):
        RegionPlan.from_split_ratio("1,1", ["a", "b" * (MAX_PROMPT_CHARS + 1)])


def test_plan_size_is_bounded_and_the_largest_request_reads_back(tmp_path: Path) -> None:
    big = "é" * (MAX_PROMPT_CHARS // 2)  # 2 bytes each in UTF-8
    regions = tuple(Region(prompt=f"{i} {big}") for i in range(20))
    with pytest.raises(ValidationError, match=r"the plan is .* KiB as JSON; the most rpg accepts"):
        RegionPlan(rows=(Row(regions=regions),))
    plan = RegionPlan(rows=(Row(regions=regions[:12]),))  # about 120 KiB
    worst = "\x00" * MAX_PROMPT_CHARS  # 6 bytes each as JSON
    request = GenerationRequest(prompt="x" + worst[1:], plan=plan, negative_prompt=worst)
    assert len(request.model_dump_json()) > 150 * 1024
    save_png(Image.new("RGB", (8, 8)), tmp_path / "big.png", request, plan)
    assert load_request(tmp_path / "big.png") == request


def test_save_refuses_metadata_over_the_chunk_limit(tmp_path: Path) -> None:
    """A request built around the validation (model_construct) is refused, not written."""
    request = GenerationRequest.model_construct(
        **{**GenerationRequest(prompt="x").__dict__, "prompt": "y" * (MAX_TEXT_CHUNK_BYTES + 1)}
    )
    with pytest.raises(MetadataError, match="at most 1024 KiB"):
        save_png(Image.new("RGB", (8, 8)), tmp_path / "x.png", request)
    assert not (tmp_path / "x.png").exists()


def _png_with_text_chunk(path: Path, kind: bytes, data: bytes) -> None:
    """A valid 1×1 PNG with one extra text chunk (written by hand: Pillow would refuse)."""
    Image.new("RGB", (1, 1)).save(path)
    raw = path.read_bytes()
    chunk = struct.pack(">I", len(data)) + kind + data
    chunk += struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    iend = raw.rindex(b"IEND") - 4
    path.write_bytes(raw[:iend] + chunk + raw[iend:])


def test_a_50_mb_uncompressed_text_chunk_is_refused_unread(tmp_path: Path) -> None:
    payload = json.dumps({"rpg": 1, "request": {"prompt": "x" * (50 * 2**20)}})
    path = tmp_path / "huge.png"
    _png_with_text_chunk(path, b"tEXt", b"rpg\x00" + payload.encode())
    with pytest.raises(
        MetadataError, match=r"text chunk of 50\.0 MiB; rpg reads text chunks up to"
    ):
        read_metadata(path)
    code = main(["generate", "--from", str(path), "--out", str(tmp_path / "o.png")])
    assert code == 1


def test_a_compressed_chunk_that_inflates_past_the_limit_is_refused(tmp_path: Path) -> None:
    text = json.dumps({"rpg": 1, "request": {"prompt": "x" * (2 * MAX_TEXT_CHUNK_BYTES)}})
    path = tmp_path / "bomb.png"
    _png_with_text_chunk(path, b"zTXt", b"rpg\x00\x00" + zlib.compress(text.encode()))
    with pytest.raises(MetadataError, match="compressed text chunk that holds more than 1024 KiB"):
        read_metadata(path)


_text = st.text(min_size=1, max_size=200).filter(lambda s: s.strip() != "")
# up to the longest prompt accepted: a drawn text repeated to the limit
_long_text = st.one_of(_text, _text.map(lambda t: (t * MAX_PROMPT_CHARS)[:MAX_PROMPT_CHARS]))


@st.composite
def _requests(draw: st.DrawFn) -> GenerationRequest:
    plan = None
    if draw(st.booleans()):
        prompts = draw(st.lists(_text, min_size=1, max_size=6))
        plan = RegionPlan(
            rows=(Row(regions=tuple(Region(prompt=p) for p in prompts)),),
            base_prompt=draw(st.none() | _text),
            base_ratio=draw(st.floats(0, 1)),
        )
    count = draw(st.integers(1, 64))
    return GenerationRequest(
        prompt=draw(_long_text),
        negative_prompt=draw(st.just("") | _long_text),
        plan=plan,
        seed=draw(st.none() | st.integers(0, MAX_SEED - count + 1)),
        num_images=count,
        steps=draw(st.integers(1, 1000)),
        guidance_scale=draw(st.none() | st.floats(0, 100)),
        width=draw(st.none() | st.integers(1, 512).map(lambda v: v * 8)),
        base_ratio=draw(st.none() | st.floats(0, 1)),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=_requests())
def test_any_accepted_request_reads_back_from_its_png(
    request: GenerationRequest, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("png") / "x.png"
    save_png(Image.new("RGB", (8, 8)), path, request)
    assert load_request(path) == request
