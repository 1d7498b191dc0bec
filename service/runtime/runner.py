"""What the batcher runs a model's batches on. `Runner` is the whole contract (OrtRunner's); a runner that
only runs stacked batches (`BatchRunner`: test stand-ins, simple runtimes) is made one by `as_runner`."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

import numpy as np


class BatchRunner(Protocol):
    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Blocking; called in the batcher's worker thread. Every output's first axis is the batch.

        Callers keep views into the returned arrays, so a runner must not reuse them for later batches.
        """
        ...


class Runner(BatchRunner, Protocol):
    def run_items(
        self,
        items: Sequence[np.ndarray],
        extra: Sequence[str] = (),
        feeds: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """A batch given as its rows (the runner stacks or binds them itself). `extra`: outputs beyond the
        usual ones (features, maps) with the inputs they take in `feeds`; a runner that cannot compute
        them raises ValueError."""
        ...

    def busy(self) -> AbstractContextManager[bool]:
        """Held while the batcher's worker decodes a batch's images on its own core, so that the runner
        knows a batch starting meanwhile is not alone. Yields whether nothing else was busy."""
        ...


class Stacking:
    """A BatchRunner as a Runner: rows stacked into one batch, no extra outputs, no notion of busy."""

    def __init__(self, inner: BatchRunner) -> None:
        self.inner = inner

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.inner.run(batch)

    def run_items(
        self,
        items: Sequence[np.ndarray],
        extra: Sequence[str] = (),
        feeds: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        if extra:
            raise ValueError(f"this runner cannot compute {list(extra)}")
        return self.inner.run(np.stack(items))

    @contextlib.contextmanager
    def busy(self) -> Iterator[bool]:
        yield True


def as_runner(runner: Runner | BatchRunner) -> Runner:
    """`runner` itself where it keeps the whole contract, else its Stacking."""
    if callable(getattr(runner, "run_items", None)) and callable(getattr(runner, "busy", None)):
        return runner  # type: ignore[return-value]
    return Stacking(runner)
