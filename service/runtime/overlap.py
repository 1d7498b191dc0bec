"""CPU: the one-thread session of a model, for batches that start while another batch runs or decodes.

A batch that runs alone keeps every thread of the main session (the latency of one client). Batches that
overlap each run on one thread, with no barrier between threads at every operator, which is what keeps the
cores busy at saturation. They all share this one session: ONNX Runtime runs a session from several
threads at once, and with one intra-op thread each run computes on its caller's thread.

A one-thread run's CPU time per image may grow with the batch: activations that fit a core's cache at
batch 1 spill from it at 4. So a batch runs here in pieces of the size warm-up found cheapest.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)

RUN_SIZE_TOLERANCE = 0.03  # the largest size within this of the cheapest per image: fewer calls
_RUN_SIZE_PROBES = 3  # timed runs per batch size; the least CPU time counts (interruptions only add)


class OverlapSession:
    """One model's one-thread session: runs a batch in pieces of `run_size` images, and at warm-up
    measures which size that should be."""

    def __init__(
        self,
        session: ort.InferenceSession,
        output_names: list[str],
        run_options: ort.RunOptions,
        run_size: int | None,
        model_path: Path,
    ) -> None:
        """`run_size`: configured images per run; None: measured by warm_up (until then, whole batches)."""
        self.session = session
        self.output_names = output_names
        self.input_name = session.get_inputs()[0].name
        self._run_options = run_options
        self._configured = run_size
        self.run_size = run_size
        self.cpu_ms: dict[int, float] = {}  # warm-up's CPU ms per image at each batch size
        self._model_path = model_path

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """The outputs in `output_names` order, for the whole batch."""
        size = self.run_size or len(batch)
        if len(batch) <= size:
            return list(self._run(batch))
        parts = [self._run(batch[start : start + size]) for start in range(0, len(batch), size)]
        return [np.concatenate([part[i] for part in parts]) for i in range(len(self.output_names))]

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: batch}, self._run_options)

    def warm_up(self, batches: list[np.ndarray], runs: int, concurrent: int) -> None:
        """Run each batch `runs` times (first runs allocate memory and pick kernels), measure its CPU
        time per image, choose the run size, then run `concurrent` pieces of that size at once."""
        if runs <= 0:
            return
        for batch in batches:
            for _ in range(runs):
                self._run(batch)
            self.cpu_ms[len(batch)] = self._cpu_ms_per_image(batch)
        self.run_size = self._configured or self._cheapest_size()
        if concurrent > 1:
            largest = max(batches, key=len)
            self._run_at_once(largest[: self.run_size], concurrent)

    def _cpu_ms_per_image(self, batch: np.ndarray) -> float:
        """The least CPU time per image over a few runs. The session computes on its caller's thread,
        so the thread's CPU clock counts the whole run, and other processes do not inflate it."""
        least = float("inf")
        for _ in range(_RUN_SIZE_PROBES):
            start = time.thread_time()
            self._run(batch)
            least = min(least, time.thread_time() - start)
        return least * 1000 / len(batch)

    def _cheapest_size(self) -> int:
        """The largest measured size within RUN_SIZE_TOLERANCE of the cheapest per image."""
        cheapest = min(self.cpu_ms.values())
        chosen = max(size for size, ms in self.cpu_ms.items() if ms <= cheapest * (1 + RUN_SIZE_TOLERANCE))
        log.info(
            "event=overlap_run_size model_path=%s chosen=%d cpu_ms_per_image=%s",
            self._model_path, chosen, {size: round(ms, 2) for size, ms in sorted(self.cpu_ms.items())},
        )  # fmt: skip
        return chosen

    def _run_at_once(self, batch: np.ndarray, count: int) -> None:
        """`count` runs of `batch` at once, from threads started together. ORT's CPU arena grows when
        the runs in flight need more than it holds, and never shrinks: left to the load, the first time
        that many batches overlapped would grow the process by tens of MB, long after start-up (and
        after the model's memory was measured)."""
        barrier = threading.Barrier(count)
        errors: list[BaseException] = []

        def run() -> None:
            try:
                barrier.wait()
                self._run(batch)
            except BaseException as exc:  # re-raised in the loading thread below
                errors.append(exc)

        threads = [threading.Thread(target=run, name=f"warm-up-{i}") for i in range(count)]
        started: list[threading.Thread] = []
        try:
            for thread in threads:
                thread.start()
                started.append(thread)
        except RuntimeError:  # no thread to be had: release the ones waiting at the barrier
            barrier.abort()
            raise
        finally:
            for thread in started:
                thread.join()
        if errors:
            raise errors[0]
