"""The Open Inference Protocol: tensor codecs, HTTP and gRPC framing (no server), and the data plane's
request logic on an engine with a tiny real model."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.api.observe import Observation
from service.api.v2 import dataplane as v2
from service.api.v2 import tensors
from service.api.v2.over_grpc import pb, request_from_message, response_message, set_parameter
from service.api.v2.over_http import HEADER_LENGTH, encode_infer_response, parse_infer_request
from service.core.engine import Engine
from service.errors import BadRequest, InvalidArgument, UnknownModel
from service.schemas import Timings
from tests.conftest import parse_classification
from tests.tiny_model import SIZE, png, write_model
from tests.unit.conftest import EngineStarter

ROOT = Path(__file__).resolve().parents[3]


# ----------------------------------------------------------------------------------- BYTES encoding
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_bytes_elements_round_trip(items: list[bytes]) -> None:
    encoded = tensors.encode_bytes_elements(items)
    assert len(encoded) == sum(4 + len(i) for i in items)
    assert tensors.decode_bytes_elements(encoded, len(items)) == items


def test_bytes_elements_are_little_endian_length_prefixed() -> None:
    assert tensors.encode_bytes_elements([b"ab", b""]) == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x05\x00", "inside the length"),
        (struct.pack("<I", 10) + b"abc", "declares 10 bytes"),
    ],
)
def test_truncated_bytes_tensor_is_rejected(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        tensors.decode_bytes_elements(raw)


def test_bytes_element_count_must_match_shape() -> None:
    with pytest.raises(InvalidArgument, match="holds 1 elements, its shape needs 2"):
        tensors.tensor_from_raw("image", "BYTES", [2], tensors.encode_bytes_elements([b"x"]))


# ---------------------------------------------------------------------------------- numeric tensors
def test_raw_tensor_decodes_little_endian_row_major() -> None:
    values = np.arange(6, dtype="<f4").reshape(2, 3)
    decoded = tensors.tensor_from_raw("x", "FP32", [2, 3], values.tobytes())
    assert isinstance(decoded, np.ndarray)
    np.testing.assert_array_equal(decoded, values)


def test_raw_tensor_size_must_match_shape() -> None:
    with pytest.raises(InvalidArgument, match="5 bytes of data"):
        tensors.tensor_from_raw("x", "UINT8", [2, 3], b"\x00" * 5)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([0, 402, 10108, 10472, 216754842], "is too large"),  # empty, but beyond numpy (found by fuzzing)
        ([1 << 16, 1 << 16], "is too large"),
        ([1] * 33, "33 dimensions, at most 32"),
    ],
)
def test_forged_shapes_are_invalid_arguments_not_crashes(shape: list[int], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        tensors.tensor_from_raw("x", "BOOL", shape, b"")
    with pytest.raises(InvalidArgument, match=message):
        tensors.tensor_from_values("x", "BOOL", shape, [])


def test_values_may_be_nested_or_flat() -> None:
    flat = tensors.tensor_from_values("x", "INT32", [2, 2], [1, 2, 3, 4])
    nested = tensors.tensor_from_values("x", "INT32", [2, 2], [[1, 2], [3, 4]])
    assert isinstance(flat, np.ndarray) and isinstance(nested, np.ndarray)
    np.testing.assert_array_equal(flat, nested)
    assert flat.dtype == np.int32


@pytest.mark.parametrize(
    "datatype, shape, values, message",
    [
        ("UINT8", [2], [1, 2, 3], "has 3 elements"),
        ("UINT8", [1], [300], "not a valid UINT8"),
        ("FP32", [2], [[1.0], [2.0, 3.0]], "ragged|not a valid"),
        ("COMPLEX", [1], [1], "unknown datatype"),
        ("UINT8", [-1], [], "negative dimension"),
    ],
)
def test_bad_values_are_rejected(datatype: str, shape: list[int], values: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        tensors.tensor_from_values("x", datatype, shape, values)


def test_json_bytes_elements_are_utf8_strings_or_base64_objects() -> None:
    items = tensors.tensor_from_values("image", "BYTES", [2], ["héllo", {"b64": "AAEC"}])
    assert items == ["héllo".encode(), b"\x00\x01\x02"]
    with pytest.raises(InvalidArgument, match="base64"):
        tensors.tensor_from_values("image", "BYTES", [1], [{"b64": "%%%"}])


def test_classification_parameter_must_be_a_count() -> None:
    assert v2.RequestedOutput.from_parameters("logits", {"classification": 3}).classification == 3
    for bad in (-1, True, "3", 1.5):
        with pytest.raises(InvalidArgument, match="classification"):
            v2.RequestedOutput.from_parameters("logits", {"classification": bad})


# ------------------------------------------------------------------------------------- v2.infer
# The data plane with its real collaborator: an engine on a tiny real ONNX model (tests/tiny_model.py).
LABELS = ("red", "green", "blue", "grey: with colon")


@pytest.fixture
async def engine(tmp_path: Path, start_engine: EngineStarter) -> Engine:
    write_model(tmp_path, "tiny", labels=LABELS)
    return await start_engine(tmp_path)


def pixels_request(n: int = 2, **kw: Any) -> v2.InferRequest:
    pixels = np.zeros((n, 3, SIZE, SIZE), dtype=np.uint8)
    pixels[:, 1] = 20  # green dominates (p > 0.99), then grey (the tiny model's 0.5 * (r + g + b))
    return v2.InferRequest("tiny", [v2.InputTensor("pixels", "UINT8", pixels.shape, pixels)], **kw)


async def infer(engine: Engine, request: v2.InferRequest) -> v2.InferResponse:
    call = v2.admit(Observation(engine, request.model), request.model, request.version)
    return await v2.infer(engine, call, request)


async def test_infer_returns_every_output_by_default(engine: Engine) -> None:
    response = await infer(engine, pixels_request(id="r1"))
    assert [o.name for o in response.outputs] == ["logits", "probabilities"]
    assert response.outputs[1].datatype == "FP32" and response.outputs[1].shape == (2, len(LABELS))
    assert (response.model, response.version, response.id) == ("tiny", "1", "r1")


async def test_classification_extension_gives_score_index_label(engine: Engine) -> None:
    request = pixels_request(1, outputs=[v2.RequestedOutput("probabilities", classification=2)])
    output = (await infer(engine, request)).outputs[0]
    assert output.datatype == "BYTES" and output.shape == (1, 2)
    assert isinstance(output.data, list)
    (score, *green), (_, *grey) = (parse_classification(item) for item in output.data)
    assert green == [1, "green"] and grey == [3, "grey: with colon"] and score > 0.99


async def test_image_input_goes_to_preprocessing(engine: Engine) -> None:
    request = v2.InferRequest("tiny", [v2.InputTensor("image", "BYTES", (2, 1), [png((5, 250, 5))] * 2)])
    response = await infer(engine, request)
    assert response.outputs[0].shape == (2, len(LABELS))
    assert response.outputs[1].data.argmax(axis=1).tolist() == [1, 1]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "request_factory, message",
    [
        (lambda: pixels_request(outputs=[v2.RequestedOutput("scores")]), "unknown output 'scores'"),
        (lambda: pixels_request(outputs=[v2.RequestedOutput("logits", 9)]), "top_k must be between"),
        (
            lambda: pixels_request(outputs=[v2.RequestedOutput("logits"), v2.RequestedOutput("logits")]),
            "requested twice",
        ),
        (lambda: v2.InferRequest("tiny", []), "exactly one input"),
        (
            lambda: v2.InferRequest(
                "tiny", [v2.InputTensor("pixels", "UINT8", (1, 3, 4, 4), np.zeros((1, 3, 4, 4), np.uint8))]
            ),
            rf"shape \[N, 3, {SIZE}, {SIZE}\]",
        ),
        (
            lambda: v2.InferRequest(
                "tiny", [v2.InputTensor("pixels", "FP32", (1,), np.zeros(1, np.float32))]
            ),
            "must be UINT8",
        ),
        (
            lambda: v2.InferRequest("tiny", [v2.InputTensor("image", "BYTES", (1, 2), [b"a", b"b"])]),
            r"\[N, 1\]",
        ),
        (lambda: v2.InferRequest("tiny", [v2.InputTensor("text", "BYTES", (1,), [b"a"])]), "unknown input"),
        (lambda: pixels_request(parameters={"budget_ms": 50}), "budget_ms applies to 'auto'"),
        (lambda: pixels_request(parameters={"budget_ms": "fast"}), "number of milliseconds"),
    ],
)
async def test_invalid_requests_are_rejected(engine: Engine, request_factory: Any, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await infer(engine, request_factory())


async def test_unknown_version_is_not_found(engine: Engine) -> None:
    with pytest.raises(UnknownModel, match="no ready version 7; ready versions: 1"):
        await infer(engine, pixels_request(version="7"))
    for odd in ("latest", "²", "-1"):  # "²".isdigit() is true, but it is no number
        with pytest.raises(UnknownModel, match="versions are numbers"):
            await infer(engine, pixels_request(version=odd))


async def test_model_ready_knows_states_and_names(engine: Engine) -> None:
    assert v2.model_ready(engine, "tiny") is True
    assert v2.model_ready(engine, "TINY") is True
    assert v2.model_ready(engine, "tiny", "2") is False
    with pytest.raises(UnknownModel):
        v2.model_ready(engine, "nope")
    await engine.stop()
    assert v2.model_ready(engine, "tiny") is False


async def test_metadata_lists_both_inputs(engine: Engine) -> None:
    meta = v2.metadata_of(engine, "tiny")
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [
        ("pixels", "UINT8", (-1, 3, SIZE, SIZE)),
        ("image", "BYTES", (-1, 1)),
    ]
    assert [t.name for t in meta.outputs] == ["logits", "probabilities"]


async def test_triton_timeout_parameter_tightens_the_deadline(engine: Engine) -> None:
    assert v2.deadline_from({}) is None
    call = v2.admit(Observation(engine, "tiny"), "tiny", "", deadline=1e12)
    await v2.infer(engine, call, pixels_request(1, parameters={"timeout": 10_000_000}))
    assert call.deadline is not None and call.deadline < 1e12
    late = v2.admit(Observation(engine, "tiny"), "tiny", "", deadline=time.monotonic() + 1)
    kept = late.deadline
    await v2.infer(engine, late, pixels_request(1, parameters={"timeout": 100_000_000}))
    assert late.deadline == kept  # a later timeout never extends the transport's deadline


# ------------------------------------------------------------------------------------ HTTP framing
def test_http_binary_request_and_response() -> None:
    pixels = np.arange(2 * 3 * SIZE * SIZE, dtype=np.uint8).reshape(2, 3, SIZE, SIZE)
    header = json.dumps(
        {
            "id": "abc",
            "inputs": [
                {"name": "pixels", "datatype": "UINT8", "shape": list(pixels.shape),
                 "parameters": {"binary_data_size": pixels.nbytes}}
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True, "classification": 1}}],
        }
    ).encode()  # fmt: skip
    request = parse_infer_request("tiny", "", header + pixels.tobytes(), str(len(header)))
    data = request.inputs[0].data
    assert isinstance(data, np.ndarray)
    np.testing.assert_array_equal(data, pixels)
    assert request.id == "abc" and request.outputs[0].classification == 1

    output = v2.OutputTensor("probabilities", "BYTES", (1, 1), [b"0.6:1:green"], request.outputs[0])
    response = encode_infer_response(v2.InferResponse("tiny", "1", "abc", [output], _timings()), {})
    length = int(response.headers[HEADER_LENGTH])
    body = bytes(response.body)
    document = json.loads(body[:length])
    assert document["outputs"][0]["parameters"]["binary_data_size"] == len(body) - length
    assert tensors.decode_bytes_elements(body[length:]) == [b"0.6:1:green"]


def test_http_json_response_when_no_binary_is_asked() -> None:
    output = v2.OutputTensor("logits", "FP32", (1, 2), np.array([[0.5, 1.5]], dtype=np.float32))
    response = encode_infer_response(v2.InferResponse("tiny", "1", "", [output], _timings()), {})
    assert response.media_type == "application/json"
    assert json.loads(bytes(response.body))["outputs"][0]["data"] == [0.5, 1.5]


@pytest.mark.parametrize(
    "body, header_length, message",
    [
        (b"", None, "empty"),
        (b"{not json", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (b'{"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1]}]}', None, "neither 'data'"),
        (b'{"inputs": []}xx', "14", "2 bytes of binary data"),
        (b'{"inputs": []}', "99", "Inference-Header-Content-Length"),
    ],
)
def test_http_malformed_requests(body: bytes, header_length: str | None, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_infer_request("tiny", "", body, header_length)


# ------------------------------------------------------------------------------------ gRPC framing
def test_grpc_raw_and_typed_contents_decode_alike() -> None:
    pixels = np.arange(3 * SIZE * SIZE, dtype=np.uint8).reshape(1, 3, SIZE, SIZE) % 251
    raw = pb.ModelInferRequest(model_name="tiny", id="7", raw_input_contents=[pixels.tobytes()])
    raw.inputs.add(name="pixels", datatype="UINT8", shape=pixels.shape)
    typed = pb.ModelInferRequest(model_name="tiny")
    typed.inputs.add(name="pixels", datatype="UINT8", shape=pixels.shape).contents.uint_contents.extend(
        pixels.ravel().tolist()
    )
    output = raw.outputs.add(name="logits")
    set_parameter(output.parameters, "classification", 2)
    a, b = request_from_message(raw), request_from_message(typed)
    assert isinstance(a.inputs[0].data, np.ndarray) and isinstance(b.inputs[0].data, np.ndarray)
    np.testing.assert_array_equal(a.inputs[0].data, b.inputs[0].data)
    assert a.outputs[0].classification == 2 and a.id == "7"


def test_grpc_raw_contents_need_one_entry_per_input() -> None:
    message = pb.ModelInferRequest(model_name="tiny", raw_input_contents=[b"a", b"b"])
    message.inputs.add(name="image", datatype="BYTES", shape=[1])
    with pytest.raises(InvalidArgument, match="one per input"):
        request_from_message(message)


def test_grpc_response_uses_raw_output_contents() -> None:
    logits = np.array([[1.0, 2.0]], dtype=np.float32)
    outputs = [
        v2.OutputTensor("logits", "FP32", (1, 2), logits),
        v2.OutputTensor("probabilities", "BYTES", (1, 1), [b"0.5:1:green"]),
    ]
    message = response_message(v2.InferResponse("tiny", "1", "x", outputs, _timings()))
    assert [o.name for o in message.outputs] == ["logits", "probabilities"]
    np.testing.assert_array_equal(np.frombuffer(message.raw_output_contents[0], "<f4"), logits.ravel())
    assert tensors.decode_bytes_elements(message.raw_output_contents[1]) == [b"0.5:1:green"]


def _timings() -> Timings:
    return Timings(preprocess_ms=0, queue_ms=0, inference_ms=0, total_ms=0)


# -------------------------------------------------------------------------------- generated code
def test_generated_code_is_not_stale() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service.protogen", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_v2_messages_do_not_clash_with_tritonclient() -> None:
    # Both define proto package `inference`; ours live in a private descriptor pool.
    from tritonclient.grpc import service_pb2

    ours = pb.ModelInferRequest(model_name="tiny", raw_input_contents=[b"\x01"])
    theirs = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert theirs.model_name == "tiny" and list(theirs.raw_input_contents) == [b"\x01"]
