"""Preprocessing backends (service/preprocess/backends.py) and the nvImageCodec batching decoder.

nvImageCodec needs a GPU, so here it is replaced by a stand-in module with the same surface
(Decoder, CodeStream, DecodeParams): what is tested is our batching, fallback and limit logic.
The real library runs in tests/gpu (pytest -m gpu) on a GPU machine.
"""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from service.errors import BadImage, PayloadTooLarge, UnsupportedMediaType
from service.preprocess.backends import (
    GraphBackend,
    PillowBackend,
    choose_backend,
    create_backend,
)
from service.preprocess.gpu_jpeg import BatchingJpegDecoder
from service.preprocess.images import DecodeLimits, PreprocessSpec, preprocess
from service.preprocess.resize_graph import ResizeGraphRunner
from service.settings import Settings

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
SPEC = PreprocessSpec(32, 36, "bicubic")
LIMITS = DecodeLimits()


def encode(array: np.ndarray, fmt: str, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def picture(width: int = 80, height: int = 60) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 3 % 256, y * 4 % 256, (x + y) % 256], axis=-1).astype(np.uint8)


class FakeCodec:
    """nvimgcodec's surface; decodes with Pillow on the host, records each batched call."""

    class ColorSpec:
        SRGB = "srgb"

    class SampleFormat:
        I_RGB = "i_rgb"

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.cuda_streams: list[int] = []
        codec = self

        class CodeStream:
            def __init__(self, data: bytes) -> None:
                if not data.startswith(b"\xff\xd8"):
                    raise RuntimeError("not a code stream")
                self.data = data

        class Decoder:
            def __init__(self, device_id: int = 0) -> None:
                pass

            def decode(self, streams: list[Any], params: Any = None, cuda_stream: int = 0) -> list[Any]:
                codec.calls.append(len(streams))
                codec.cuda_streams.append(cuda_stream)
                time.sleep(0.02)  # lets concurrent callers queue up behind a running batch
                out = []
                for stream in streams:
                    try:
                        out.append(np.asarray(Image.open(io.BytesIO(stream.data)).convert("RGB")))
                    except Exception:
                        out.append(None)
                return out

        self.CodeStream = CodeStream
        self.Decoder = Decoder
        self.DecodeParams = lambda **kwargs: SimpleNamespace(**kwargs)


class FakeStream:
    """A dedicated CUDA stream's surface: its handle, and synchronize() counted."""

    ptr = 0x5EED

    def __init__(self) -> None:
        self.synchronized = 0

    def synchronize(self) -> None:
        self.synchronized += 1


@pytest.fixture
def codec() -> FakeCodec:
    return FakeCodec()


@pytest.fixture
def stream() -> FakeStream:
    return FakeStream()


@pytest.fixture
def decoder(codec: FakeCodec, stream: FakeStream) -> Any:
    """Decodes only: callers get the decoded images."""
    jpeg = BatchingJpegDecoder(codec, max_batch=8, stream=stream)
    yield jpeg
    jpeg.close()


@pytest.fixture
def resize() -> ResizeGraphRunner:
    return ResizeGraphRunner(SPEC)


@pytest.fixture
def graph_decoder(codec: FakeCodec, stream: FakeStream, resize: ResizeGraphRunner) -> Any:
    """Decodes and resizes each decoded batch in one graph run per image size, as create_backend wires it."""
    jpeg = BatchingJpegDecoder(codec, max_batch=8, stream=stream, finish=resize.run_batch)
    yield jpeg
    jpeg.close()


@pytest.mark.parametrize(
    ("decoder_setting", "resize", "provider", "loads", "expected"),
    [
        ("auto", "auto", CUDA, True, ("nvimgcodec", "graph")),
        ("auto", "auto", CUDA, False, ("pillow", "pillow")),  # library missing
        ("auto", "auto", CPU, True, ("pillow", "pillow")),  # the CPU path stays Pillow
        ("nvimgcodec", "auto", CPU, True, ("pillow", "pillow")),  # GPU decode for a CPU model: no
        ("pillow", "auto", CUDA, True, ("pillow", "pillow")),
        ("pillow", "graph", CUDA, True, ("pillow", "graph")),
        ("auto", "graph", CPU, False, ("pillow", "graph")),
        ("nvimgcodec", "pillow", CUDA, True, ("nvimgcodec", "graph")),  # device pixels need the graph
    ],
)
def test_choose_backend(
    decoder_setting: str, resize: str, provider: str, loads: bool, expected: tuple[str, str]
) -> None:
    choice = choose_backend(decoder_setting, resize, provider, nvimgcodec_loads=loads, cupy_loads=loads)
    assert (choice.decoder, choice.resize) == expected


def test_cpu_defaults_give_the_pillow_backend() -> None:
    backend = create_backend(Settings(), SPEC, CPU, "m")
    assert isinstance(backend, PillowBackend)
    data = encode(picture(), "JPEG")
    np.testing.assert_array_equal(backend.prepare(data, LIMITS), preprocess(data, SPEC, LIMITS))


def test_explicit_nvimgcodec_without_a_gpu_falls_back_to_pillow() -> None:
    assert isinstance(create_backend(Settings(decoder="nvimgcodec"), SPEC, CPU, "m"), PillowBackend)


