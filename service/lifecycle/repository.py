"""The model repository on disk: `<name>/[config.json]` and `<name>/<version>/{model.onnx, model.json,
labels.txt}`. Reading and checking files only; which versions are loaded is `service.lifecycle.manager`'s job.

Only names found on disk become models; a name from a request is looked up in the lifecycle's table and
never joined into a path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.model_spec import (
    LABELS_FILE,
    MODEL_FILE,
    MODEL_NAME_PATTERN,
    SPEC_FILE,
    ModelSpec,
    read_labels,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
_Parsed = TypeVar("_Parsed", bound=BaseModel)
CASCADE_FILE = "cascade.json"


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


class ModelLoadError(Exception):
    """A model's files are missing, invalid or inconsistent; the message says which and why."""


# ------------------------------------------------------------------------------------------ config.json
class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VersionPolicy(_Strict):
    """Which versions on disk are served (Triton's version_policy): exactly one of the three."""

    latest: int | None = Field(default=None, ge=1)
    all: bool | None = None
    specific: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _one(self) -> VersionPolicy:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of 'latest', 'all' or 'specific'")
        if self.all is False:
            raise ValueError("'all' must be true")
        if self.specific is not None and (not self.specific or min(self.specific) < 1):
            raise ValueError("'specific' must list version numbers >= 1")
        return self

    def select(self, versions: list[int]) -> list[int]:
        """The versions to serve, ascending."""
        ordered = sorted(versions)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific]
        assert self.latest is not None
        return ordered[-self.latest :]


LATEST_ONE = VersionPolicy(latest=1)


class ModelConfig(_Strict):
    """`<name>/config.json`: per-model overrides of the global settings."""

    version_policy: VersionPolicy = LATEST_ONE
    max_batch_size: int | None = Field(default=None, ge=1, le=4096)
    instances: int | None = Field(default=None, ge=1, le=64)
    max_queue_delay_ms: float | None = Field(default=None, ge=0, le=60_000)


DEFAULT_CONFIG = ModelConfig()


class CascadeStage(_Strict):
    model: str = Field(pattern=MODEL_NAME_PATTERN.pattern)
    # Answer here when the top probability reaches this; the last stage always answers.
    exit_confidence: float | None = Field(default=None, gt=0.0, le=1.0)


