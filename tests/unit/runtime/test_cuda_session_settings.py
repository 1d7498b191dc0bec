"""The CUDA session settings measured by the device check (bench/gpu): one intra-op thread per CUDA
session, a shared CUDA arena, CUDA graphs per bucket. Their effect on the session and provider options
is read back here without a GPU; the arena's registration with a stand-in for ORT's call."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from service.runtime.session import (
    CPU,
    CUDA,
    OrtRunner,
    RuntimeOptions,
    build_session_options,
    cuda_provider_options,
    intra_op_threads,
    nvidia_gpu_present,
    register_shared_arena,
)
from service.settings import Settings
from tests.tiny_model import ort_options, write_model

ENV_ALLOCATORS = "session.use_env_allocators"


def _entry(options: ort.SessionOptions, key: str) -> str | None:
    try:
        return options.get_session_config_entry(key)
    except Exception:  # ORT raises its own type for an entry that was never set
        return None


def test_a_cuda_session_gets_one_intra_op_thread_and_the_cpu_keeps_its_own() -> None:
    options = RuntimeOptions.from_settings(Settings(device="cpu", intra_op_threads=6))
    assert options.cuda_intra_op_threads == 1 and options.intra_op_threads == 6
    assert build_session_options(options, cuda=True).intra_op_num_threads == 1
    assert build_session_options(options).intra_op_num_threads == 6  # the CPU path as it was
    as_cpu = RuntimeOptions.from_settings(Settings(device="cpu", intra_op_threads=6, cuda_intra_op_threads=0))
    assert intra_op_threads(as_cpu, cuda=True) == 6
    assert build_session_options(as_cpu, cuda=True).intra_op_num_threads == 6


def test_a_cpu_runner_keeps_its_threads_and_says_how_many(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny")
    options = replace(ort_options("cpu"), intra_op_threads=2)
    runner = OrtRunner(folder / "model.onnx", options, ["probabilities"])
    assert runner.provider == CPU and runner.intra_op_threads == 2
    assert runner.session.get_session_options().intra_op_num_threads == 2


@pytest.mark.skipif(nvidia_gpu_present(), reason="this machine has a GPU")
def test_a_session_that_falls_back_from_cuda_gets_the_cpus_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """device auto asked for CUDA (as on a machine whose driver is there but not its libraries): the
    session it got runs on the CPU, and must not keep CUDA's one thread."""
    import service.runtime.session_create as session_create

    if CUDA not in ort.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider to fall back from")
    folder = write_model(tmp_path, "tiny")
    options = replace(ort_options("auto"), intra_op_threads=2)
    monkeypatch.setattr(session_create, "provider_list", lambda o: [(CUDA, cuda_provider_options(o)), CPU])
    runner = OrtRunner(folder / "model.onnx", options, ["probabilities"])
    assert runner.provider == CPU and runner.intra_op_threads == 2
    assert runner.session.get_session_options().intra_op_num_threads == 2


def test_the_shared_arena_is_off_by_default_and_on_only_asks_cuda_sessions_to_use_it() -> None:
    assert not Settings().cuda_shared_arena
    options = RuntimeOptions.from_settings(Settings(device="cpu"))
    assert _entry(build_session_options(options, cuda=True), ENV_ALLOCATORS) is None
    shared = RuntimeOptions.from_settings(Settings(device="cpu", cuda_shared_arena=True))
    assert _entry(build_session_options(shared, cuda=True), ENV_ALLOCATORS) == "1"
    assert _entry(build_session_options(shared), ENV_ALLOCATORS) is None  # the CPU's arenas stay its own


def test_the_shared_arena_is_registered_once_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []

    def register(provider: str, memory: Any, provider_options: dict[str, str], arena: Any) -> None:
        calls.append((provider, memory, provider_options, arena))
        if len(calls) > 1:
            raise RuntimeError("An allocator for this device has already been registered for sharing.")

    monkeypatch.setattr(ort, "create_and_register_allocator_v2", register)
    options = replace(
        RuntimeOptions.from_settings(Settings(device="cpu", cuda_device_id=1)), cuda_shared_arena=True
    )
    assert register_shared_arena(options) is True
    assert register_shared_arena(options) is False  # the second model's sessions share the first's
    provider, memory, provider_options, _ = calls[0]
    assert provider == CUDA and provider_options == {"device_id": "1"}
    assert memory.device_id == 1 and memory.name == "Cuda"
    assert memory.allocator_type == ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR


def test_a_failing_registration_is_not_mistaken_for_a_second_one(monkeypatch: pytest.MonkeyPatch) -> None:
    def register(*args: Any) -> None:
        raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")

    monkeypatch.setattr(ort, "create_and_register_allocator_v2", register)
    with pytest.raises(RuntimeError, match="no CUDA-capable device"):
        register_shared_arena(RuntimeOptions.from_settings(Settings(device="cpu", cuda_shared_arena=True)))


def test_cuda_graphs_per_bucket_are_off_by_default_and_reach_the_provider_options() -> None:
    assert "enable_cuda_graph" not in cuda_provider_options(
        RuntimeOptions.from_settings(Settings(device="cpu"))
    )
    graphs = RuntimeOptions.from_settings(Settings(device="cpu", cuda_graphs=True))
    assert cuda_provider_options(graphs)["enable_cuda_graph"] == "1"
