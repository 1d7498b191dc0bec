"""Loading one version, as pure steps the manager calls: validate its files, create and warm its ONNX
Runtime session (blocking, in a thread), then assemble what serves it (its batcher and preprocessing
backend). A cascade loads nothing: its stages are checked against the repository instead.

Nothing here changes model state; the manager decides when to load and records the outcome."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from service.lifecycle.budget import rss_bytes
from service.lifecycle.configs import CascadeSpec, ModelConfig
from service.lifecycle.files import HashCache, ModelLoadError, validate_files
from service.lifecycle.records import ModelRecord
from service.metrics import Metrics
from service.model_spec import LABELS_FILE, MODEL_FILE, ModelSpec, read_labels
from service.preprocess.backends import PreprocessBackend, create_backend
from service.preprocess.images import PreprocessSpec
from service.runtime.batcher import Batcher, BatcherConfig
from service.runtime.emulated import EmulatedRunner, parse_emulation
from service.runtime.providers import CUDA
from service.runtime.session import OrtRunner, RuntimeOptions, warmup_batch_sizes
from service.settings import Settings

log = logging.getLogger(__name__)

OUTPUT_NAMES = ["logits", "probabilities"]


@dataclass
class LoadedGraph:
    """A validated, warmed session and what was measured loading it."""

    runner: OrtRunner | EmulatedRunner
    spec: ModelSpec
    labels: list[str]
    seconds: float
    memory_bytes: int
    batching: BatcherConfig  # for the provider the session got: what warm-up and the batcher use


@dataclass
class Serving:
    """What serves a loaded version: its batcher (started) and how its images are preprocessed."""

    batcher: Batcher
    preprocess: PreprocessSpec
    backend: PreprocessBackend


def load_graph(folder: Path, settings: Settings, config: ModelConfig, hashes: HashCache) -> LoadedGraph:
    """Validate the files, create the session, warm it at every batch size it will see. Blocking.
    Raises ModelLoadError (files), RuntimeUnavailable (device), or ORT's own errors (graph)."""
    start = time.monotonic()
    before = rss_bytes()
    spec, labels = validate_files(folder, hashes)
    runner = OrtRunner(folder / MODEL_FILE, RuntimeOptions.from_settings(settings), OUTPUT_NAMES)
    # model.json's outputs are what requests may ask for: one the graph lacks would fail a whole batch.
    missing = set(spec.output_names) - {o.name for o in runner.session.get_outputs()}
    if missing:
        lacking = ", ".join(sorted(missing))
        raise ModelLoadError(f"{folder / MODEL_FILE} lacks output {lacking} that model.json lists")
    if settings.emulate_device:  # benchmarks only: batches as on CUDA, timed by the measured curve
        emulated = EmulatedRunner(
            runner,
            parse_emulation(settings.emulate_device),
            (3, spec.crop_size, spec.crop_size),
            settings.emulate_device_lock,
        )
        # As on CUDA, two instances by default: the next batch is formed and waits at the device while
        # one runs, so the device does not idle while the loop answers a batch and forms the next
        # (with one, b0-fp16's curve reached 0.75 of its limit in bench/engine_cost.py, 0.96 with two).
        batching = batcher_config(settings, config, CUDA, spec.gmacs)
        log.warning("event=emulated_device model=%s device=%s", folder, emulated.provider)
        return LoadedGraph(emulated, spec, labels, time.monotonic() - start, rss_bytes() - before, batching)
    batching = batcher_config(settings, config, runner.provider, spec.gmacs)
    if settings.single_thread_overlap and batching.instances > 1:
        runner.add_overlap_session()
    sizes = warmup_batch_sizes(batching.max_batch_size)
    # The high-priority lane may run one batch beyond the instances (runtime/batcher.py).
    concurrent = batching.instances + int(batching.high_lane)
    runner.warm_up((3, spec.crop_size, spec.crop_size), sizes, settings.warmup_runs, concurrent)
    seconds = time.monotonic() - start
    # RSS can even shrink when the load reuses memory freed by an earlier unload: never report less
    # than the graph's own weights.
    memory = max(rss_bytes() - before, (folder / MODEL_FILE).stat().st_size)
    return LoadedGraph(runner, spec, labels, seconds, memory, batching)


