"""ONNX Runtime sessions: provider choice, warm-up sizes, run()."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from service.runtime.buffers import bucket_for
from service.runtime.session import (
    CPU,
    CUDA,
    GraphIds,
    OrtRunner,
    RuntimeOptions,
    RuntimeUnavailable,
    build_session_options,
    cuda_provider_options,
    fast_path,
    nvidia_gpu_present,
    provider_list,
    warmup_batch_sizes,
)
from service.settings import Settings
from tests.tiny_model import SIZE, ort_options, write_model


def test_cpu_is_asked_for_cpu_only() -> None:
    assert provider_list(ort_options("cpu")) == [CPU]


@pytest.mark.skipif(nvidia_gpu_present(), reason="this machine has a GPU")
def test_auto_without_a_gpu_uses_cpu_and_cuda_fails_loudly(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny")
    assert provider_list(ort_options("auto")) == [CPU]
    runner = OrtRunner(folder / "model.onnx", ort_options("auto"), ["logits", "probabilities"])
    assert runner.provider == CPU
    with pytest.raises(RuntimeUnavailable, match="cuda"):
        OrtRunner(folder / "model.onnx", ort_options("cuda"), ["logits", "probabilities"])


def test_run_returns_named_outputs_per_row(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny")
    runner = OrtRunner(folder / "model.onnx", ort_options("cpu"), ["logits", "probabilities"])
    batch = np.zeros((3, 3, SIZE, SIZE), np.uint8)
    outputs = runner.run(batch)
    assert outputs["logits"].shape == (3, 4) and outputs["probabilities"].shape == (3, 4)
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    assert runner.warm_up((3, SIZE, SIZE), [1, 2], runs=1) >= 0


def test_warmup_covers_powers_of_two_up_to_the_batch_size() -> None:
    assert warmup_batch_sizes(1) == [1]
    assert warmup_batch_sizes(4) == [1, 2, 4]
    assert warmup_batch_sizes(6) == [1, 2, 4, 6]
    assert warmup_batch_sizes(32) == [1, 2, 4, 8, 16, 32]


# --- batch buckets and IO binding (the CUDA fast path, run here on the CPU provider) ---


def fast_path_options(device: str = "cpu", **changes: object) -> RuntimeOptions:
    base = dict(batch_buckets="on", io_binding="on", buffer_sets=2)
    base.update(changes)
    return replace(ort_options(device), **base)  # type: ignore[arg-type]


def reference(folder: Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    return OrtRunner(folder / "model.onnx", ort_options("cpu"), ["logits", "probabilities"]).run(batch)


def test_bucket_is_the_smallest_warmed_size_that_holds_the_batch() -> None:
    buckets = [1, 2, 4, 8, 12]
    assert [bucket_for(n, buckets) for n in (1, 2, 3, 4, 5, 8, 9, 12)] == [1, 2, 4, 4, 8, 8, 12, 12]
    assert bucket_for(13, buckets) == 13  # above the largest: run as is
    assert bucket_for(3, []) == 3


def test_cpu_defaults_keep_todays_path() -> None:
    runner_options = ort_options("cpu")
    assert (runner_options.batch_buckets, runner_options.io_binding) == ("auto", "auto")


def test_cpu_default_runner_neither_pads_nor_binds(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny")
    runner = OrtRunner(folder / "model.onnx", ort_options("cpu"), ["logits", "probabilities"])
    runner.warm_up((3, SIZE, SIZE), [1, 2, 4], runs=1)
    assert not runner.use_buckets and not runner.use_io_binding and runner.buckets == []


@pytest.mark.parametrize("io_binding", ["on", "off"])
def test_padded_batches_answer_exactly_their_own_rows(tmp_path: Path, io_binding: str) -> None:
    folder = write_model(tmp_path, "tiny")
    runner = OrtRunner(
        folder / "model.onnx", fast_path_options(io_binding=io_binding), ["logits", "probabilities"]
    )
    runner.warm_up((3, SIZE, SIZE), warmup_batch_sizes(8), runs=1)
    assert runner.buckets == [1, 2, 4, 8]
    rng = np.random.default_rng(1)
    for n in (1, 3, 5, 8, 2, 7):
        rows = [rng.integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8) for _ in range(n)]
        got = runner.run_items(rows)
        want = reference(folder, np.stack(rows))
        for name in ("logits", "probabilities"):
            assert got[name].shape[0] == n
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


def test_bound_outputs_are_fresh_arrays_each_batch(tmp_path: Path) -> None:
    """The batcher hands out views into a batch's outputs: a later batch must not overwrite them."""
    folder = write_model(tmp_path, "tiny")
    runner = OrtRunner(folder / "model.onnx", fast_path_options(), ["logits", "probabilities"])
    runner.warm_up((3, SIZE, SIZE), [1, 2, 4], runs=1)
    first = runner.run_items([np.full((3, SIZE, SIZE), 10, np.uint8)] * 3)
    kept = first["logits"].copy()
    runner.run_items([np.full((3, SIZE, SIZE), 200, np.uint8)] * 3)
    np.testing.assert_array_equal(first["logits"], kept)


