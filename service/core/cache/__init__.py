"""The response cache: answers of models that opt in (`"response_cache": true` in config.json), keyed
by model version, options and input bytes (keys.py), held in this process (memory.py, the default) or in
Redis shared by every replica (shared.py). The executor asks it before preprocessing: a hit skips
decoding, resizing and inference. It never fails a request: a broken cache is a miss."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from service.core.cache.keys import Options, keys_for, model_identity
from service.core.cache.memory import MemoryBackend
from service.core.cache.rows import Rows, decode_rows, encode_rows
from service.core.cache.shared import RedisBackend
from service.lifecycle.records import ModelEntry
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

# Hash inputs larger than this off the event loop (blake2b runs at about 1 GB/s and releases the GIL).
_HASH_INLINE_BYTES = 4 * 1024 * 1024


@dataclass
class Lookup:
    """One request's keys and what the cache held for each input (None: a miss)."""

    keys: list[str]
    rows: list[Rows | None]

    @property
    def misses(self) -> list[int]:
        return [i for i, row in enumerate(self.rows) if row is None]


class ResponseCache:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._metrics = metrics
        self.backend: MemoryBackend | RedisBackend | None
        if settings.cache_url:
            self.backend = RedisBackend(
                settings.cache_url,
                settings.cache_ttl_s,
                settings.cache_timeout_ms / 1000,
                on_error=lambda operation: metrics.cache_error("redis", operation),
            )
        elif settings.cache_size_mb > 0:
            self.backend = MemoryBackend(int(settings.cache_size_mb * 1024 * 1024))
        else:
            self.backend = None

    def wanted(self, entry: ModelEntry, options: Options | None) -> bool:
        return (
            self.backend is not None
            and options is not None
            and entry.config is not None
            and entry.config.response_cache
        )

    async def lookup(
        self,
        entry: ModelEntry,
        input_kind: str,
        contents: Sequence[bytes | np.ndarray],
        options: Options | None,
    ) -> Lookup | None:
        """What the cache holds for these inputs of `entry`; None when the model does not cache or the
        request's options are not cacheable."""
        if not self.wanted(entry, options):
            return None
        assert self.backend is not None and options is not None
        started = time.monotonic()
        identity = model_identity(entry, input_kind)
        size = sum(c.nbytes if isinstance(c, np.ndarray) else len(c) for c in contents)
        if size > _HASH_INLINE_BYTES:
            keys = await asyncio.to_thread(keys_for, identity, options, contents)
        else:
            keys = keys_for(identity, options, contents)
        found = await self.backend.get_many(keys)
        rows: list[Rows | None] = []
        for value in found:
            try:
                rows.append(decode_rows(value) if value is not None else None)
            except ValueError:
                rows.append(None)
        hits = sum(row is not None for row in rows)
        seconds = time.monotonic() - started
        self._metrics.cache_lookups(self.backend.name, entry.name, hits, len(rows) - hits, seconds)
        return Lookup(keys, rows)

    async def store(self, lookup: Lookup, fresh: dict[int, Rows]) -> None:
        """Keep the rows just computed for the inputs at these positions of `lookup`."""
        if self.backend is None or not fresh:
            return
        items = [(lookup.keys[i], encode_rows(rows)) for i, rows in fresh.items()]
        stored = await self.backend.set_many(items)
        self._metrics.cache_stored(self.backend.name, stored)
        if isinstance(self.backend, MemoryBackend):
            self._metrics.cache_size(self.backend.name, self.backend.bytes)

    async def close(self) -> None:
        if self.backend is not None:
            await self.backend.close()
