"""JPEG decoding on the GPU with NVIDIA nvImageCodec (PyPI `nvidia-nvimgcodec-cu13` + `nvidia-nvjpeg`).

Callers (the preprocessing thread pool, one image each) hand their bytes to one decoder thread, which
decodes whatever is waiting, up to `max_batch` images, in one batched call: the hardware JPEG engine
of A100/H100 (and nvJPEG's CUDA path elsewhere) wants batches, requests arrive one image at a time.
An idle decoder adds no wait: a lone image is decoded at once.

Decoding runs on a dedicated non-blocking CUDA stream (never the legacy default stream, which would
wait for the model batches running on ORT's streams), and `finish` (the resize graph's `run_batch`)
runs once per decoded batch on that same stream; then that stream alone is synchronised, once per
batch (never the whole device), so the results are ready for any other stream. Results are device
arrays: (H, W, 3) uint8 RGB with EXIF orientation applied without `finish`, its rows with it. An
image nvImageCodec cannot decode (corrupt data, a codec feature it lacks) comes back as None and the
caller falls back to Pillow for it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from service.runtime.device import DeviceContext

log = logging.getLogger(__name__)


def load_nvimgcodec() -> Any | None:
    """The nvImageCodec module, or None when it is not installed or cannot load its libraries."""
    try:
        from nvidia import nvimgcodec
    except Exception as exc:  # ImportError, or OSError from a missing CUDA library
        log.info("event=nvimgcodec_unavailable reason=%r", str(exc))
        return None
    return nvimgcodec


class BatchingJpegDecoder:
    """Thread-safe `decode(bytes) -> device image | None`, batched across concurrent callers."""

    def __init__(
        self,
        codec: Any,
        device_id: int = 0,
        max_batch: int = 64,
        stream: Any = None,
        finish: Callable[[list[Any]], list[Any]] | None = None,
    ) -> None:
        """`codec` is the nvimgcodec module (tests pass a stand-in). `stream` has `.ptr` (a
        cudaStream_t) and `.synchronize()`: by default a new non-blocking stream on `device_id`.
        `finish(images)` maps a decoded batch (None where decoding failed) to what callers get."""
        self._codec = codec
        if stream is None:
            stream = DeviceContext(device_id).stream
        self._stream = stream
        self._finish = finish
        self._decoder = codec.Decoder(device_id=device_id)
        self._params = codec.DecodeParams(
            apply_exif_orientation=True,
            color_spec=codec.ColorSpec.SRGB,
            sample_format=codec.SampleFormat.I_RGB,
        )
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[bytes, Future[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="nvimgcodec", daemon=True)
        self._thread.start()
        self.batches = 0
        self.images = 0

    def decode(self, data: bytes) -> Any | None:
        future: Future[Any] = Future()
        self._queue.put((data, future))
        return future.result()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._decode_batch(batch)
            if stop:
                return

    def _decode_batch(self, batch: list[tuple[bytes, Future[Any]]]) -> None:
        results: list[Any | None] = [None] * len(batch)
        streams, positions = [], []
        for index, (data, _) in enumerate(batch):
            try:
                streams.append(self._codec.CodeStream(data))
                positions.append(index)
            except Exception:  # unparseable: None, so the caller's Pillow fallback reports it
                pass
        try:
            if streams:
                decoded = self._decoder.decode(
                    streams, params=self._params, cuda_stream=int(self._stream.ptr)
                )
                for index, image in zip(positions, decoded, strict=True):
                    results[index] = image
                if self._finish is not None:
                    results = self._finish(results)
                self._stream.synchronize()
        except Exception as exc:  # the whole call failed: every image falls back to Pillow
            results = [None] * len(batch)
            log.warning("event=nvimgcodec_batch_failed images=%d error=%r", len(streams), str(exc))
        self.batches += 1
        self.images += len(batch)
        for (_, future), image in zip(batch, results, strict=True):
            future.set_result(image)
