"""What the server knows of each model: its versions (`ModelEntry`) in whatever state, and the record
per model name (`ModelRecord`) that the lifecycle (service/lifecycle/manager.py) keeps and the request path
reads. Plain data; the state changes are the lifecycle's."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from service.lifecycle.repository import DEFAULT_CONFIG, CascadeSpec, ModelConfig, ModelState
from service.model_spec import ModelSpec
from service.preprocess.backends import PreprocessBackend
from service.preprocess.images import PreprocessSpec
from service.runtime.batcher import Batcher
from service.runtime.session import OrtRunner


@dataclass
class ModelEntry:
    """One version of one model, in whatever state. `spec` is read from model.json at discovery (so it
    describes even a model not loaded yet); runner and batcher exist while it is READY or UNLOADING."""

    name: str
    version: int | None
    path: Path | None
    state: ModelState = ModelState.AVAILABLE
    reason: str | None = None
    spec: ModelSpec | None = None
    labels: list[str] = field(default_factory=list)
    provider: str | None = None
    load_seconds: float | None = None
    loaded_at: float | None = None  # wall clock (time.time())
    last_used: float | None = None  # wall clock
    memory_bytes: int | None = None
    signature: tuple[int, ...] = ()
    runner: OrtRunner | None = None
    batcher: Batcher | None = None
    preprocess: PreprocessSpec | None = None
    backend: PreprocessBackend | None = None  # how this model's images are decoded and resized
    config: ModelConfig | None = None  # the config.json it was loaded with
    in_flight: int = 0
    kind: str = "model"  # or "cascade": no session; `spec` and `labels` are its last stage's
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._idle.set()

    def fail(self, reason: str) -> None:
        self.state = ModelState.FAILED
        self.reason = reason

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY


@dataclass
class ModelRecord:
    """Every version the server knows of one model name, and what the control mode wants of it."""

    name: str
    path: Path | None
    config: ModelConfig = DEFAULT_CONFIG
    config_error: str | None = None
    versions: dict[int, ModelEntry] = field(default_factory=dict)
    retiring: list[ModelEntry] = field(default_factory=list)
    wanted: bool = True  # should be served (now, or lazily on first request)
    required: bool = False  # server readiness waits for it (loaded at start, no memory budget)
    touched: bool = False  # a load was attempted: the index lists its versions
    on_disk: bool = True
    reason: str | None = None  # why the model as a whole is unavailable (missing, bad config.json)
    last_used: float = 0.0  # monotonic, for least-recently-used eviction
    measured_bytes: int | None = None
    cascade: CascadeSpec | None = None  # a cascade of other models: no session of its own
    is_cascade_folder: bool = False  # holds cascade.json (even an invalid one)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    load_task: asyncio.Task[None] | None = None

    def ready_versions(self) -> list[ModelEntry]:
        return sorted((e for e in self.versions.values() if e.ready), key=lambda e: e.version or 0)

    def serving(self) -> ModelEntry | None:
        """The newest ready version: what a request without a version gets."""
        ready = self.ready_versions()
        return ready[-1] if ready else None

    def newest(self) -> ModelEntry | None:
        return self.versions[max(self.versions)] if self.versions else None

    def loaded(self) -> list[ModelEntry]:
        """Versions holding a session (ready, or draining before release)."""
        held = [e for e in self.versions.values() if e.runner is not None]
        return held + [e for e in self.retiring if e.runner is not None]

    @property
    def kind(self) -> str:
        return "cascade" if self.is_cascade_folder else "model"

    def busy(self) -> bool:
        return any(e.in_flight for e in self.loaded())


@dataclass(frozen=True)
class IndexEntry:
    """One row of the V2 repository index (Triton's shape); version/state/reason empty for a model
    that was never loaded."""

    name: str
    version: str = ""
    state: str = ""
    reason: str = ""
