"""The GPU path's copies and streams (service/runtime/device.py), on the CPU with a stand-in for CuPy:
which copies are made, on which stream and device, and how often the stream is waited for."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from service.runtime.device import (
    MEMCPY_DEFAULT,
    Copy,
    DeviceContext,
    RowLoader,
    contiguous_runs,
    ensure_cupy_cache_dir,
)

ROW = (3, 4, 4)
ROW_BYTES = 48


class DeviceRow:
    """A device array's surface: a C-contiguous (or strided) uint8 row at an address."""

    def __init__(
        self, ptr: int, shape: tuple[int, ...] = ROW, strides: tuple[int, ...] | None = None
    ) -> None:
        self.__cuda_array_interface__ = {
            "shape": shape, "typestr": "|u1", "data": (ptr, False), "strides": strides, "version": 3,
        }  # fmt: skip


class FakeCupy:
    """What DeviceContext and RowLoader use of CuPy, recording the device current at each call."""

    def __init__(self) -> None:
        self.current = 0
        self.events: list[tuple[Any, ...]] = []
        fake = self

        @contextlib.contextmanager
        def device(index: int) -> Iterator[None]:
            before, fake.current = fake.current, index
            try:
                yield
            finally:
                fake.current = before

        class Stream:
            def __init__(self, non_blocking: bool = False) -> None:
                self.ptr = 0x1000 + len(fake.events)
                self.non_blocking = non_blocking
                self.synchronized = 0
                fake.events.append(("stream", fake.current, non_blocking))

            def __enter__(self) -> Stream:
                return self

            def __exit__(self, *exc: object) -> None:
                return None

            def synchronize(self) -> None:
                self.synchronized += 1

        def memcpy(dst: int, src: int, size: int, kind: int, stream: int) -> None:
            fake.events.append(("memcpy", fake.current, dst, src, size, kind, stream))

        def memcpy_2d(*args: int) -> None:
            fake.events.append(("memcpy2d", fake.current, *args))

        self.cuda = SimpleNamespace(
            Device=device, Stream=Stream, runtime=SimpleNamespace(memcpyAsync=memcpy, memcpy2DAsync=memcpy_2d)
        )

    def empty(self, shape: tuple[int, ...], dtype: Any = None) -> Any:
        self.events.append(("empty", self.current, shape))
        return np.empty(shape, dtype)

    def asarray(self, item: Any) -> Any:
        return item

    def ascontiguousarray(self, item: Any) -> DeviceRow:
        self.events.append(("contiguous", self.current))
        return DeviceRow(0x9000)


@pytest.fixture
def cupy() -> FakeCupy:
    return FakeCupy()


@pytest.fixture
def loader(cupy: FakeCupy) -> RowLoader:
    context = DeviceContext(1, cupy=cupy)
    return RowLoader(context, np.zeros((8, *ROW), np.uint8), dst_ptr=1_000_000, row_bytes=ROW_BYTES)


def copies(cupy: FakeCupy) -> list[tuple[int, int, int]]:
    return [(e[2], e[3], e[4]) for e in cupy.events if e[0] == "memcpy"]


def test_contiguous_rows_become_runs() -> None:
    rows = [(0, 100), (1, 148), (2, 196), (3, 500), (5, 548), (4, 900)]
    assert contiguous_runs(rows, 48) == [(0, 100, 3), (3, 500, 1), (4, 900, 1), (5, 548, 1)]
    assert contiguous_runs([], 48) == []


def test_a_decoded_batchs_rows_go_in_one_copy(loader: RowLoader, cupy: FakeCupy) -> None:
    base = 0x50_0000
    made = loader.load([DeviceRow(base + i * ROW_BYTES) for i in range(5)])
    assert made == [Copy(1_000_000, base, 5 * ROW_BYTES)]
    assert copies(cupy) == [(1_000_000, base, 5 * ROW_BYTES)]
    assert loader.context.stream.synchronized == 1


