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
        codec = self

        class CodeStream:
            def __init__(self, data: bytes) -> None:
                if not data.startswith(b"\xff\xd8"):
                    raise RuntimeError("not a code stream")
                self.data = data

        class Decoder:
            def __init__(self, device_id: int = 0) -> None:
                pass

            def decode(self, streams: list[Any], params: Any = None) -> list[Any]:
                codec.calls.append(len(streams))
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


@pytest.fixture
def codec() -> FakeCodec:
    return FakeCodec()


@pytest.fixture
def decoder(codec: FakeCodec) -> Any:
    jpeg = BatchingJpegDecoder(codec, max_batch=8, synchronize=lambda: None)
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


def test_gpu_decoded_jpegs_go_through_the_graph(decoder: BatchingJpegDecoder) -> None:
    backend = GraphBackend(SPEC, ResizeGraphRunner(SPEC), decoder)
    data = encode(picture(), "JPEG")
    row = backend.prepare(data, LIMITS)
    assert row.shape == (3, 32, 32) and backend.gpu_decoded == 1 and backend.pillow_fallbacks == 0
    assert np.abs(row.astype(np.int16) - preprocess(data, SPEC, LIMITS)).mean() <= 1.0


def test_what_nvimgcodec_refuses_goes_to_pillow_with_todays_errors(
    codec: FakeCodec, decoder: BatchingJpegDecoder
) -> None:
    backend = GraphBackend(SPEC, ResizeGraphRunner(SPEC), decoder)
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
    codec: FakeCodec, decoder: BatchingJpegDecoder
) -> None:
    backend = GraphBackend(SPEC, ResizeGraphRunner(SPEC), decoder)
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
