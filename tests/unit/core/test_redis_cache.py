"""The response cache in a real Redis (Debian's redis-server, started by the test): shared by two
engines as by two replicas; killed mid-run, every request is still answered (without the cache, one
log line, errors counted); brought back on the same port, the cache works again."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from service.core.engine import Engine
from tests.engine_calls import classify
from tests.redis_process import RedisProcess
from tests.tiny_model import png, write_model
from tests.unit.conftest import EngineStarter


def repository(folder: Path) -> Path:
    write_model(folder, "tiny")
    (folder / "tiny" / "config.json").write_text(json.dumps({"response_cache": True}))
    return folder


def errors(engine: Engine) -> float:
    text = engine.metrics.render().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('effnet_cache_errors_total{backend="redis"')
    )


async def test_two_replicas_share_answers_through_redis(
    tmp_path: Path, start_engine: EngineStarter, redis_server: RedisProcess
) -> None:
    folder = repository(tmp_path)
    first = await start_engine(folder, cache_url=redis_server.url)
    second = await start_engine(folder, cache_url=redis_server.url)
    images = [png((250, 5, 5)), png((5, 250, 5))]
    miss = await classify(first, "tiny", images, top_k=4)
    hit = await classify(second, "tiny", images, top_k=4)
    assert miss.cached == (False, False) and hit.cached == (True, True)
    assert hit.predictions == miss.predictions
    assert redis_server.keys() == 2
    text = second.metrics.render().decode()
    assert 'effnet_cache_lookups_total{backend="redis",model="tiny",result="hit"} 2.0' in text


async def test_redis_killed_mid_run_serves_without_the_cache_and_recovers(
    tmp_path: Path, start_engine: EngineStarter, redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await start_engine(repository(tmp_path), cache_url=redis_server.url, cache_timeout_ms=200)
    image = png((250, 5, 5))
    expected = (await classify(engine, "tiny", [image], top_k=4)).predictions
    assert (await classify(engine, "tiny", [image])).cached == (True,)

    redis_server.kill()
    caplog.set_level(logging.INFO, logger="service.core.cache.shared")
    answers = await asyncio.gather(*(classify(engine, "tiny", [image], top_k=4) for _ in range(20)))
    assert all(a.predictions == expected and a.cached == (False,) for a in answers)
    assert errors(engine) >= 1
    down = [r for r in caplog.records if "event=cache_unavailable" in r.getMessage()]
    assert len(down) == 1, "one log line per outage"

    redis_server.start()  # the same port: the engine reconnects by itself
    async with asyncio.timeout(30):
        while True:  # after the outage pause, lookups reach Redis again
            outcome = await classify(engine, "tiny", [image], top_k=4)
            assert outcome.predictions == expected
            if outcome.cached == (True,):
                break
            await asyncio.sleep(0.2)
    assert any("event=cache_available" in r.getMessage() for r in caplog.records)


async def test_a_slow_redis_costs_at_most_the_timeout(
    tmp_path: Path, start_engine: EngineStarter, redis_server: RedisProcess
) -> None:
    """Redis stopped (SIGSTOP: connections open, nothing answers) is a timeout, then a pause: the
    request is answered without the cache."""
    import signal

    engine = await start_engine(repository(tmp_path), cache_url=redis_server.url, cache_timeout_ms=100)
    image = png((5, 5, 250))
    await classify(engine, "tiny", [image])
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)
    try:
        outcome = await asyncio.wait_for(classify(engine, "tiny", [image]), 10)
        assert outcome.cached == (False,) and outcome.predictions[0][0].label == "blue"
        assert errors(engine) >= 1
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
