"""The model repository: discover `<name>/<version>/` folders, validate their files, track state.

Only names found on disk become models; a name from a request is looked up in this table and never
joined into a path.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from pydantic import ValidationError

from service.model_spec import (
    LABELS_FILE,
    MODEL_FILE,
    MODEL_NAME_PATTERN,
    SPEC_FILE,
    ModelSpec,
    read_labels,
)

log = logging.getLogger(__name__)


class ModelState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


class ModelLoadError(Exception):
    """A model's files are missing, invalid or inconsistent; the message says which and why."""


@dataclass
class ModelEntry:
    """One model as the service sees it. `spec`/`labels` are set once its files validated."""

    name: str
    version: int | None
    path: Path | None
    state: ModelState = ModelState.LOADING
    reason: str | None = None
    spec: ModelSpec | None = None
    labels: list[str] = field(default_factory=list)
    provider: str | None = None
    load_seconds: float | None = None

    def fail(self, reason: str) -> None:
        self.state = ModelState.FAILED
        self.reason = reason


def _versions(model_dir: Path) -> list[int]:
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def discover(repository: Path, wanted: list[str]) -> dict[str, ModelEntry]:
    """Entries for every model in `repository` (or just `wanted`, in that order), newest version.

    Wanted names that are absent appear as FAILED entries, so that readiness reports them.
    """
    found: dict[str, ModelEntry] = {}
    if repository.is_dir():
        for model_dir in sorted(repository.iterdir()):
            if not model_dir.is_dir() or not MODEL_NAME_PATTERN.match(model_dir.name):
                continue
            versions = _versions(model_dir)
            if versions:
                found[model_dir.name] = ModelEntry(
                    model_dir.name, versions[-1], model_dir / str(versions[-1])
                )
    if not wanted:
        return found
    entries: dict[str, ModelEntry] = {}
    for name in wanted:
        if name in found:
            entries[name] = found[name]
        else:
            entry = ModelEntry(name, None, None)
            where = "no such folder" if not (repository / name).is_dir() else "no numbered version folder"
            entry.fail(f"model '{name}' not found in repository {repository} ({where})")
            entries[name] = entry
    return entries


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def validate_files(entry: ModelEntry) -> tuple[ModelSpec, list[str]]:
    """Read and check model.json, labels.txt and model.onnx's digest. Blocking (hashes the graph)."""
    assert entry.path is not None
    spec_path, model_path = entry.path / SPEC_FILE, entry.path / MODEL_FILE
    try:
        spec = ModelSpec.from_file(spec_path)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{spec_path} is missing") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(file)"
        raise ModelLoadError(f"{spec_path} is invalid: {where}: {first['msg']}") from exc
    if spec.name != entry.name or spec.version != entry.version:
        raise ModelLoadError(
            f"{spec_path} describes {spec.name}/{spec.version}, but lives in {entry.name}/{entry.version}"
        )
    if not model_path.is_file():
        raise ModelLoadError(f"{model_path} is missing")
    digest = file_sha256(model_path)
    if digest != spec.onnx_sha256:
        raise ModelLoadError(f"{model_path} does not match model.json's sha256 (truncated or replaced?)")
    try:
        labels = read_labels(entry.path / LABELS_FILE, spec.num_classes)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(str(exc)) from exc
    return spec, labels
