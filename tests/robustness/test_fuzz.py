"""Property-based fuzzing (hypothesis) of preprocessing and the V2 decoders: whatever the bytes, only the
documented errors escape. EFFNET_FUZZ_EXAMPLES raises the budget (make soak does)."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.api.v2 import tensors
from service.api.v2.over_http import parse_infer_request
from service.errors import BadRequest, PayloadTooLarge, ServiceError, UnsupportedMediaType
from service.preprocess.formats import DecodeLimits
from service.preprocess.images import PreprocessSpec, preprocess
from tests.robustness import corpus

EXAMPLES = int(os.environ.get("EFFNET_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPEC = PreprocessSpec(crop_size=32, resize_size=36, interpolation="bicubic")
LIMITS = DecodeLimits(max_pixels=4_000_000)
# What preprocess may raise: each maps to a documented 4xx.
DOCUMENTED = (BadRequest, UnsupportedMediaType, PayloadTooLarge)

SEEDS = {
    "jpeg": corpus.jpeg((48, 40)),
    "png": corpus.encode(corpus.photo((48, 40)), "PNG"),
    "gif": corpus.animated_gif(),
    "bmp": corpus.encode(corpus.photo((24, 20)), "BMP"),
    "tiff": corpus.encode(corpus.photo((24, 20)), "TIFF"),
    "webp": corpus.encode(corpus.photo((24, 20)), "WEBP"),
}


def _check_preprocess(data: bytes) -> None:
    try:
        array = preprocess(data, SPEC, LIMITS)
    except DOCUMENTED as exc:
        assert exc.message
        return
    assert array.shape == (3, 32, 32) and array.dtype == np.uint8


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid image of some format with a few bytes overwritten, cut short, or extended."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data) + draw(st.binary(max_size=64))


@FUZZ
@given(st.binary(max_size=4096))
def test_preprocess_random_bytes(data: bytes) -> None:
    _check_preprocess(data)


@FUZZ
@given(
    st.sampled_from([b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM", b"II*\x00", b"RIFF"]),
    st.binary(),
)
def test_preprocess_magic_then_garbage(magic: bytes, tail: bytes) -> None:
    _check_preprocess(magic + tail)


@FUZZ
@given(mutated())
def test_preprocess_mutated_images(data: bytes) -> None:
    _check_preprocess(data)


@FUZZ
@given(st.binary(max_size=256), st.one_of(st.none(), st.integers(0, 8)))
def test_decode_bytes_elements(raw: bytes, count: int | None) -> None:
    try:
        items = tensors.decode_bytes_elements(raw, count)
    except ServiceError as exc:
        assert isinstance(exc, BadRequest) and exc.message
        return
    assert tensors.encode_bytes_elements(items) == raw
    assert count is None or len(items) == count


@FUZZ
@given(
    st.sampled_from([*tensors.NUMPY_DTYPES, "BYTES", "COMPLEX", ""]),
    st.lists(st.integers(-3, 2**33), max_size=5),
    st.binary(max_size=256),
)
def test_tensor_from_raw(datatype: str, shape: list[int], raw: bytes) -> None:
    try:
        data = tensors.tensor_from_raw("x", datatype, shape, raw)
    except ServiceError as exc:
        assert isinstance(exc, BadRequest) and exc.message
        return
    if isinstance(data, np.ndarray):
        assert list(data.shape) == shape


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=12,
)


@FUZZ
@given(
    st.sampled_from([*tensors.NUMPY_DTYPES, "BYTES", "BF16"]),
    st.lists(st.integers(-2, 6), max_size=4),
    json_values,
)
def test_tensor_from_values(datatype: str, shape: list[int], values: Any) -> None:
    try:
        tensors.tensor_from_values("x", datatype, shape, values)
    except ServiceError as exc:
        assert isinstance(exc, BadRequest) and exc.message


@st.composite
def infer_documents(draw: st.DrawFn) -> bytes:
    tensor = draw(
        st.fixed_dictionaries(
            {},
            optional={
                "name": st.sampled_from(["pixels", "image", "x"]) | json_values,
                "datatype": st.sampled_from(["UINT8", "BYTES", "FP32"]) | json_values,
                "shape": st.lists(st.integers(-2, 2**40), max_size=4) | json_values,
                "data": json_values,
                "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-1, 64)}) | json_values,
            },
        )
    )
    document = draw(st.fixed_dictionaries({"inputs": st.lists(st.just(tensor), max_size=2) | json_values}))
    return json.dumps(document).encode() + draw(st.binary(max_size=32))


@FUZZ
@given(infer_documents(), st.one_of(st.none(), st.integers(-1, 600).map(str), st.text(max_size=4)))
def test_parse_infer_request(body: bytes, header_length: str | None) -> None:
    try:
        parse_infer_request("m", "", body, header_length)
    except ServiceError as exc:
        assert isinstance(exc, BadRequest) and exc.message


def test_bytes_length_prefix_beyond_the_data_is_refused() -> None:
    raw = struct.pack("<I", 2**32 - 1) + b"abc"
    try:
        tensors.decode_bytes_elements(raw, 1)
    except BadRequest as exc:
        assert "declares" in exc.message
    else:
        raise AssertionError("a length prefix beyond the data must be refused")
