"""The in-process response cache: least recently used answers first out, bounded in bytes."""

from __future__ import annotations

from collections import OrderedDict

# Python's own cost per entry beyond the key and value bytes (dict slot, two bytes objects' headers).
_ENTRY_OVERHEAD = 200


class MemoryBackend:
    name = "memory"

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        found: list[bytes | None] = []
        for key in keys:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
            found.append(value)
        return found

    async def set_many(self, items: list[tuple[str, bytes]]) -> int:
        """Store what fits; returns the bytes stored. An answer larger than the whole cache is skipped."""
        stored = 0
        for key, value in items:
            size = _size(key, value)
            if size > self.max_bytes:
                continue
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= _size(key, old)
            while self._entries and self.bytes + size > self.max_bytes:
                old_key, old_value = self._entries.popitem(last=False)
                self.bytes -= _size(old_key, old_value)
            self._entries[key] = value
            self.bytes += size
            stored += len(value)
        return stored

    async def close(self) -> None:
        self._entries.clear()
        self.bytes = 0


def _size(key: str, value: bytes) -> int:
    return len(key) + len(value) + _ENTRY_OVERHEAD
