"""The shared memory payloads cross through: one slab the engine creates (and removes), split into one
part per front. A front allocates in its own part only (`Region`: first fit, merged on free), writes a
payload once and sends its offset; the engine reads it in place. A full part is overload."""

from __future__ import annotations

import bisect
import contextlib
from multiprocessing import resource_tracker, shared_memory

import numpy as np

ALIGN = 64


class Slab:
    """The shared memory itself: created by the engine, attached by the fronts."""

    def __init__(self, memory: shared_memory.SharedMemory, owner: bool) -> None:
        self._memory = memory
        self.owner = owner
        self.name = memory.name
        self.size = memory.size
        assert memory.buf is not None
        self.buffer = np.frombuffer(memory.buf, dtype=np.uint8)

    @classmethod
    def create(cls, size: int) -> Slab:
        return cls(shared_memory.SharedMemory(create=True, size=size), owner=True)

    @classmethod
    def attach(cls, name: str) -> Slab:
        memory = shared_memory.SharedMemory(name=name)
        # The engine owns it: a front's resource tracker must not remove it when the front exits
        # (Python 3.11 registers every attachment; 3.13's track=False says the same).
        resource_tracker.unregister(memory._name, "shared_memory")  # type: ignore[attr-defined]
        return cls(memory, owner=False)

    def part(self, index: int, parts: int) -> tuple[int, int]:
        """Front `index`'s part of `parts`: (start, size), aligned."""
        size = self.size // parts // ALIGN * ALIGN
        return index * size, size

    def view(self, offset: int, length: int) -> np.ndarray:
        return self.buffer[offset : offset + length]

    def close(self) -> bool:
        """Remove the memory's name (as the owner: nothing is left in /dev/shm, and nobody attaches
        again), then unmap it. A view still held, such as a batch reading its rows, keeps the mapping
        until that view goes: returns whether it was unmapped now (closing again retries)."""
        self.__dict__.pop("buffer", None)
        if self.owner:
            self.owner = False
            with contextlib.suppress(FileNotFoundError):
                self._memory.unlink()
        try:
            self._memory.close()
        except BufferError:
            return False
        return True


class Region:
    """One front's allocator over [start, start + size) of the slab; not shared, not thread-safe."""

    def __init__(self, start: int, size: int) -> None:
        self.start, self.size = start, size
        self._free: list[tuple[int, int]] = [(start, size)]  # (offset, length), sorted, merged
        self.used = 0

    def alloc(self, length: int) -> int | None:
        """An offset of `length` free bytes, or None when no free block is that large."""
        need = max(ALIGN, -(-length // ALIGN) * ALIGN)
        for i, (offset, free) in enumerate(self._free):
            if free >= need:
                if free == need:
                    del self._free[i]
                else:
                    self._free[i] = (offset + need, free - need)
                self.used += need
                return offset
        return None

    def free(self, offset: int, length: int) -> None:
        need = max(ALIGN, -(-length // ALIGN) * ALIGN)
        self.used -= need
        i = bisect.bisect_left(self._free, (offset, 0))
        self._free.insert(i, (offset, need))
        if i + 1 < len(self._free) and offset + need == self._free[i + 1][0]:  # merge with the next
            self._free[i] = (offset, need + self._free[i + 1][1])
            del self._free[i + 1]
        if i > 0 and self._free[i - 1][0] + self._free[i - 1][1] == offset:  # and with the previous
            previous = self._free[i - 1]
            self._free[i - 1] = (previous[0], previous[1] + self._free[i][1])
            del self._free[i]
