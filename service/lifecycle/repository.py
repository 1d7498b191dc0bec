"""The model repository on disk: `<name>/[config.json]` and `<name>/<version>/{model.onnx, model.json,
labels.txt}`, or `<name>/cascade.json`. Scanning only: what is there, and a signature of each version's
files so a change is noticed; reading them is `files.py`'s job, loading them the manager's.

Only names found on disk become models; a name from a request is looked up in the manager's table and
never joined into a path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from service.lifecycle.configs import (
    CASCADE_FILE,
    CONFIG_FILE,
    DEFAULT_CONFIG,
    CascadeSpec,
    ModelConfig,
    read_cascade,
    read_config,
)
from service.lifecycle.files import ModelLoadError
from service.model_spec import LABELS_FILE, MODEL_FILE, MODEL_NAME_PATTERN, SPEC_FILE


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
    signature: tuple[int, ...] = ()  # of config.json and cascade.json


_VERSION_FILES = (MODEL_FILE, SPEC_FILE, LABELS_FILE)


def _signature(folder: Path, names: tuple[str, ...] = _VERSION_FILES) -> tuple[int, ...]:
    values: list[int] = []
    for name in names:
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
    own_files = _signature(model_dir, (CONFIG_FILE, CASCADE_FILE))
    if (model_dir / CASCADE_FILE).is_file():
        cascade = ModelOnDisk(model_dir.name, model_dir, signature=own_files)
        try:
            cascade.cascade = read_cascade(model_dir)
        except ModelLoadError as exc:
            cascade.config_error = str(exc)
        return cascade
    versions = {
        int(p.name): VersionOnDisk(int(p.name), p, _signature(p))
        for p in model_dir.iterdir()
        if p.is_dir() and p.name.isascii() and p.name.isdigit() and int(p.name) >= 1
    }
    if not versions:
        return None
    model = ModelOnDisk(model_dir.name, model_dir, versions, signature=own_files)
    try:
        model.config = read_config(model_dir)
    except ModelLoadError as exc:
        model.config_error = str(exc)
    return model
