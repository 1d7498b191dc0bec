"""Preprocessing backends: encoded bytes -> one row of a model's batch input, (3, crop, crop) uint8.

One interface, three implementations; the engine asks `create_backend` once per model and calls
`prepare` per image in its thread pool, never knowing which one it got:
- `pillow`: decode, resize and crop on the CPU with Pillow (service/preprocess/images.py). The CPU path,
  and the default wherever the GPU path is not chosen.
- `graph` with Pillow decoding: Pillow decodes at full resolution, the resize-and-crop ONNX graph
  (service/preprocess/resize_graph.py) runs on the model's device.
- `graph` with nvImageCodec decoding: JPEGs decoded on the GPU in batches
  (service/preprocess/gpu_jpeg.py) and resized and cropped there by the graph, once per decoded batch,
  both on one stream of the model's device; the rows stay in device memory until the model's batch
  reads them. Anything nvImageCodec refuses (other formats, CMYK or
  YCCK JPEGs, corrupt data) goes through the Pillow path for that image, with its errors.

Format checks and pixel limits (service/preprocess/formats.py) run before any decoder sees the bytes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from service.preprocess.formats import DecodeLimits, check_format, jpeg_header
from service.preprocess.gpu_jpeg import BatchingJpegDecoder, load_nvimgcodec
from service.preprocess.images import PreprocessSpec, decode_rgb, preprocess
from service.preprocess.resize_graph import ResizeGraphRunner
from service.runtime.device import DeviceContext
from service.runtime.providers import CPU, CUDA
from service.settings import Settings

log = logging.getLogger(__name__)

Decoder = Literal["pillow", "nvimgcodec"]
Resize = Literal["pillow", "graph"]
# JPEG colour modes nvImageCodec decodes to RGB as Pillow does; others (CMYK, YCCK) go to Pillow.
_GPU_JPEG_MODES = frozenset({"RGB", "L"})


class PreprocessBackend(Protocol):
    name: str
    # True: the batcher's own thread prepares each image just before running its batch (Encoded items);
    # False: the preprocessing pool does, overlapping the batch that runs.
    in_batch: bool

    def prepare(self, data: bytes, limits: DecodeLimits) -> Any:
        """One encoded image -> (3, crop, crop) uint8, host or device array. Raises service.errors."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendChoice:
    decoder: Decoder
    resize: Resize


def choose_backend(
    decoder: str, resize: str, provider: str, nvimgcodec_loads: bool, cupy_loads: bool
) -> BackendChoice:
    """Pure choice from the settings, the model's provider and what imports.

    GPU decoding needs the model on CUDA, the library, and CuPy (device arrays); without them an
    explicit `nvimgcodec` falls back to Pillow (the caller logs it). Decoding on the GPU implies the
    graph resize (the pixels are on the device); `auto` resize means exactly that, else Pillow.
    """
    gpu_ok = provider == CUDA and nvimgcodec_loads and cupy_loads
    chosen: Decoder = "nvimgcodec" if decoder in ("auto", "nvimgcodec") and gpu_ok else "pillow"
    if chosen == "nvimgcodec" or resize == "graph":
        return BackendChoice(chosen, "graph")
    return BackendChoice(chosen, "pillow")


class PillowBackend:
    name = "pillow"

    def __init__(self, spec: PreprocessSpec, in_batch: bool = False) -> None:
        self.spec = spec
        self.in_batch = in_batch

    def prepare(self, data: bytes, limits: DecodeLimits) -> Any:
        return preprocess(data, self.spec, limits)

    def close(self) -> None:
        pass


class GraphBackend:
    """Decode (Pillow, or nvImageCodec for JPEGs) then the resize graph on the model's device."""

    def __init__(self, spec: PreprocessSpec, resize: ResizeGraphRunner, jpeg: BatchingJpegDecoder | None):
        self.spec = spec
        self.resize = resize
        self.jpeg = jpeg
        self.name = f"{'nvimgcodec' if jpeg else 'pillow'}+graph({resize.device})"
        self.in_batch = False  # device rows are gathered across many decoding threads
        self.gpu_decoded = 0
        self.pillow_fallbacks = 0

    def prepare(self, data: bytes, limits: DecodeLimits) -> Any:
        if self.jpeg is None:
            return self.resize(decode_rgb(data, limits))
        if check_format(data, limits) == "jpeg":
            _, mode = jpeg_header(data, limits)  # pixel limits, before any decode
            if mode in _GPU_JPEG_MODES:
                row = self.jpeg.decode(data)  # decoded and resized with its batch (the decoder's finish)
                if row is not None:
                    self.gpu_decoded += 1
                    return row
        self.pillow_fallbacks += 1
        return preprocess(data, self.spec, limits)

    def close(self) -> None:
        if self.jpeg is not None:
            self.jpeg.close()


def _cupy_loads() -> bool:
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    return True


def create_backend(settings: Settings, spec: PreprocessSpec, provider: str, model: str) -> PreprocessBackend:
    """The backend for one model, from settings and the provider its session really got."""
    want_gpu_decode = settings.decoder != "pillow" and provider == CUDA
    codec = load_nvimgcodec() if want_gpu_decode else None
    choice = choose_backend(
        settings.decoder, settings.resize, provider, codec is not None, want_gpu_decode and _cupy_loads()
    )
    if settings.decoder == "nvimgcodec" and choice.decoder != "nvimgcodec":
        log.error(
            "event=nvimgcodec_unavailable model=%s provider=%s reason='needs CUDA, nvidia-nvimgcodec-cu13 "
            "and CuPy' fallback=pillow",
            model, provider,
        )  # fmt: skip
    backend: PreprocessBackend
    # On the CPU, the thread that runs a batch decodes its images: decoding and inference then never
    # compete for a core, and no image passes between threads (docs/benchmark-history.md).
    in_batch = provider == CPU and settings.preprocess_in_batch
    if choice.resize == "pillow":
        backend = PillowBackend(spec, in_batch)
    else:
        device = "cuda" if provider == CUDA else "cpu"
        # One stream for decode and resize: the graph runs on it, the decoder decodes on it.
        context = DeviceContext(settings.cuda_device_id) if device == "cuda" and _cupy_loads() else None
        resize = ResizeGraphRunner(spec, device, settings.cuda_device_id, context)
        jpeg = None
        if choice.decoder == "nvimgcodec" and context is not None:
            try:
                jpeg = BatchingJpegDecoder(
                    codec,
                    settings.cuda_device_id,
                    settings.nvimgcodec_max_batch,
                    context.stream,
                    resize.run_batch,
                )
            except Exception as exc:  # the library loaded but could not start on this device
                log.error("event=nvimgcodec_failed model=%s error=%r fallback=pillow", model, str(exc))
        if jpeg is None and settings.resize != "graph":
            backend = PillowBackend(spec, in_batch)
        else:
            backend = GraphBackend(spec, resize, jpeg)
    log.info(
        "event=preprocess_backend model=%s backend=%s in_batch=%s", model, backend.name, backend.in_batch
    )
    return backend
