"""Run repository models on someone's labelled photos in ONNX Runtime, for the export-time tools:
`models.measure` (measured accuracy), `models.cascade --tune` (exit thresholds) and `models.export
--calibration` (int8 calibration and its held-out gate).

The photos are read as `python -m service eval` reads them (`service.client.dataset`) and preprocessed
by `service.preprocess.images` from each model's own `model.json`, exactly as the server would.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import ExportError
from service.client.dataset import DatasetError, Sample, read_dataset, resolve_labels, shared_names
from service.model_spec import LABELS_FILE, MODEL_FILE, SPEC_FILE, ModelSpec, read_labels
from service.preprocess.images import PreprocessSpec, preprocess

BATCH = 8
TIMED_RUNS = 15


@dataclass(frozen=True)
class RepositoryModel:
    name: str
    folder: Path  # the version folder
    spec: ModelSpec
    labels: list[str]


def find_model(repository: Path, name: str, version: int | None = None) -> RepositoryModel:
    """A model's version folder (the newest when `version` is None), its spec and labels."""
    model_dir = repository / name
    versions = sorted(int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit())
    if not versions:
        raise ExportError(f"no model {name!r} in {repository} (no numbered version folder in {model_dir})")
    chosen = version if version is not None else versions[-1]
    folder = model_dir / str(chosen)
    if chosen not in versions:
        raise ExportError(f"{name} has no version {chosen} (has {', '.join(map(str, versions))})")
    try:
        spec = ModelSpec.from_file(folder / SPEC_FILE)
        labels = read_labels(folder / LABELS_FILE, spec.num_classes)
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {folder}: {e}") from None
    return RepositoryModel(name, folder, spec, labels)


def read_labelled(source: Path) -> list[Sample]:
    try:
        return read_dataset(source)
    except DatasetError as e:
        raise ExportError(str(e)) from None


def targets(samples: Sequence[Sample], labels: Sequence[str]) -> np.ndarray:
    """bool (N, classes): the classes each sample's label accepts, i.e. its class index, or every class
    of that name where several share it (ImageNet's two `crane`s). ExportError naming unknown labels."""
    try:
        mapping = resolve_labels([s.label for s in samples], labels)
    except DatasetError as e:
        raise ExportError(str(e)) from None
    folded = np.array([name.casefold() for name in labels])
    shared = shared_names(labels)
    accepted = np.zeros((len(samples), len(labels)), dtype=bool)
    for row, sample in enumerate(samples):
        if sample.label.casefold() in shared:
            accepted[row] = folded == sample.label.casefold()
        else:
            accepted[row, mapping[sample.label]] = True
    return accepted


def hits(answers: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """bool (N,): whether each answer (a class index per row) is one its label accepts."""
    return accepted[np.arange(len(answers)), answers]


def pixels(samples: Sequence[Sample], spec: PreprocessSpec, workers: int = 2) -> np.ndarray:
    """uint8 (N, 3, crop, crop): each photo preprocessed as the server would; ExportError naming a photo
    that cannot be read or decoded."""

    def one(sample: Sample) -> np.ndarray:
        try:
            return preprocess(sample.path.read_bytes(), spec)
        except Exception as e:  # OSError, or the service's own bad-image errors
            raise ExportError(f"cannot use {sample.path}: {e}") from None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return np.stack(list(pool.map(one, samples)))


def session(path: Path, threads: int = 1):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    from service.runtime.int8_kernels import faithful_int8

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    # int8 as the server runs it on this CPU: where the fused kernels saturate (no VNNI), without them.
    return ort.InferenceSession(str(path), faithful_int8(options), providers=["CPUExecutionProvider"])


def probabilities(model: RepositoryModel, images: np.ndarray, threads: int = 1) -> np.ndarray:
    runner = session(model.folder / MODEL_FILE, threads)
    return np.concatenate(
        [
            runner.run(["probabilities"], {"pixels": images[i : i + BATCH]})[0]
            for i in range(0, len(images), BATCH)
        ]
    )


def ms_per_image(model: RepositoryModel, images: np.ndarray) -> float:
    """Median ms of one image at batch 1 on one thread (after two warm-up runs): a stage's cost."""
    runner = session(model.folder / MODEL_FILE, 1)
    times = []
    for i in range(2 + TIMED_RUNS):
        started = time.perf_counter()
        runner.run(["probabilities"], {"pixels": images[i % len(images)][None]})
        if i >= 2:
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def top_k_accuracy(probs: np.ndarray, accepted: np.ndarray, k: int) -> float:
    """Percent of rows with an accepted class (see `targets`) among the k most probable."""
    k = min(k, probs.shape[1])
    best = np.argsort(-probs, axis=1)[:, :k]
    return float(100.0 * np.take_along_axis(accepted, best, axis=1).any(axis=1).mean())