def test_rows_of_two_batches_go_in_two_copies(loader: RowLoader) -> None:
    first, second = 0x50_0000, 0x90_0000
    rows = [DeviceRow(first), DeviceRow(first + ROW_BYTES), DeviceRow(second), DeviceRow(second + ROW_BYTES)]
    assert loader.plan(rows) == [
        Copy(1_000_000, first, 2 * ROW_BYTES),
        Copy(1_000_000 + 2 * ROW_BYTES, second, 2 * ROW_BYTES),
    ]


def test_only_the_n_host_rows_travel_not_the_bucket(loader: RowLoader, cupy: FakeCupy) -> None:
    rows = [np.full(ROW, v, np.uint8) for v in (7, 8, 9)]
    made = loader.load(rows)
    host = int(loader.host.ctypes.data)
    assert made == [Copy(1_000_000, host, 3 * ROW_BYTES)]  # 3 rows of an 8-row bucket
    np.testing.assert_array_equal(loader.host[:3, 0, 0, 0], [7, 8, 9])
    stacked = loader.plan(np.stack(rows + rows))
    assert stacked == [Copy(1_000_000, host, 6 * ROW_BYTES)]


def test_mixed_host_and_device_rows_are_copied_by_runs(loader: RowLoader) -> None:
    host = int(loader.host.ctypes.data)
    rows = [DeviceRow(0x50_0000), np.ones(ROW, np.uint8), np.ones(ROW, np.uint8), DeviceRow(0x70_0000)]
    assert loader.plan(rows) == [
        Copy(1_000_000, 0x50_0000, ROW_BYTES),
        Copy(1_000_000 + ROW_BYTES, host + ROW_BYTES, 2 * ROW_BYTES),
        Copy(1_000_000 + 3 * ROW_BYTES, 0x70_0000, ROW_BYTES),
    ]


def test_a_strided_device_row_is_made_contiguous_on_the_device(loader: RowLoader, cupy: FakeCupy) -> None:
    strided = DeviceRow(0x50_0000, strides=(32, 8, 1))  # rows padded: not one block of 48 bytes
    assert loader.load([strided]) == [Copy(1_000_000, 0x9000, ROW_BYTES)]
    assert ("contiguous", 1) in cupy.events and loader._keep == []


def test_everything_happens_on_the_models_device_not_the_current_one(cupy: FakeCupy) -> None:
    cupy.current = 0
    context = DeviceContext(3, cupy=cupy)
    assert cupy.events[0] == ("stream", 3, True)  # a non-blocking stream, made on device 3
    context.empty((2, 3))
    context.copy([Copy(10, 20, 30)])
    context.copy_2d(1, 2, 3, 4, 5, 6)
    assert ("empty", 3, (2, 3)) in cupy.events
    assert ("memcpy", 3, 10, 20, 30, MEMCPY_DEFAULT, context.stream_ptr) in cupy.events
    assert ("memcpy2d", 3, 1, 2, 3, 4, 5, 6, MEMCPY_DEFAULT, context.stream_ptr) in cupy.events
    assert context.stream_ptr != 0  # never the legacy default stream
    assert cupy.current == 0  # and the thread's current device is left as it was


def test_pinned_host_memory_is_allocated_on_the_models_device(
    cupy: FakeCupy, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []

    def empty_pinned(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        seen.append(cupy.current)
        return np.empty(shape, dtype)

    monkeypatch.setitem(sys.modules, "cupyx", SimpleNamespace(empty_pinned=empty_pinned))
    DeviceContext(2, cupy=cupy).pinned_empty((4, 3))
    assert seen == [2]


def test_the_cupy_kernel_cache_goes_somewhere_writable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    home = tmp_path / "home-is-a-file"  # like the image user's /nonexistent: nothing can be made there
    home.write_text("")
    monkeypatch.setattr(os.path, "expanduser", lambda path: path.replace("~", str(home)))
    environ: dict[str, str] = {}
    chosen = ensure_cupy_cache_dir(environ)
    assert environ["CUPY_CACHE_DIR"] == chosen and os.access(chosen, os.W_OK)
    assert not chosen.startswith(str(home))
    assert ensure_cupy_cache_dir({"CUPY_CACHE_DIR": str(tmp_path)}) == str(tmp_path)  # as set: kept
