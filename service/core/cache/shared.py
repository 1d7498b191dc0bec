"""The response cache in Redis, shared by every replica (`EFFNET_CACHE_URL=redis://...`).

Redis is a helper, never a dependency of an answer: every call is bounded by `cache_timeout_ms`, and a
failure (down, slow, refused) serves the request without the cache. After a failure Redis is left
alone for `_RETRY_S` (no request pays the timeout again meanwhile), then tried again; one log line says
it became unavailable, one that it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

log = logging.getLogger(__name__)

_RETRY_S = 1.0


class RedisBackend:
    name = "redis"

    def __init__(
        self, url: str, ttl_s: int, timeout_s: float, on_error: Callable[[str], None] | None = None
    ) -> None:
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._on_error = on_error
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
        self._where = _safe_location(url)
        self._down_until = 0.0
        self._down_since: float | None = None

    @property
    def available(self) -> bool:
        """False while an outage is being waited out (lookups and stores are skipped)."""
        return time.monotonic() >= self._down_until

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        if not keys or not self.available:
            return [None] * len(keys)
        try:
            async with asyncio.timeout(self.timeout_s):
                values = await self._client.mget(keys)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("get", exc)
            return [None] * len(keys)
        self._worked()
        return [value if isinstance(value, bytes) else None for value in values]

    async def set_many(self, items: list[tuple[str, bytes]]) -> int:
        if not items or not self.available:
            return 0
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._client.pipeline(transaction=False) as pipe:
                    for key, value in items:
                        pipe.set(key, value, ex=self.ttl_s)
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("set", exc)
            return 0
        self._worked()
        return sum(len(value) for _, value in items)

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except (RedisError, OSError):
            pass

    def _failed(self, operation: str, exc: BaseException) -> None:
        if self._on_error is not None:
            self._on_error(operation)
        now = time.monotonic()
        self._down_until = now + _RETRY_S
        if self._down_since is None:
            self._down_since = now
            reason = type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc)[:200]
            log.warning(
                "event=cache_unavailable backend=redis at=%s operation=%s error=%r "
                "action=serving_without_cache retry_s=%g",
                self._where, operation, reason, _RETRY_S,
            )  # fmt: skip

    def _worked(self) -> None:
        if self._down_since is not None:
            log.warning(  # at the outage line's level, so the two are seen together
                "event=cache_available backend=redis at=%s outage_s=%.1f",
                self._where, time.monotonic() - self._down_since,
            )  # fmt: skip
            self._down_since = None


def _safe_location(url: str) -> str:
    """host:port/db of a Redis URL, without a password."""
    location = url.split("://", 1)[-1]
    return location.rsplit("@", 1)[-1]
