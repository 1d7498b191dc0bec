"""The GPU path on a real GPU (pytest -m gpu; bench/gpu/run.sh runs these on the device machine).

Skipped wherever ONNX Runtime cannot open a CUDA session: the CPU half of each piece is tested in
tests/unit. What only a GPU shows is tested here: buckets and IO binding with device buffers, CUDA
graphs, nvImageCodec decoding into device memory feeding the resize graph and the model's batch,
flat GPU memory, and the engine end to end with lite0's real weights.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from service.runtime.session import CUDA, OrtRunner, RuntimeOptions, nvidia_gpu_present
from tests.engine_calls import classify
from tests.tiny_model import SIZE, ort_options, write_model

pytestmark = pytest.mark.gpu


def _cuda_status() -> tuple[bool, str]:
    """Whether ONNX Runtime really opens a CUDA session here, and if not, why (the skip reason, which
    EFFNET_REQUIRE_CUDA=1 turns into a failure: tests/gpu/conftest.py)."""
    if not nvidia_gpu_present():
        return False, "no NVIDIA GPU visible (/dev/nvidia*)"
    try:
        import onnxruntime as ort

        from tests.tiny_model import tiny_graph

        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls()
        session = ort.InferenceSession(
            tiny_graph().SerializeToString(), providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
        )
    except Exception as exc:
        return False, f"a CUDA session could not be created: {type(exc).__name__}: {exc}"
    provider = session.get_providers()[0]
    return provider == CUDA, f"a CUDA session got {provider} (CUDA 13 / cuDNN 9 not on the loader path?)"


CUDA_OK, CUDA_REASON = _cuda_status()
requires_cuda = pytest.mark.skipif(not CUDA_OK, reason=CUDA_REASON)
OUTPUTS = ["logits", "probabilities"]


def cuda_options(**changes: object) -> RuntimeOptions:
    return replace(ort_options("cuda"), buffer_sets=2, **changes)  # type: ignore[arg-type]


def gpu_memory_mib() -> float:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.split()[0])


@requires_cuda
@pytest.mark.parametrize("graphs", [False, True])
def test_cuda_buckets_and_io_binding_match_the_cpu(tmp_path: Path, graphs: bool) -> None:
    folder = write_model(tmp_path, "tiny")
    runner = OrtRunner(folder / "model.onnx", cuda_options(cuda_graphs=graphs), OUTPUTS)
    assert runner.provider == CUDA and runner.use_buckets and runner.use_io_binding
    assert runner.use_bucket_sessions  # on CUDA each bucket runs on a session of its own
    runner.warm_up((3, SIZE, SIZE), [1, 2, 4, 8], runs=2)
    assert sorted(runner.sessions.by_size) == [2, 4, 8]
    assert all(s.get_providers()[0] == CUDA for s in runner.sessions.by_size.values())
    cpu = OrtRunner(folder / "model.onnx", replace(cuda_options(), device="cpu"), OUTPUTS)
    rng = np.random.default_rng(0)
    for n in (1, 3, 8, 5, 2):
        rows = [rng.integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8) for _ in range(n)]
        got, want = runner.run_items(rows), cpu.run(np.stack(rows))
        np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-4, atol=1e-5)


@requires_cuda
@pytest.mark.parametrize("shared_arena", [False, True])  # the arena, once registered, stays: True last
def test_cuda_sessions_get_one_thread_and_may_share_one_arena(tmp_path: Path, shared_arena: bool) -> None:
    folder = write_model(tmp_path, "tiny")
    options = cuda_options(intra_op_threads=8, cuda_shared_arena=shared_arena)
    runner = OrtRunner(folder / "model.onnx", options, OUTPUTS)
    runner.warm_up((3, SIZE, SIZE), [1, 2, 4], runs=1)
    sessions = [runner.session, *runner.sessions.by_size.values()]
    assert runner.intra_op_threads == 1
    assert all(s.get_session_options().intra_op_num_threads == 1 for s in sessions)
    cpu = OrtRunner(folder / "model.onnx", replace(options, device="cpu"), OUTPUTS)
    assert cpu.intra_op_threads == 8
    rows = list(np.random.default_rng(2).integers(0, 256, (3, 3, SIZE, SIZE), dtype=np.uint8))
    got, want = runner.run_items(rows), cpu.run(np.stack(rows))
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-4, atol=1e-5)


@requires_cuda
def test_device_rows_are_batched_without_the_host(tmp_path: Path) -> None:
    cupy = pytest.importorskip("cupy")
    folder = write_model(tmp_path, "tiny")
    runner = OrtRunner(folder / "model.onnx", cuda_options(), OUTPUTS)
    runner.warm_up((3, SIZE, SIZE), [1, 2, 4], runs=1)
    host = [np.full((3, SIZE, SIZE), v, np.uint8) for v in (10, 90, 200)]
    mixed = [cupy.asarray(host[0]), host[1], cupy.asarray(host[2])]  # device and host rows together
    got = runner.run_items(mixed)
    np.testing.assert_allclose(got["logits"][:, 0], [10, 90, 200], atol=1e-3)


@requires_cuda
@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="needs nvidia-smi")
def test_gpu_memory_stays_flat_after_warm_up(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny")
    runner = OrtRunner(folder / "model.onnx", cuda_options(), OUTPUTS)
    runner.warm_up((3, SIZE, SIZE), [1, 2, 4, 8, 16, 32], runs=2)
    rng = np.random.default_rng(1)
    rows = list(rng.integers(0, 256, (32, 3, SIZE, SIZE), dtype=np.uint8))
    runner.run_items(rows[:7])
    before = gpu_memory_mib()
    for n in rng.integers(1, 33, 200):
        runner.run_items(rows[: int(n)])
    assert gpu_memory_mib() - before <= 8.0


def _gpu_backend(spec: object) -> tuple[object, object]:
    """nvImageCodec + the resize graph wired as create_backend wires them: one stream for both."""
    from service.preprocess.backends import GraphBackend
    from service.preprocess.gpu_jpeg import BatchingJpegDecoder, load_nvimgcodec
    from service.preprocess.resize_graph import ResizeGraphRunner
    from service.runtime.device import DeviceContext

    codec = load_nvimgcodec()
    if codec is None:
        pytest.skip("nvidia-nvimgcodec-cu13 does not load")
    context = DeviceContext(0)
    resize = ResizeGraphRunner(spec, "cuda", 0, context)  # type: ignore[arg-type]
    assert resize.device == "cuda"
    decoder = BatchingJpegDecoder(codec, 0, 8, context.stream, resize.run_batch)
    return GraphBackend(spec, resize, decoder), decoder  # type: ignore[arg-type]


@requires_cuda
def test_nvimgcodec_and_the_device_resize_graph_match_pillow(real_photos: dict[str, bytes]) -> None:
    pytest.importorskip("cupy")
    from service.preprocess.images import DecodeLimits, PreprocessSpec, preprocess

    spec = PreprocessSpec(224, 256, "bicubic")
    backend, decoder = _gpu_backend(spec)
    try:
        for name, data in real_photos.items():
            row = backend.prepare(data, DecodeLimits())  # type: ignore[attr-defined]
            assert hasattr(row, "__cuda_array_interface__") and row.shape == (3, 224, 224)
            difference = np.abs(row.get().astype(np.int16) - preprocess(data, spec)).mean()
            assert difference <= 2.0, (name, difference)
        assert backend.gpu_decoded == len(real_photos) and backend.pillow_fallbacks == 0  # type: ignore[attr-defined]
    finally:
        decoder.close()  # type: ignore[attr-defined]


@requires_cuda
def test_on_a_1080p_photo_gpu_decoding_and_resize_stay_within_the_cpu_bounds(photo_1080p: bytes) -> None:
    """The bounds of tests/unit/preprocess/test_resize_graph.py, on the device: nvImageCodec's decode
    plus the graph against the Pillow path (draft decoding) for b0's resize."""
    pytest.importorskip("cupy")
    from service.preprocess.images import DecodeLimits, PreprocessSpec, preprocess
    from tests.unit.preprocess.test_resize_graph import GRAPH_VS_PILLOW_MAX, GRAPH_VS_PILLOW_MEAN

    spec = PreprocessSpec(224, 256, "bicubic")
    backend, decoder = _gpu_backend(spec)
    try:
        row = backend.prepare(photo_1080p, DecodeLimits())  # type: ignore[attr-defined]
        difference = np.abs(row.get().astype(np.int16) - preprocess(photo_1080p, spec))
        assert difference.max() <= GRAPH_VS_PILLOW_MAX and difference.mean() <= GRAPH_VS_PILLOW_MEAN
    finally:
        decoder.close()  # type: ignore[attr-defined]


@requires_cuda
async def test_engine_on_cuda_with_gpu_decoding_keeps_lite0_top1(
    model_repository: Path, real_photos: dict[str, bytes]
) -> None:
    from service.core.engine import Engine
    from service.metrics import Metrics
    from service.settings import Settings

    answers = {}
    for decoder in ("pillow", "auto"):
        settings = Settings(repository=model_repository, models="lite0", device="cuda", decoder=decoder)
        engine = Engine(settings, Metrics(process_metrics=False))
        await engine.start()
        await engine.wait_loaded()
        try:
            outcome = await classify(engine, "lite0", list(real_photos.values()), top_k=1)
            answers[decoder] = [p[0].class_id for p in outcome.predictions]
        finally:
            await engine.stop()
    assert answers["pillow"] == answers["auto"]
    assert 281 <= answers["auto"][0] <= 285 and answers["auto"][1] == 967  # tabby family; espresso