class _BucketRecorder:
    """A session that notes which bucket's session ran, and the batch size it was fed (plain runs)."""

    def __init__(self, inner: object, bucket: int, seen: list[tuple[int, int | None]]) -> None:
        self.inner, self.bucket, self.seen = inner, bucket, seen

    def run(self, names: list[str], feeds: dict[str, np.ndarray], *args: object) -> object:
        self.seen.append((self.bucket, next(iter(feeds.values())).shape[0]))
        return self.inner.run(names, feeds, *args)  # type: ignore[attr-defined]

    def run_with_iobinding(self, *args: object) -> object:
        self.seen.append((self.bucket, None))
        return self.inner.run_with_iobinding(*args)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize("io_binding", ["on", "off"])
def test_each_bucket_session_only_ever_runs_its_own_batch_size(tmp_path: Path, io_binding: str) -> None:
    """ORT's cuDNN 9 convolutions keep the plan of the last shape they ran: a session per bucket keeps
    every session on one shape. The main session takes the smallest bucket."""
    folder = write_model(tmp_path, "tiny")
    options = fast_path_options(io_binding=io_binding, bucket_sessions="on")
    runner = OrtRunner(folder / "model.onnx", options, ["logits", "probabilities"])
    runner.warm_up((3, SIZE, SIZE), warmup_batch_sizes(8), runs=1)
    assert runner.use_bucket_sessions and sorted(runner.sessions.by_size) == [2, 4, 8]
    assert len({id(runner.session_for(b)) for b in (1, 2, 4, 8)}) == 4
    assert runner.session_for(1) is runner.session and runner.session_for(9) is runner.session
    seen: list[tuple[int, int | None]] = []
    recorders = {
        id(s): _BucketRecorder(s, b, seen) for b, s in [(1, runner.session), *runner.sessions.by_size.items()]
    }
    runner.sessions.by_size = {b: recorders[id(s)] for b, s in runner.sessions.by_size.items()}  # type: ignore[misc]
    runner.sessions.main = recorders[id(runner.session)]  # type: ignore[assignment]
    for buffers in runner.buffer_sets.all:  # bound batches run the session they were bound to
        for bound in buffers.batches.values():
            bound.session = recorders[id(bound.session)]  # type: ignore[assignment]
    sizes = (1, 3, 5, 8, 2, 7, 4, 1, 6)
    rng = np.random.default_rng(2)
    for n in sizes:
        rows = [rng.integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8) for _ in range(n)]
        got = runner.run_items(rows)
        want = reference(folder, np.stack(rows))
        np.testing.assert_allclose(got["logits"], want["logits"], rtol=1e-5, atol=1e-6)
    assert [bucket for bucket, _ in seen] == [bucket_for(n, [1, 2, 4, 8]) for n in sizes]
    if io_binding == "off":
        assert all(fed == bucket for bucket, fed in seen)


