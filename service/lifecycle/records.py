"""What the server knows of each model: its versions (`ModelEntry`) in whatever state, and the record
per model name (`ModelRecord`) that the lifecycle manager keeps and the request path reads. Plain data
and the lease counter; every other state change is the manager's."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from service.lifecycle.configs import DEFAULT_CONFIG, CascadeSpec, ModelConfig
from service.model_spec import ModelSpec
from service.preprocess.backends import PreprocessBackend
from service.preprocess.images import PreprocessSpec
from service.runtime.batcher import Batcher
from service.runtime.emulated import EmulatedRunner
from service.runtime.session import OrtRunner


class ModelState(StrEnum):
    """One version's state. The V2 repository index shows these as Triton's READY / LOADING /
    UNLOADING / UNAVAILABLE (failed, unloaded, stopped and available are all UNAVAILABLE there)."""

    AVAILABLE = "available"  # on disk, never loaded (lazy, or not yet asked for)
    LOADING = "loading"
    READY = "ready"
    UNLOADING = "unloading"
    UNLOADED = "unloaded"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def triton(self) -> str:
        return {
            ModelState.READY: "READY",
            ModelState.LOADING: "LOADING",
            ModelState.UNLOADING: "UNLOADING",
        }.get(self, "UNAVAILABLE")


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
    runner: OrtRunner | EmulatedRunner | None = None
    batcher: Batcher | None = None
    preprocess: PreprocessSpec | None = None
    backend: PreprocessBackend | None = None  # how this model's images are decoded and resized
    config: ModelConfig | None = None  # the config.json it was loaded with
    kind: str = "model"  # or "cascade": no session; `spec` and `labels` are its last stage's
    # Shown in /v1/models when model.json records another name or version than the folder it is in.
    recorded_as: str | None = None
    in_flight: int = 0
    _idle: asyncio.Event = field(default_factory=asyncio.Event)
    _largest_load: tuple[ModelConfig, int] | None = None  # the config it was loaded with, bytes

    def __post_init__(self) -> None:
        self._idle.set()

    def measured_load(self, grown_bytes: int, config: ModelConfig) -> int:
        """The resident size to count for a load that grew the process by `grown_bytes`: the largest
        any load of these files with this config has measured. A load that reuses heap an earlier
        unload left behind grows the process by less than it holds (lite0 read 120-165 MB in one
        process); taken as the model's size, that would let a memory budget admit one model too many."""
        if self._largest_load is not None and self._largest_load[0] == config:
            grown_bytes = max(grown_bytes, self._largest_load[1])
        self._largest_load = (config, grown_bytes)
        return grown_bytes

    def fail(self, reason: str) -> None:
        self.state = ModelState.FAILED
        self.reason = reason

    @property
    def ready(self) -> bool:
        return self.state is ModelState.READY

    # --- leases: a request holds its version from the executor's acquire to its release ---
    def hold(self) -> None:
        self.in_flight += 1
        self._idle.clear()
        self.last_used = time.time()

    def release(self) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        if self.in_flight == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        """Return once no request holds this version."""
        await self._idle.wait()


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

    def target_newest(self) -> ModelEntry | None:
        """The newest version the version policy would serve, loaded or not."""
        targets = self.config.version_policy.select(list(self.versions))
        return self.versions[targets[-1]] if targets else None

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