def test_gpu_decoded_jpegs_go_through_the_graph(graph_decoder: BatchingJpegDecoder) -> None:
    backend = GraphBackend(SPEC, ResizeGraphRunner(SPEC), graph_decoder)
    data = encode(picture(), "JPEG")
    row = backend.prepare(data, LIMITS)
    assert row.shape == (3, 32, 32) and backend.gpu_decoded == 1 and backend.pillow_fallbacks == 0
    assert np.abs(row.astype(np.int16) - preprocess(data, SPEC, LIMITS)).mean() <= 1.0


def test_what_nvimgcodec_refuses_goes_to_pillow_with_todays_errors(
    codec: FakeCodec, graph_decoder: BatchingJpegDecoder
) -> None:
    backend = GraphBackend(SPEC, ResizeGraphRunner(SPEC), graph_decoder)
    png = encode(picture(), "PNG")
    cmyk = encode(picture(), "JPEG", mode="CMYK")
    for data in (png, cmyk):
        np.testing.assert_array_equal(backend.prepare(data, LIMITS), preprocess(data, SPEC, LIMITS))
    assert backend.pillow_fallbacks == 2 and codec.calls == []  # neither reached the GPU decoder
    # A JPEG the GPU decoder fails on: Pillow decides, with its own error.
    noise = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    whole = encode(noise, "JPEG")
    truncated = whole[: len(whole) * 3 // 4]  # header intact, scan data cut
    with pytest.raises(BadImage):
        backend.prepare(truncated, LIMITS)
    assert codec.calls == [1] and backend.pillow_fallbacks == 3
    with pytest.raises(UnsupportedMediaType):
        backend.prepare(b"%PDF-1.4 not an image", LIMITS)


def test_pixel_limits_are_checked_before_the_gpu_decoder(
    codec: FakeCodec, graph_decoder: BatchingJpegDecoder
) -> None:
    backend = GraphBackend(SPEC, ResizeGraphRunner(SPEC), graph_decoder)
    with pytest.raises(PayloadTooLarge):
        backend.prepare(encode(picture(400, 300), "JPEG"), DecodeLimits(max_pixels=100_000))
    assert codec.calls == []


def test_concurrent_callers_are_decoded_in_batches(codec: FakeCodec, decoder: BatchingJpegDecoder) -> None:
    images = [encode(picture(60 + i, 50), "JPEG") for i in range(24)]
    images[5] = b"\xff\xd8\xff broken"
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(decoder.decode, images))
    assert sum(codec.calls) == 24 and len(codec.calls) < 24  # coalesced
    assert max(codec.calls) <= 8  # max_batch
    assert results[5] is None
    assert all(r.shape == (50, 60 + i, 3) for i, r in enumerate(results) if i != 5)


def test_unparseable_streams_do_not_sink_their_batch(codec: FakeCodec, decoder: BatchingJpegDecoder) -> None:
    good = encode(picture(), "JPEG")
    barrier = threading.Barrier(2)

    def call(data: bytes) -> Any:
        barrier.wait()
        return decoder.decode(data)

    with ThreadPoolExecutor(2) as pool:
        bad_result, good_result = pool.map(call, [b"garbage", good])
    assert bad_result is None and good_result.shape == (60, 80, 3)


def test_each_decoded_batch_runs_on_the_stream_resizes_once_per_size_and_syncs_once(
    codec: FakeCodec, stream: FakeStream, resize: ResizeGraphRunner, graph_decoder: BatchingJpegDecoder
) -> None:
    """The measurement fix: decode on the dedicated stream (not the legacy default stream 0), one graph
    run per image size in a decoded batch (not one per image), one sync of that stream per batch."""
    images = [
        encode(picture(80, 60), "JPEG") if i % 3 else encode(picture(64, 48), "JPEG") for i in range(24)
    ]
    with ThreadPoolExecutor(12) as pool:
        rows = list(pool.map(graph_decoder.decode, images))
    assert set(codec.cuda_streams) == {FakeStream.ptr}
    assert stream.synchronized == len(codec.calls) == graph_decoder.batches
    assert len(codec.calls) < 24 and resize.runs <= 2 * len(codec.calls) and resize.runs < 24
    for data, row in zip(images, rows, strict=True):
        assert row.shape == (3, 32, 32)
        np.testing.assert_array_equal(row, ResizeGraphRunner(SPEC)(np.asarray(Image.open(io.BytesIO(data)))))


def test_a_failing_resize_sends_its_batch_to_pillow(codec: FakeCodec, stream: FakeStream) -> None:
    def broken(images: list[Any]) -> list[Any]:
        raise RuntimeError("CUDA error: out of memory")

    jpeg = BatchingJpegDecoder(codec, max_batch=8, stream=stream, finish=broken)
    try:
        backend = GraphBackend(SPEC, ResizeGraphRunner(SPEC), jpeg)
        data = encode(picture(), "JPEG")
        np.testing.assert_array_equal(backend.prepare(data, LIMITS), preprocess(data, SPEC, LIMITS))
        assert backend.pillow_fallbacks == 1 and backend.gpu_decoded == 0
    finally:
        jpeg.close()