def test_runs_with_maps_are_padded_to_the_bucket_and_run_on_its_session(tmp_path: Path) -> None:
    """Features and activation maps run outside the bound buffers, but on a bucket's session they too
    must come in that bucket's size: padded rows (and -1, no map) in, only the real rows out."""
    folder = write_model(tmp_path, "tiny", explain=True)
    extra = ("cam", "cam_classes", "features")
    options = fast_path_options(bucket_sessions="on")
    runner = OrtRunner(folder / "model.onnx", options, ["logits", "probabilities"])
    runner.warm_up((3, SIZE, SIZE), warmup_batch_sizes(8), runs=1)
    plain = OrtRunner(folder / "model.onnx", ort_options("cpu"), ["logits", "probabilities"])
    seen: list[tuple[int, int | None]] = []
    runner.sessions.by_size[4] = _BucketRecorder(runner.sessions.by_size[4], 4, seen)  # type: ignore[assignment]
    rng = np.random.default_rng(3)
    rows = [rng.integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8) for _ in range(3)]
    ids = np.array([[0, 2], [1, -1], [3, 0]], dtype=np.int64)
    got = runner.run_items(rows, extra, {"cam_class_ids": ids})
    want = plain.run_items(np.stack(rows), extra, {"cam_class_ids": ids})
    assert seen == [(4, 4)]
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6)


def test_bucket_sessions_follow_the_provider_unless_set() -> None:
    assert fast_path_options().bucket_sessions == "auto"
    assert Settings(bucket_sessions="off").bucket_sessions == "off"
    assert RuntimeOptions.from_settings(Settings(bucket_sessions="on")).bucket_sessions == "on"


