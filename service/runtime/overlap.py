"""CPU: the one-thread session of a model, for batches that start while another batch runs or decodes.

A batch that runs alone keeps every thread of the main session (the latency of one client). Batches that
overlap each run on one thread, with no barrier between threads at every operator, which is what keeps the
cores busy at saturation. They all share this one session: ONNX Runtime runs a session from several
threads at once, and with one intra-op thread each run computes on its caller's thread.

Such a batch runs in pieces of `run_size` images (default 1). One image's activations stay in a core's
cache where four images' spill from it: on this project's 2-core machine b0 served 9 % more images per
second at 16 clients in pieces of one than in whole batches of four (docs/benchmark-history.md).
"""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort


class OverlapSession:
    """One model's one-thread session; runs a batch in pieces of at most `run_size` images (None: whole)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        output_names: list[str],
        run_options: ort.RunOptions,
        run_size: int | None,
    ) -> None:
        self.session = session
        self.output_names = output_names
        self.input_name = session.get_inputs()[0].name
        self._run_options = run_options
        self.run_size = run_size

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """The outputs in `output_names` order, for the whole batch."""
        size = self.run_size or len(batch)
        if len(batch) <= size:
            return self._run(batch)
        parts = [self._run(batch[start : start + size]) for start in range(0, len(batch), size)]
        return [np.concatenate([part[i] for part in parts]) for i in range(len(self.output_names))]

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: batch}, self._run_options)

    def warm_up(self, batches: list[np.ndarray], runs: int, concurrent: int) -> None:
        """Run each size a piece can have `runs` times (first runs allocate memory and pick kernels),
        then `concurrent` full pieces at once."""
        if runs <= 0:
            return
        largest = max(batches, key=len)
        full = min(self.run_size or len(largest), len(largest))  # the largest piece a run will see
        pieces = [batch for batch in batches if len(batch) < full] + [largest[:full]]
        for piece in pieces:
            for _ in range(runs):
                self._run(piece)
        if concurrent > 1:
            self._run_at_once(largest[:full], concurrent)

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
