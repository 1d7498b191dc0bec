"""A model's sessions by batch size: the main one, and with bucket sessions one per bucket but the
smallest (which the main session serves, with the sizes no bucket holds), so that each session's
kernels only ever see one batch size: with cuDNN 9, ORT's CUDA convolution keeps the plan of the last
input shape it ran, and another size rebuilds every convolution's plan."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import onnxruntime as ort

from service.runtime.session_create import create_like
from service.runtime.session_options import RuntimeOptions

log = logging.getLogger(__name__)


class BucketSessions:
    def __init__(self, main: ort.InferenceSession, model_path: Path, options: RuntimeOptions, provider: str):
        self.main = main
        self.by_size: dict[int, ort.InferenceSession] = {}
        self._model_path = model_path
        self._options = options
        self._provider = provider

    def session_for(self, size: int) -> ort.InferenceSession:
        """The session that runs batches of `size` rows (its bucket's; else the main one)."""
        return self.by_size.get(size, self.main)

    def add(self, sizes: Sequence[int]) -> None:
        """A session of the same graph and options for each of `sizes` (made before any of them runs)."""
        for size in sizes:
            if size not in self.by_size:
                self.by_size[size] = create_like(
                    self._model_path, self._options, self._provider, f"batches of {size}"
                )
        log.info("event=bucket_sessions model_path=%s sizes=%s", self._model_path, sorted(self.by_size))
