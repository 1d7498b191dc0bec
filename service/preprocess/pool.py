"""The preprocessing thread pool: decoding and resizing run here, off the event loop, overlapping the
batch that is running. Bounded across all requests and models: beyond `max_pending_preprocess` images
waiting or being worked on, a request is refused at once (503) instead of queueing without end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from service.errors import Overloaded, ServiceError

T = TypeVar("T")


class PreprocessPool:
    def __init__(self, workers: int, max_pending: int) -> None:
        self.workers = workers
        self._max_pending = max_pending
        self._pending = 0
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="preprocess")

    @property
    def backlog(self) -> int:
        """Images being preprocessed or waiting for a thread, across all models."""
        return self._pending

    async def run(self, function: Callable[..., T], jobs: list[tuple[Any, ...]]) -> list[tuple[T, float]]:
        """`function(*job)` for each job, in order, each with its seconds. The first error by image order
        is raised, naming the image when there are several. Raises Overloaded beyond the bound."""
        if self._pending + len(jobs) > self._max_pending:
            raise Overloaded(f"{self._pending} images are waiting to be decoded", retry_after=1.0)
        loop = asyncio.get_running_loop()
        self._pending += len(jobs)
        try:
            futures = [loop.run_in_executor(self._executor, _timed, function, job) for job in jobs]
            done = await asyncio.gather(*futures, return_exceptions=True)
        finally:
            self._pending -= len(jobs)
        results: list[tuple[T, float]] = []
        for index, item in enumerate(done):
            if isinstance(item, ServiceError):
                if len(jobs) > 1:
                    item.message = f"image {index}: {item.message}"
                    item.args = (item.message,)
                raise item
            if isinstance(item, BaseException):
                raise item
            results.append(item)
        return results

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _timed(function: Callable[..., T], job: tuple[Any, ...]) -> tuple[T, float]:
    start = time.monotonic()
    result = function(*job)
    return result, time.monotonic() - start
