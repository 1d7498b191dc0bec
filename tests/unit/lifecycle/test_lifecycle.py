"""Model lifecycle with real (tiny) ONNX Runtime sessions: load, swap, unload, policies, budget, races."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
from pathlib import Path

import pytest

from service.errors import LoadFailed, NotReady, Overloaded, ServiceError, UnknownModel
from service.settings import Settings
from tests.engine_calls import classify
from tests.tiny_model import png, write_model
from tests.unit.conftest import EngineStarter
from tests.waiting import until


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    for name in ("alpha", "beta", "gamma", "delta"):
        write_model(tmp_path, name)
    return tmp_path


async def test_explicit_mode_loads_listed_models_and_the_rest_on_request(
    repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(repository, model_control="explicit", models="alpha")
    assert engine.ready
    assert (await classify(engine, "alpha", [png()], 1)).model.version == 1
    with pytest.raises(NotReady, match="load it through the repository API"):
        await classify(engine, "beta", [png()], 1)
    index = {(row.name, row.version): row for row in engine.repository_index()}
    assert index[("alpha", "1")].state == "READY"
    assert ("beta", "") in index  # never loaded: its name alone
    await engine.load_model("beta")
    assert (await classify(engine, "beta", [png((5, 5, 250))], 1)).predictions[0][0].label == "blue"
    await engine.unload_model("beta")
    with pytest.raises(NotReady, match=r"not loaded \(unloaded\)"):
        await classify(engine, "beta", [png()], 1)
    row = next(r for r in engine.repository_index() if r.name == "beta")
    assert (row.version, row.state, row.reason) == ("1", "UNAVAILABLE", "unloaded")
    assert [r.name for r in engine.repository_index(ready_only=True)] == ["alpha"]
    with pytest.raises(UnknownModel):
        await engine.load_model("nope")


async def test_load_and_unload_refused_outside_explicit_mode(
    repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(repository, models="alpha")
    with pytest.raises(NotReady, match="model control mode 'none'"):
        await engine.load_model("alpha")
    with pytest.raises(NotReady, match="--model-control explicit"):
        await engine.unload_model("alpha")


async def test_new_version_swaps_in_without_a_failed_request(
    repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(repository, model_control="explicit", models="alpha")
    seen: list[int] = []
    errors: list[Exception] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            try:
                outcome = await classify(engine, "alpha", [png()], 1)
                seen.append(outcome.model.version or 0)
            except Exception as exc:  # noqa: BLE001 - any failure is the test's failure
                errors.append(exc)

    clients = [asyncio.create_task(client()) for _ in range(4)]
    await until(lambda: len(seen) >= 8, what="version 1 answering")
    write_model(repository, "alpha", version=2)
    await engine.load_model("alpha")
    swapped = len(seen)
    await until(lambda: len(seen) >= swapped + 20, what="answers after the swap")
    stop.set()
    await asyncio.gather(*clients)
    assert not errors
    assert seen[0] == 1 and seen[-1] == 2 and set(seen) == {1, 2}
    first_two = seen.index(2)
    assert all(v == 2 for v in seen[first_two + 8 :])  # the old one takes no new work after the swap
    record = engine.lookup("alpha")
    await until(lambda: record.versions[1].state.value == "unloaded", what="version 1 released")
    assert record.versions[1].runner is None
    with pytest.raises(UnknownModel, match="ready versions: 2"):
        await classify(engine, "alpha", [png()], 1, version=1)


async def test_a_corrupt_new_version_fails_alone_and_the_old_one_serves(
    repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(repository, model_control="explicit", models="alpha")
    folder = write_model(repository, "alpha", version=2)
    (folder / "labels.txt").unlink()
    with pytest.raises(LoadFailed, match="failed to load 'alpha': version 2: .*labels.txt"):
        await engine.load_model("alpha")
    assert (await classify(engine, "alpha", [png()], 1)).model.version == 1
    rows = {r.version: r for r in engine.repository_index() if r.name == "alpha"}
    assert rows["2"].state == "UNAVAILABLE" and "labels.txt" in rows["2"].reason
    assert rows["1"].state == "READY"
    (folder / "labels.txt").write_text("red\ngreen\nblue\ngrey\n")  # fixed: the next load takes it
    await engine.load_model("alpha")
    assert (await classify(engine, "alpha", [png()], 1)).model.version == 2


async def test_version_policy_all_serves_every_version_by_request(
    repository: Path, start_engine: EngineStarter
) -> None:
    write_model(repository, "alpha", version=2)
    (repository / "alpha" / "config.json").write_text(json.dumps({"version_policy": {"all": True}}))
    engine = await start_engine(repository, models="alpha")
    assert (await classify(engine, "alpha", [png()], 1)).model.version == 2
    assert (await classify(engine, "alpha", [png()], 1, version=1)).model.version == 1
    with pytest.raises(UnknownModel, match="no ready version 3.*ready versions: 1, 2"):
        await classify(engine, "alpha", [png()], 1, version=3)
    versions = engine.describe(engine.lookup("alpha")).versions
    assert [(v.version, v.ready) for v in versions] == [(1, True), (2, True)]
    assert all(v.memory_bytes and v.load_seconds is not None for v in versions)


async def test_config_overrides_reach_the_batcher_and_a_bad_config_fails_only_its_model(
    repository: Path, start_engine: EngineStarter
) -> None:
    (repository / "alpha" / "config.json").write_text(json.dumps({"max_batch_size": 3, "instances": 2}))
    (repository / "beta" / "config.json").write_text('{"version_policy": {"latest": 0}}')
    engine = await start_engine(repository, models="alpha,beta")
    batcher = engine.ready_version("alpha").batcher
    assert batcher is not None and batcher.config.max_batch_size == 3 and batcher.config.instances == 2
    with pytest.raises(NotReady, match="config.json is invalid"):
        await classify(engine, "beta", [png()], 1)
    assert "config.json" in engine.readiness()["beta"]
    assert not engine.ready


async def test_unload_waits_for_requests_in_flight(repository: Path, start_engine: EngineStarter) -> None:
    engine = await start_engine(repository, model_control="explicit", models="alpha")
    entry = engine.ready_version("alpha")
    held = await engine.lifecycle.leases.acquire(engine.lookup("alpha"), None, None)  # a request at work
    unloading = asyncio.create_task(engine.unload_model("alpha"))
    await until(lambda: entry.state.value == "unloading", what="the version unloading")
    await asyncio.sleep(0.1)  # the unload now waits for the request: it must not finish without it
    assert not unloading.done()
    with pytest.raises(NotReady, match="unloading"):
        await classify(engine, "alpha", [png()], 1)
    assert held.batcher is not None
    await held.batcher.submit([__import__("numpy").zeros((3, 16, 16), "uint8")])  # still answered
    engine.lifecycle.leases.release(held)
    await asyncio.wait_for(unloading, 5)
    assert entry.runner is None and entry.state.value == "unloaded"


async def test_simultaneous_loads_load_once(repository: Path, start_engine: EngineStarter) -> None:
    engine = await start_engine(repository, model_control="explicit")
    await asyncio.gather(*(engine.load_model("gamma") for _ in range(5)))
    assert engine.metrics.model_loads.labels("gamma", "1", "success")._value.get() == 1


async def test_memory_budget_loads_lazily_and_evicts_the_least_recently_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, start_engine: EngineStarter
) -> None:
    # Deterministic sizes: resident-set growth is noisy within one test process (the first load also
    # starts ONNX Runtime's thread pools), so RSS reads flat and every model counts its graph file's
    # 12 MB (the lifecycle's floor); the first-load estimate is the file alone.
    monkeypatch.setattr("service.lifecycle.loading.rss_bytes", lambda: 0)
    monkeypatch.setattr("service.lifecycle.budget._ESTIMATE_FACTOR", 1.2)
    monkeypatch.setattr("service.lifecycle.budget._ESTIMATE_BASE", 0)
    repository = tmp_path / "big"
    for name in ("alpha", "beta", "gamma"):
        write_model(repository, name, padding_bytes=12 << 20)
    budget_mb = 30  # two 12 MB models fit (with a 14.4 MB estimate for the next), three do not
    engine = await start_engine(repository, memory_budget_mb=budget_mb)
    assert engine.ready and not any(r.loaded() for r in engine.lifecycle.records.values())
    for name in ("alpha", "beta", "alpha", "gamma"):
        await classify(engine, name, [png()], 1)
        await asyncio.sleep(0.01)
    loaded = {n for n, r in engine.lifecycle.records.items() if r.loaded()}
    assert loaded == {"alpha", "gamma"}  # beta was the least recently used
    assert engine.lifecycle.memory_in_use() <= budget_mb << 20
    assert engine.metrics.model_unloads.labels("beta", "evicted")._value.get() == 1
    assert (await classify(engine, "beta", [png()], 1)).model.name == "beta"  # loads again lazily


async def test_a_model_that_cannot_fit_gets_overloaded_with_a_reason(
    repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(repository, memory_budget_mb=1)
    with pytest.raises(Overloaded, match="more than the whole memory budget"):
        await classify(engine, "alpha", [png()], 1)
    # Not a failure of the model: with room it would load.
    assert engine.lookup("alpha").versions[1].state.value == "available"


async def test_poll_mode_picks_up_new_versions_and_removals(
    repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(repository, model_control="poll", poll_interval_s=0.1)
    write_model(repository, "alpha", version=2)
    shutil.rmtree(repository / "delta")
    alpha, delta = engine.lookup("alpha"), engine.lookup("delta")
    await until(lambda: getattr(alpha.serving(), "version", None) == 2, what="alpha version 2 serving")
    await until(lambda: delta.serving() is None, what="delta unloaded")
    assert (await classify(engine, "alpha", [png()], 1)).model.version == 2
    with pytest.raises(NotReady, match="removed from the repository"):
        await classify(engine, "delta", [png()], 1)


async def test_random_load_unload_and_infer_never_hang_or_answer_wrongly(
    repository: Path, start_engine: EngineStarter
) -> None:
    """A randomised stress test: control calls and requests interleave; every request either answers
    with the right label from a version that exists, or fails with a clean service error."""
    engine = await start_engine(repository, model_control="explicit", models="alpha,beta")
    rng = random.Random(7)
    outcomes: dict[str, int] = {"ok": 0, "clean_error": 0}

    async def request() -> None:
        name = rng.choice(["alpha", "beta", "gamma"])
        try:
            outcome = await classify(engine, name, [png((5, 250, 5))], 1)
            assert outcome.model.name == name and outcome.predictions[0][0].label == "green"
            outcomes["ok"] += 1
        except (NotReady, UnknownModel):
            outcomes["clean_error"] += 1

    async def control() -> None:
        action = rng.choice(["load", "unload"])
        name = rng.choice(["alpha", "beta", "gamma"])
        try:
            await (engine.load_model(name) if action == "load" else engine.unload_model(name))
        except ServiceError:
            pass

    tasks = []
    for _ in range(150):
        tasks.append(asyncio.create_task(request() if rng.random() < 0.8 else control()))
        if rng.random() < 0.3:
            await asyncio.sleep(0.005)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    assert outcomes["ok"] > 0 and sum(outcomes.values()) + 0 <= 150
    for record in engine.lifecycle.records.values():
        assert all(e.in_flight == 0 for e in record.versions.values())


async def test_a_changed_config_reloads_the_version_beside_the_old_one(
    repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(repository, model_control="explicit", models="alpha")
    before = engine.ready_version("alpha")
    (repository / "alpha" / "config.json").write_text(json.dumps({"max_batch_size": 2}))
    await engine.load_model("alpha")
    after = engine.ready_version("alpha")
    assert after is not before and after.version == 1
    assert after.batcher is not None and after.batcher.config.max_batch_size == 2
    assert (await classify(engine, "alpha", [png()], 1)).model is after


def test_an_empty_hash_cache_setting_means_none(tmp_path: Path) -> None:
    assert Settings(repository=tmp_path, hash_cache="").hash_cache is None


def test_a_reload_that_grew_the_process_less_counts_the_largest_measurement() -> None:
    """A load that reuses heap an unload left behind grows the process by less than the model holds:
    a version's size is the largest any of its loads with that config measured."""
    from service.lifecycle.configs import DEFAULT_CONFIG, ModelConfig
    from service.lifecycle.records import ModelEntry

    entry = ModelEntry("alpha", 1, None)
    assert entry.measured_load(160 << 20, DEFAULT_CONFIG) == 160 << 20
    assert entry.measured_load(120 << 20, DEFAULT_CONFIG) == 160 << 20  # reused freed heap
    assert entry.measured_load(170 << 20, DEFAULT_CONFIG) == 170 << 20
    other = ModelConfig(instances=1)
    assert entry.measured_load(90 << 20, other) == 90 << 20, "another config is another size"