class CascadeSpec(_Strict):
    """`<name>/cascade.json`: run the stages in order; an image leaves at the first stage whose top
    probability reaches its `exit_confidence` (the maximum-softmax exit rule)."""

    stages: tuple[CascadeStage, ...] = Field(min_length=2, max_length=8)
    description: str | None = None

    @model_validator(mode="after")
    def _thresholds(self) -> CascadeSpec:
        *early, last = self.stages
        if any(stage.exit_confidence is None for stage in early):
            raise ValueError("every stage but the last needs an exit_confidence")
        if last.exit_confidence is not None:
            raise ValueError("the last stage always answers: give it no exit_confidence")
        names = [stage.model for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError("a model may appear only once in a cascade")
        return self


def read_cascade(model_dir: Path) -> CascadeSpec:
    return _read_json(model_dir / CASCADE_FILE, CascadeSpec)


def read_config(model_dir: Path) -> ModelConfig:
    path = model_dir / CONFIG_FILE
    return _read_json(path, ModelConfig) if path.exists() else DEFAULT_CONFIG


def _read_json(path: Path, model: type[_Parsed]) -> _Parsed:
    """A validated JSON file; ModelLoadError saying which file and what is wrong with it."""
    try:
        return model.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ModelLoadError(f"{path} is invalid: {_first_error(exc)}") from exc
    except OSError as exc:
        raise ModelLoadError(f"{path} cannot be read: {exc.strerror or exc}") from exc


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(file)"
    return f"{where}: {first['msg']}"


# ------------------------------------------------------------------------------------------- scanning
@dataclass(frozen=True)
class VersionOnDisk:
    version: int
    path: Path
    signature: tuple[int, ...]  # sizes and mtimes of its files: a changed folder is worth retrying


@dataclass
class ModelOnDisk:
    name: str
    path: Path
    versions: dict[int, VersionOnDisk] = field(default_factory=dict)
    config: ModelConfig = DEFAULT_CONFIG
    config_error: str | None = None
    cascade: CascadeSpec | None = None  # a cascade folder: cascade.json instead of versions


def _signature(folder: Path) -> tuple[int, ...]:
    values: list[int] = []
    for name in (MODEL_FILE, SPEC_FILE, LABELS_FILE):
        try:
            stat = (folder / name).stat()
            values += [stat.st_size, stat.st_mtime_ns]
        except OSError:
            values += [-1, -1]
    return tuple(values)


def scan(repository: Path) -> dict[str, ModelOnDisk]:
    """Every model folder with at least one numbered version folder, by name (sorted)."""
    found: dict[str, ModelOnDisk] = {}
    if not repository.is_dir():
        return found
    for model_dir in sorted(repository.iterdir()):
        model = scan_model(model_dir)
        if model is not None:
            found[model.name] = model
    return found


def scan_model(model_dir: Path) -> ModelOnDisk | None:
    """One model folder (a cascade, or numbered versions); None when it is not a model. Pass only
    folders found on disk: a name from a request is never joined into a path."""
    if not model_dir.is_dir() or not MODEL_NAME_PATTERN.match(model_dir.name):
        return None
    if (model_dir / CASCADE_FILE).is_file():
        cascade = ModelOnDisk(model_dir.name, model_dir)
        try:
            cascade.cascade = read_cascade(model_dir)
        except ModelLoadError as exc:
            cascade.config_error = str(exc)
        return cascade
    versions = {
        int(p.name): VersionOnDisk(int(p.name), p, _signature(p))
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isdigit() and int(p.name) >= 1
    }
    if not versions:
        return None
    model = ModelOnDisk(model_dir.name, model_dir, versions)
    try:
        model.config = read_config(model_dir)
    except ModelLoadError as exc:
        model.config_error = str(exc)
    return model


# ------------------------------------------------------------------------------------- file checking
def read_spec(folder: Path, name: str, version: int) -> ModelSpec:
    """model.json, validated and consistent with where it lives. Cheap (no hashing)."""
    spec_path = folder / SPEC_FILE
    try:
        spec = ModelSpec.from_file(spec_path)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{spec_path} is missing") from exc
    except ValidationError as exc:
        raise ModelLoadError(f"{spec_path} is invalid: {_first_error(exc)}") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{spec_path} cannot be read: {exc}") from exc
    if spec.name != name or spec.version != version:
        raise ModelLoadError(
            f"{spec_path} describes {spec.name}/{spec.version}, but lives in {name}/{version}"
        )
    return spec


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class HashCache:
    """sha256 of files keyed by (path, size, mtime_ns), kept in a JSON file when one is writable, so a
    restart does not hash every graph again (b7's 266 MB costs seconds). A changed file misses."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._entries: dict[str, list[Any]] = {}
        if path is not None:
            try:
                loaded = json.loads(path.read_text())
                if isinstance(loaded, dict):
                    self._entries = {k: v for k, v in loaded.items() if isinstance(v, list) and len(v) == 3}
            except (OSError, ValueError):
                pass

    def sha256(self, path: Path) -> str:
        stat = path.stat()
        key = str(path.resolve())
        with self._lock:
            cached = self._entries.get(key)
        if cached is not None and cached[0] == stat.st_size and cached[1] == stat.st_mtime_ns:
            return str(cached[2])
        digest = file_sha256(path)
        with self._lock:
            self._entries[key] = [stat.st_size, stat.st_mtime_ns, digest]
            self._save()
        return digest

    def _save(self) -> None:
        if self._path is None:
            return
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._path.with_suffix(f".tmp{os.getpid()}")
            temporary.write_text(json.dumps(self._entries))
            os.replace(temporary, self._path)
        except (OSError, ValueError):
            self._path = None  # not writable here: hash every start, as before


def validate_files(
    folder: Path, name: str, version: int, hashes: HashCache | None = None
) -> tuple[ModelSpec, list[str]]:
    """Read and check model.json, labels.txt and model.onnx's digest. Blocking (may hash the graph)."""
    spec = read_spec(folder, name, version)
    model_path = folder / MODEL_FILE
    if not model_path.is_file():
        raise ModelLoadError(f"{model_path} is missing")
    digest = (hashes or HashCache(None)).sha256(model_path)
    if digest != spec.onnx_sha256:
        raise ModelLoadError(f"{model_path} does not match model.json's sha256 (truncated or replaced?)")
    try:
        labels = read_labels(folder / LABELS_FILE, spec.num_classes)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(str(exc)) from exc
    return spec, labels
