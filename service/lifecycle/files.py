"""A version folder's files, read and checked: `model.json` (the spec), `labels.txt`, and the digest of
`model.onnx` against the spec (with a cache of digests, so restarts do not rehash every graph).

The folder is the truth for a model's name and version (Triton's rule): a `model.json` copied with its
folder (`cp -r lite0/1 lite0/2`) still records the old ones, which is shown, never a failure."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.model_spec import LABELS_FILE, MODEL_FILE, SPEC_FILE, ModelSpec, read_labels


class ModelLoadError(Exception):
    """A model's files are missing, invalid or inconsistent; the message says which and why."""


def first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(file)"
    return f"{where}: {first['msg']}"


def read_spec(folder: Path) -> ModelSpec:
    """model.json, validated. Cheap (no hashing)."""
    spec_path = folder / SPEC_FILE
    try:
        return ModelSpec.from_file(spec_path)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{spec_path} is missing") from exc
    except ValidationError as exc:
        raise ModelLoadError(f"{spec_path} is invalid: {first_error(exc)}") from exc
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{spec_path} cannot be read: {exc}") from exc


def recorded_identity(spec: ModelSpec, name: str, version: int) -> str | None:
    """`name/version` as model.json records it, when that differs from the folder it lives in."""
    if spec.name == name and spec.version == version:
        return None
    return f"{spec.name}/{spec.version}"


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


def validate_files(folder: Path, hashes: HashCache | None = None) -> tuple[ModelSpec, list[str]]:
    """Read and check model.json, labels.txt and model.onnx's digest. Blocking (may hash the graph)."""
    spec = read_spec(folder)
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
