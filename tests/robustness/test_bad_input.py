"""The bad-input corpus against the real server, over HTTP and gRPC, our API and V2: each case gets its
documented 4xx / gRPC status with a message, never a 5xx; afterwards the server is alive, its peak
memory is bounded and its log holds none of the request bytes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import grpc
import httpx
import pytest

from service._generated.effnet.v1 import classifier_pb2 as pb
from service._generated.effnet.v1 import classifier_pb2_grpc as pb_grpc
from service._generated.inference import grpc_service_pb2 as v2pb
from service._generated.inference import grpc_service_pb2_grpc as v2pb_grpc
from tests.robustness import corpus
from tests.robustness.conftest import LiveServer, ServerFactory, peak_rss_bytes

pytestmark = pytest.mark.slow

MAX_BODY = 4_000_000
PEAK_RSS_LIMIT = 1536 * 1024 * 1024
CORPUS = corpus.images()


@pytest.fixture(scope="module")
def server(server_factory: ServerFactory, model_repository: Path) -> LiveServer:
    return server_factory(model_repository, "--models", "lite0", env={"EFFNET_MAX_BODY_BYTES": str(MAX_BODY)})


def _check_error(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text[:500]
    if status >= 400:
        error = response.json()["error"]
        message = error["message"] if isinstance(error, dict) else error
        assert isinstance(message, str) and len(message) > 5


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_http_corpus(server: LiveServer, case: str) -> None:
    body, content_type, status = CORPUS[case]
    response = httpx.post(
        f"{server.http_url}/classify",
        params={"variant": "lite0", "top_k": 3},
        content=body,
        headers={"content-type": content_type},
        timeout=60,
    )
    _check_error(response, status)
    if status == 200:
        assert len(response.json()["results"][0]["predictions"]) == 3


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZbOuNdArY") -> bytes:
    out = []
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(out) + f"--{boundary}--\r\n".encode()


MULTIPART_CASES = {
    "no_file": (_multipart([("note", None, corpus.MARKER)]), 400),
    "empty_file": (_multipart([("files", "a.jpg", b"")]), 400),
    "too_many_files": (_multipart([("files", f"{i}.jpg", b"x") for i in range(70)]), 400),
    "one_bad_of_two": (_multipart([("files", "a.jpg", corpus.jpeg()), ("files", "b", corpus.PDF)]), 415),
    "garbage": (b"--XyZbOuNdArY\r\nno headers here" + corpus.MARKER, 400),
    "two_good": (_multipart([("files", "a.jpg", corpus.jpeg()), ("files", "b.jpg", corpus.jpeg())]), 200),
}


@pytest.mark.parametrize("case", sorted(MULTIPART_CASES))
def test_http_multipart(server: LiveServer, case: str) -> None:
    body, status = MULTIPART_CASES[case]
    response = httpx.post(
        f"{server.http_url}/classify?variant=lite0",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=XyZbOuNdArY"},
        timeout=60,
    )
    _check_error(response, status)


def test_http_oversized_body(server: LiveServer) -> None:
    huge = corpus.MARKER * (MAX_BODY // len(corpus.MARKER) + 10)
    _check_error(httpx.post(f"{server.http_url}/classify", content=huge, timeout=60), 413)

    def chunks():  # no Content-Length: the limit must hold while streaming
        for _ in range(MAX_BODY // 65536 + 5):
            yield b"\0" * 65536

    _check_error(httpx.post(f"{server.http_url}/classify", content=chunks(), timeout=60), 413)


QUERIES = {
    "top_k_zero": ("variant=lite0&top_k=0", 422),
    "top_k_text": ("variant=lite0&top_k=lots", 422),
    "top_k_huge": ("variant=lite0&top_k=" + "9" * 40, 422),
    "timeout_negative": ("variant=lite0&timeout_ms=-5", 422),
    "path_traversal": ("variant=..%2F..%2F..%2Fetc%2Fpasswd", 404),
    "absolute_path": ("variant=%2Fetc%2Fpasswd", 404),
    "long_variant": ("variant=" + "b" * 5000, 422),
    "non_utf8": ("variant=%ff%fe%fd", 404),
    "nul_byte": ("variant=lite0%00", 404),
}


@pytest.mark.parametrize("case", sorted(QUERIES))
def test_http_absurd_query(server: LiveServer, case: str) -> None:
    query, status = QUERIES[case]
    response = httpx.post(
        f"{server.http_url}/classify?{query}",
        content=corpus.jpeg(),
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    _check_error(response, status)


def _v2_body(inputs: object, **extra: object) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


def _pixels(shape: list[int], data: object, datatype: str = "UINT8") -> list[dict[str, object]]:
    return [{"name": "pixels", "datatype": datatype, "shape": shape, "data": data}]


V2_CASES: dict[str, tuple[bytes, dict[str, str], int]] = {
    "empty": (b"", {}, 400),
    "not_json": (b"{inputs: " + corpus.MARKER, {}, 400),
    "not_utf8": (b'{"inputs": "\xff\xfe"}', {}, 400),
    "array": (b"[1, 2]", {}, 400),
    "no_inputs": (b"{}", {}, 422),
    "inputs_not_list": (_v2_body({"name": "pixels"}), {}, 422),
    "shape_not_ints": (_v2_body(_pixels(["a"], [1])), {}, 422),
    "negative_dim": (_v2_body(_pixels([-1, 3, 224, 224], [1])), {}, 422),
    "huge_dims": (_v2_body(_pixels([2**40, 3, 224, 224], [1])), {}, 422),
    "shape_vs_data": (_v2_body(_pixels([1, 3, 224, 224], [1, 2, 3])), {}, 422),
    "wrong_datatype": (_v2_body(_pixels([1, 3, 2, 2], [0.5] * 12, "FP32")), {}, 422),
    "unknown_datatype": (_v2_body(_pixels([1], [1], "COMPLEX")), {}, 422),
    "wrong_size": (_v2_body(_pixels([1, 3, 2, 2], [1] * 12)), {}, 422),
    "value_out_of_range": (_v2_body(_pixels([1], [300])), {}, 422),
    "ragged": (_v2_body(_pixels([2, 2], [[1, 2], [3]])), {}, 422),
    "unknown_input": (_v2_body([{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}]), {}, 422),
    "bytes_bad_base64": (
        _v2_body([{"name": "image", "datatype": "BYTES", "shape": [1], "data": [{"b64": "!!"}]}]),
        {},
        422,
    ),
    "bytes_not_an_image": (
        _v2_body([{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["SECRETPIXELS"]}]),
        {},
        400,
    ),
    "bytes_bad_length_prefix": (
        _v2_body(
            [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 8}}]
        )
        + struct.pack("<I", 1_000_000)
        + b"SECR",
        {},
        422,
    ),
    "header_length_lies": (_v2_body([]), {"Inference-Header-Content-Length": "999999"}, 400),
    "binary_size_too_big": (
        _v2_body(
            [{"name": "image", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 99}}]
        ),
        {},
        422,
    ),
    "gzip_encoding": (_v2_body([]), {"Content-Encoding": "gzip"}, 415),
}


@pytest.mark.parametrize("case", sorted(V2_CASES))
def test_v2_http_corpus(server: LiveServer, case: str) -> None:
    body, headers, status = V2_CASES[case]
    if case in ("bytes_bad_length_prefix", "binary_size_too_big"):
        header_length = len(body) - (8 if case == "bytes_bad_length_prefix" else 0)
        headers = {**headers, "Inference-Header-Content-Length": str(header_length)}
    response = httpx.post(
        f"{server.http_url}/v2/models/lite0/infer", content=body, headers=headers, timeout=60
    )
    _check_error(response, status)


def test_v2_http_unknown_and_traversal_models(server: LiveServer) -> None:
    for name in ("nope", "..%2F..%2Fetc", "%2Fetc%2Fpasswd", "lite0%00"):
        response = httpx.post(f"{server.http_url}/v2/models/{name}/infer", content=_v2_body([]), timeout=30)
        assert response.status_code in (404, 422), (name, response.text)


GRPC_CASES: dict[str, tuple[pb.ClassifyRequest, grpc.StatusCode]] = {
    "no_images": (pb.ClassifyRequest(model="lite0"), grpc.StatusCode.INVALID_ARGUMENT),
    "empty_image": (pb.ClassifyRequest(model="lite0", images=[b""]), grpc.StatusCode.INVALID_ARGUMENT),
    "random": (
        pb.ClassifyRequest(model="lite0", images=[corpus.random_bytes()]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "svg": (pb.ClassifyRequest(model="lite0", images=[corpus.SVG]), grpc.StatusCode.INVALID_ARGUMENT),
    "bomb": (
        pb.ClassifyRequest(model="lite0", images=[corpus.png_claiming(50_000, 50_000)]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
    "unknown_model": (
        pb.ClassifyRequest(model="../../etc/passwd", images=[corpus.jpeg()]),
        grpc.StatusCode.NOT_FOUND,
    ),
    "top_k_huge": (
        pb.ClassifyRequest(model="lite0", top_k=1_000_000, images=[corpus.jpeg()]),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "too_many": (
        pb.ClassifyRequest(model="lite0", images=[b"x"] * 65),
        grpc.StatusCode.INVALID_ARGUMENT,
    ),
    "oversized": (
        pb.ClassifyRequest(model="lite0", images=[corpus.MARKER * (MAX_BODY // 10)]),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ),
}


def _v2_request(
    datatype: str, shape: list[int], raw: bytes | None = None, name: str = "image"
) -> v2pb.ModelInferRequest:
    request = v2pb.ModelInferRequest(model_name="lite0")
    request.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


V2_GRPC_CASES: dict[str, v2pb.ModelInferRequest] = {
    "bad_length_prefix": _v2_request("BYTES", [1], struct.pack("<I", 10**6) + corpus.MARKER),
    "truncated_prefix": _v2_request("BYTES", [1], b"\x01\x00"),
    "count_mismatch": _v2_request("BYTES", [2], struct.pack("<I", 3) + b"abc"),
    "negative_dim": _v2_request("UINT8", [-1, 3, 224, 224], b""),
    "huge_dims": _v2_request("UINT8", [2**40, 3, 224, 224], b""),
    "raw_length": _v2_request("UINT8", [1, 3, 224, 224], b"\0" * 100, name="pixels"),
    "wrong_datatype": _v2_request("FP32", [1, 3, 224, 224], b"\0" * (4 * 3 * 224 * 224), name="pixels"),
    "unknown_datatype": _v2_request("COMPLEX", [1], b"\0" * 8),
    "no_contents": _v2_request("BYTES", [1]),
    "raw_count": _v2_request("BYTES", [1]),
}
V2_GRPC_CASES["raw_count"].raw_input_contents.extend([b"", b""])


async def test_grpc_corpus(server: LiveServer) -> None:
    async with grpc.aio.insecure_channel(server.grpc_address) as channel:
        stub = pb_grpc.ClassifierStub(channel)
        for case, (request, code) in GRPC_CASES.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Classify(request, timeout=60)
            assert caught.value.code() == code, (case, caught.value.details())
            assert len(caught.value.details() or "") > 5, case
        v2 = v2pb_grpc.GRPCInferenceServiceStub(channel)
        for case, request in V2_GRPC_CASES.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await v2.ModelInfer(request, timeout=60)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, caught.value.details())
            assert len(caught.value.details() or "") > 5, case


def test_zz_after_the_corpus_alive_bounded_and_logs_clean(server: LiveServer) -> None:
    """Runs last in this module (name order within the file is definition order)."""
    assert server.process.poll() is None
    assert httpx.get(f"{server.http_url}/healthz", timeout=10).status_code == 200
    ok = httpx.post(f"{server.http_url}/classify?variant=lite0", content=corpus.jpeg(), timeout=60)
    assert ok.status_code == 200
    metrics = httpx.get(f"{server.http_url}/metrics", timeout=10).text
    assert 'code="500"' not in metrics and 'code="INTERNAL"' not in metrics
    peak = peak_rss_bytes(server.process.pid)
    print(f"peak RSS of the server after the bad-input corpus: {peak / 2**20:.0f} MiB")
    assert peak < PEAK_RSS_LIMIT
    log = server.log()
    assert "event=request_failed" in log  # bad requests are logged ...
    assert corpus.MARKER.decode() not in log  # ... without their bytes
    assert corpus.MARKER.hex() not in log and "\\xff\\xd8" not in log and "Traceback" not in log