def test_cpu_auto_keeps_one_session_for_every_bucket(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny")
    runner = OrtRunner(folder / "model.onnx", fast_path_options(), ["logits", "probabilities"])
    runner.warm_up((3, SIZE, SIZE), [1, 2, 4], runs=1)
    assert not runner.use_bucket_sessions and runner.sessions.by_size == {}
    assert runner.session_for(4) is runner.session


def test_warm_up_binds_every_bucket_of_every_buffer_set(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny")
    runner = OrtRunner(folder / "model.onnx", fast_path_options(buffer_sets=2), ["logits", "probabilities"])
    runner.warm_up((3, SIZE, SIZE), [1, 2, 4], runs=1)
    assert len(runner.buffer_sets.all) == 2
    assert all(sorted(buffers.batches) == [1, 2, 4] for buffers in runner.buffer_sets.all)
    # After warm-up no batch size within the largest bucket creates buffers.
    for n in (1, 2, 3, 4):
        runner.run_items([np.zeros((3, SIZE, SIZE), np.uint8)] * n)
    assert len(runner.buffer_sets.all) == 2 and all(
        sorted(b.batches) == [1, 2, 4] for b in runner.buffer_sets.all
    )


def test_concurrent_bound_runs_use_separate_buffers(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny")
    runner = OrtRunner(folder / "model.onnx", fast_path_options(buffer_sets=2), ["logits", "probabilities"])
    runner.warm_up((3, SIZE, SIZE), [1, 2, 4], runs=1)

    def job(value: int) -> bool:
        rows = [np.full((3, SIZE, SIZE), value, np.uint8)] * 3
        for _ in range(30):
            out = runner.run_items(rows)
            if not np.allclose(out["logits"][:, 0], value, atol=1e-3):
                return False
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(job, [10, 60, 120, 250]))


def test_cuda_provider_options_come_from_settings() -> None:
    cuda = cuda_provider_options(
        fast_path_options(
            "cuda", gpu_mem_limit_mb=512, arena_extend_strategy="kNextPowerOfTwo", cuda_graphs=True
        )
    )
    assert cuda["gpu_mem_limit"] == 512 * 1024 * 1024
    assert cuda["arena_extend_strategy"] == "kNextPowerOfTwo" and cuda["enable_cuda_graph"] == "1"
    plain = cuda_provider_options(ort_options("cuda"))
    assert "gpu_mem_limit" not in plain and "enable_cuda_graph" not in plain


def test_tf32_is_set_explicitly_either_way() -> None:
    assert cuda_provider_options(ort_options("cuda"))["use_tf32"] == "1"  # ORT's own default, now visible
    assert cuda_provider_options(replace(ort_options("cuda"), cuda_tf32=False))["use_tf32"] == "0"
    assert RuntimeOptions.from_settings(Settings(cuda_tf32=False)).cuda_tf32 is False
    assert Settings().cuda_tf32 is True


def test_cuda_graphs_force_buckets_and_io_binding_on() -> None:
    graphs_off_buckets = replace(ort_options("cuda"), cuda_graphs=True, batch_buckets="off", io_binding="off")
    assert fast_path(graphs_off_buckets, CUDA) == (True, True, True)
    assert fast_path(replace(ort_options("cuda"), batch_buckets="off"), CUDA) == (False, True, False)
    assert fast_path(replace(ort_options("cpu"), cuda_graphs=True), CPU) == (
        False,
        False,
        False,
    )  # no graphs on CPU


def test_only_warm_up_buffers_capture_cuda_graphs() -> None:
    ids = GraphIds(enabled=True)
    assert [ids.for_warm_up() for _ in range(3)] == [0, 1, 2]
    assert ids.under_load() == -1  # ORT: run without capturing or replaying a graph
    assert ids.for_warm_up() == 3
    off = GraphIds(enabled=False)
    assert off.for_warm_up() is None and off.under_load() is None


def test_a_buffer_set_made_under_load_is_marked_so(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny")
    runner = OrtRunner(folder / "model.onnx", fast_path_options(buffer_sets=1), ["logits", "probabilities"])
    runner.warm_up((3, SIZE, SIZE), [1, 2], runs=1)
    taken = runner.buffer_sets.take()  # the warm set, in use...
    extra = runner.buffer_sets.take()  # ...so a second concurrent run gets a new one
    assert taken.warm and not extra.warm and len(runner.buffer_sets.all) == 2


def test_settings_reach_the_runtime_options() -> None:
    settings = Settings(
        batch_buckets="on", io_binding="off", gpu_mem_limit_mb=64, cuda_graphs=True, instances=3
    )
    runtime = RuntimeOptions.from_settings(settings)
    assert (runtime.batch_buckets, runtime.io_binding, runtime.gpu_mem_limit_mb) == ("on", "off", 64)
    assert runtime.cuda_graphs and runtime.buffer_sets == 3
    assert RuntimeOptions.from_settings(Settings()).buffer_sets == 2  # CUDA's default instances


@pytest.mark.parametrize(
    ("allow", "between", "spinning", "forced_stop"),
    [(True, False, "1", "1"), (True, True, "1", None), (False, False, "0", None)],
)
def test_spinning_policy_reaches_thesession_options(
    allow: bool, between: bool, spinning: str, forced_stop: str | None
) -> None:
    """With spinning allowed: spin while a batch runs, stop when the last running batch returns."""
    options = replace(ort_options("cpu"), allow_spinning=allow, spin_between_runs=between)
    session_options = build_session_options(options)
    assert session_options.get_session_config_entry("session.intra_op.allow_spinning") == spinning
    stop = "session.force_spinning_stop"
    if forced_stop is None:
        with pytest.raises(Exception):  # noqa: B017 - ORT raises its own type for a missing entry
            session_options.get_session_config_entry(stop)
    else:
        assert session_options.get_session_config_entry(stop) == forced_stop
    defaults = Settings()
    assert defaults.allow_spinning is None and not defaults.spin_between_runs  # None: decided by quota


class _Recording:
    """Stands in front of an ORT session: records which session ran, can hold a run until released."""

    def __init__(self, inner: object, name: str, seen: list[str], hold: threading.Event | None = None):
        self.inner, self.name, self.seen, self.hold = inner, name, seen, hold
        self.entered = threading.Event()

    def run(self, *args: object) -> object:
        self.seen.append(self.name)
        self.entered.set()
        if self.hold is not None:
            self.hold.wait(10)
        return self.inner.run(*args)  # type: ignore[attr-defined]


def _recorded_runner(
    tmp_path: Path, seen: list[str], hold: threading.Event | None = None
) -> tuple[OrtRunner, _Recording, _Recording]:
    """A two-thread CPU runner with its one-thread session, both sessions recorded into `seen`."""
    folder = write_model(tmp_path, "tiny")
    runner = OrtRunner(
        folder / "model.onnx", replace(ort_options("cpu"), intra_op_threads=2), ["probabilities"]
    )
    assert runner.add_overlap_session()
    main = runner.sessions.main = _Recording(runner.session, "main", seen, hold)  # type: ignore[assignment]
    assert runner._single is not None
    single = runner._single.session = _Recording(runner._single.session, "single", seen, hold)  # type: ignore[assignment]
    return runner, main, single


def test_a_batch_alone_keeps_every_thread_and_an_overlapping_one_runs_single_threaded(tmp_path: Path) -> None:
    seen: list[str] = []
    release = threading.Event()
    runner, main, single = _recorded_runner(tmp_path, seen, hold=release)
    batch = np.zeros((1, 3, SIZE, SIZE), np.uint8)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(runner.run, batch)
        assert main.entered.wait(10)
        second = pool.submit(runner.run, batch)  # starts while the first runs
        assert single.entered.wait(10)
        single.entered.clear()
        third = pool.submit(runner.run, batch)  # while both run: the one-thread session, run twice at once
        assert single.entered.wait(10)
        release.set()
        for run in (first, second, third):
            assert run.result(timeout=10)["probabilities"].shape[0] == 1
    assert seen == ["main", "single", "single"]
    runner.run(batch)  # alone again: the main session
    assert seen[-1] == "main"


def test_a_batch_that_runs_while_another_decodes_is_not_alone(tmp_path: Path) -> None:
    seen: list[str] = []
    runner, _, _ = _recorded_runner(tmp_path, seen)
    batch = np.zeros((1, 3, SIZE, SIZE), np.uint8)
    with runner.busy():  # another batch's thread is decoding its images
        runner.run(batch)
    runner.run(batch)
    assert seen == ["single", "main"]


def test_no_overlap_sessions_where_they_would_not_help(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny")
    one_thread = OrtRunner(folder / "model.onnx", ort_options("cpu"), ["probabilities"])
    assert not one_thread.add_overlap_session()  # its batches run on one thread anyway
    bound = OrtRunner(
        folder / "model.onnx",
        replace(ort_options("cpu"), intra_op_threads=2, io_binding="on"),
        ["probabilities"],
    )
    assert not bound.add_overlap_session()


class _Overlap:
    """Stands in front of an ORT session: counts the runs in flight at once (each run of the largest
    batch lasts long enough for runs started together to overlap)."""

    def __init__(self, inner: object, largest: int) -> None:
        self.inner, self.largest = inner, largest
        self.active = self.most = 0
        self.lock = threading.Lock()

    def run(self, names: list[str], feeds: dict[str, np.ndarray], *args: object) -> object:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            if next(iter(feeds.values())).shape[0] == self.largest:
                time.sleep(0.2)
            return self.inner.run(names, feeds, *args)  # type: ignore[attr-defined]
        finally:
            with self.lock:
                self.active -= 1


@pytest.mark.parametrize(("instances", "run_size"), [(1, 4), (3, 4), (3, 2)])
def test_warm_up_runs_the_overlap_session_as_many_at_once_as_the_instances(
    tmp_path: Path, instances: int, run_size: int
) -> None:
    """...each with as many images as a run there takes under load."""
    folder = write_model(tmp_path, "tiny")
    options = replace(ort_options("cpu"), intra_op_threads=2, overlap_run_size=run_size)
    runner = OrtRunner(folder / "model.onnx", options, ["probabilities"])
    assert runner.add_overlap_session()
    assert runner._single is not None
    single = runner._single.session = _Overlap(runner._single.session, largest=run_size)  # type: ignore[assignment]
    runner.warm_up((3, SIZE, SIZE), [1, 2, 4], runs=1, concurrent=instances)
    assert single.most == instances and single.active == 0


def _overlap_runner(tmp_path: Path, run_size: int = 0) -> OrtRunner:
    folder = write_model(tmp_path, "tiny")
    options = replace(ort_options("cpu"), intra_op_threads=2, overlap_run_size=run_size)
    runner = OrtRunner(folder / "model.onnx", options, ["logits", "probabilities"])
    assert runner.add_overlap_session()
    return runner


class _Shapes:
    """Stands in front of an ORT session and records the batch size of every run."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.sizes: list[int] = []

    def run(self, names: list[str], feeds: dict[str, np.ndarray], *args: object) -> object:
        self.sizes.append(next(iter(feeds.values())).shape[0])
        return self.inner.run(names, feeds, *args)  # type: ignore[attr-defined]


def test_an_overlapping_batch_runs_in_pieces_of_the_run_size_and_answers_every_row(tmp_path: Path) -> None:
    runner = _overlap_runner(tmp_path, run_size=2)
    assert runner._single is not None
    single = runner._single.session = _Shapes(runner._single.session)  # type: ignore[assignment]
    batch = np.random.default_rng(1).integers(0, 256, size=(5, 3, SIZE, SIZE), dtype=np.uint8)
    whole = runner.run(batch)  # alone: the main session, in one run
    with runner.busy():  # another batch is running: this one overlaps it
        pieces = runner.run(batch)
    assert single.sizes == [2, 2, 1]
    for name in ("logits", "probabilities"):
        assert pieces[name].shape == whole[name].shape == (5, *whole[name].shape[1:])
        np.testing.assert_allclose(pieces[name], whole[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("run_size", "pieces"), [(1, {1}), (2, {1, 2}), (0, {1, 2, 4})])
def test_warm_up_runs_the_one_thread_session_only_at_the_sizes_its_pieces_have(
    tmp_path: Path, run_size: int, pieces: set[int]
) -> None:
    """Its memory arena grows to the largest run it sees: a size it never runs would only cost memory."""
    runner = _overlap_runner(tmp_path, run_size=run_size)
    assert runner._single is not None
    single = runner._single.session = _Shapes(runner._single.session)  # type: ignore[assignment]
    runner.warm_up((3, SIZE, SIZE), [1, 2, 4], runs=2, concurrent=3)
    assert set(single.sizes) == pieces
    assert single.sizes.count(max(pieces)) == 2 + 3  # its warm-up runs, then one per instance at once
    assert runner.overlap_run_size == (run_size or None)


def test_overlapping_batches_run_one_image_at_a_time_by_default(tmp_path: Path) -> None:
    assert Settings().overlap_run_size == 1
    assert RuntimeOptions.from_settings(Settings(overlap_run_size=0)).overlap_run_size == 0
    runner, _, _ = _recorded_runner(tmp_path, [])
    assert runner.overlap_run_size == 1


def test_warm_up_without_threads_fails_the_load_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_model(tmp_path, "tiny")
    runner = OrtRunner(
        folder / "model.onnx", replace(ort_options("cpu"), intra_op_threads=2), ["probabilities"]
    )
    assert runner.add_overlap_session()
    start = threading.Thread.start
    calls = []

    def start_once(thread: threading.Thread) -> None:
        calls.append(thread.name)
        if len(calls) > 1:
            raise RuntimeError("can't start new thread")
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_once)
    with pytest.raises(RuntimeError, match="new thread"):
        runner.warm_up((3, SIZE, SIZE), [1, 2, 4], runs=1, concurrent=3)
    monkeypatch.undo()
    assert not [t for t in threading.enumerate() if t.name.startswith("warm-up-")]  # none left waiting