def batcher_config(settings: Settings, config: ModelConfig, provider: str, gmacs: float) -> BatcherConfig:
    """The model's config.json over the global settings; batch size and instances by provider."""
    max_batch = config.max_batch_size or settings.batch_size_for(provider, gmacs)
    instances = instances_for(settings, config, provider, gmacs)
    delay_ms = config.max_queue_delay_ms
    if delay_ms is None:
        delay_ms = settings.max_queue_delay_ms
    return BatcherConfig(
        max_batch_size=max_batch,
        instances=instances,
        max_queue_delay_s=delay_ms / 1000,
        max_queue_size=queue_size(settings, max_batch, instances),
        priority_aging_s=settings.priority_aging_ms / 1000,
        high_fill_slack=settings.high_fill_slack,
        high_fill_unmeasured=settings.high_fill_unmeasured,
        high_lane=settings.high_priority_lane,
    )


def instances_for(settings: Settings, config: ModelConfig, provider: str, gmacs: float) -> int:
    """The batches a model runs at once: its config.json's `instances`, else the rule for the provider."""
    return config.instances or settings.instances_for(provider, gmacs)


def queue_size(settings: Settings, max_batch: int, instances: int) -> int:
    """The configured queue size; left at its default, at least one full batch per instance and one
    more waiting, since a shorter queue could never fill the batches (CUDA batches reach 256)."""
    if "max_queue_size" in settings.model_fields_set:
        return settings.max_queue_size
    return max(settings.max_queue_size, max_batch * (instances + 1))


def assemble(name: str, loaded: LoadedGraph, settings: Settings, metrics: Metrics) -> Serving:
    """Start the batcher in front of the session and choose the preprocessing backend for the
    provider the session really got. Call inside the event loop."""
    spec, runner = loaded.spec, loaded.runner
    shape = (3, spec.crop_size, spec.crop_size)
    batcher = Batcher(name, runner, loaded.batching, observer=metrics, item_shape=shape)
    batcher.start()
    preprocess = PreprocessSpec.from_model_spec(spec)
    backend = create_backend(settings, preprocess, runner.provider, name)
    return Serving(batcher, preprocess, backend)


def check_cascade(
    cascade: CascadeSpec, records: dict[str, ModelRecord]
) -> tuple[ModelSpec, list[str]] | list[str]:
    """A cascade's stages must be models of the repository that share one label set. Returns the last
    stage's spec and labels (its output is what a cascade answers), or the problems found."""
    labels: list[str] | None = None
    spec: ModelSpec | None = None
    problems: list[str] = []
    first = cascade.stages[0].model
    for stage in cascade.stages:
        stage_record = records.get(stage.model)
        if stage_record is None or not stage_record.on_disk:
            problems.append(f"stage '{stage.model}' is not a model of the repository")
            continue
        if stage_record.is_cascade_folder:
            problems.append(f"stage '{stage.model}' is itself a cascade")
            continue
        target = stage_record.serving() or stage_record.target_newest()
        if target is None or target.spec is None or target.path is None:
            problems.append(f"stage '{stage.model}' has no usable version")
            continue
        try:
            stage_labels = target.labels or read_labels(target.path / LABELS_FILE, target.spec.num_classes)
        except (OSError, ValueError) as exc:
            problems.append(f"stage '{stage.model}': {exc}")
            continue
        if labels is not None and stage_labels != labels:
            problems.append(f"stage '{stage.model}' has another label set than '{first}'")
        labels, spec = labels or stage_labels, target.spec
    if problems or spec is None or labels is None:
        return problems or ["no stages"]
    return spec, labels
