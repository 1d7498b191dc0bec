"""Class names from whatever a training run left behind: a text file (one per line), a JSON list, a JSON
`{index: name}` map (or Keras' `{index: [wnid, name]}`), or the training folder itself (one sub-folder
per class).

Folder order is the class index order the training library gave them: torchvision's `ImageFolder` sorts
the names as strings (`sorted`); timm's folder reader sorts them "naturally" (digit runs as numbers, case
folded), so `class2` comes before `class10` there and after it in torchvision.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from models.errors import ExportError

FolderOrder = Literal["sorted", "natural"]


def natural_key(name: str) -> list[int | str]:
    """timm's ordering of class folders (timm.utils.misc.natural_key)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name.lower())]


def read_labels(path: Path, *, folder_order: FolderOrder = "sorted") -> list[str]:
    """The class names at `path`, index order; ExportError (one line) for anything unusable."""
    if path.is_dir():
        return _from_folder(path, folder_order)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"cannot read labels {path}: {getattr(e, 'strerror', None) or e}") from None
    if path.suffix.lower() == ".json":
        labels = _from_json(path, text)
    else:
        labels = [line.strip() for line in text.splitlines()]
        labels = [label for label in labels if label]
    if not labels:
        raise ExportError(f"labels file {path} is empty")
    bad = [label for label in labels if "\n" in label or "\r" in label]
    if bad:
        raise ExportError(f"labels in {path} must be one line each: {bad[0]!r}")
    return labels


def check_count(labels: list[str], classes: int, source: Path | str) -> None:
    if len(labels) != classes:
        raise ExportError(f"{source} has {len(labels)} labels but the model has {classes} classes")


def _from_folder(path: Path, order: FolderOrder) -> list[str]:
    names = [entry.name for entry in path.iterdir() if entry.is_dir() and not entry.name.startswith(".")]
    if not names:
        raise ExportError(f"labels folder {path} has no class folders (one sub-folder per class)")
    return sorted(names, key=natural_key) if order == "natural" else sorted(names)


def _from_json(path: Path, text: str) -> list[str]:
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as e:
        raise ExportError(f"labels {path} is not valid JSON: {e.msg} (line {e.lineno})") from None
    if isinstance(loaded, list):
        if not all(isinstance(item, str) and item.strip() for item in loaded):
            raise ExportError(f"labels {path}: a JSON list must hold non-empty strings only")
        return [item.strip() for item in loaded]
    if isinstance(loaded, dict):
        try:
            indexed = {int(key): value for key, value in loaded.items()}
        except ValueError:
            raise ExportError(f"labels {path}: a JSON map needs integer keys (class index -> name)") from None
        # Keras' imagenet_class_index.json: {"0": ["n01440764", "tench"], ...}: the name is the last item.
        indexed = {
            i: value[-1]
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value)
            else value
            for i, value in indexed.items()
        }
        if sorted(indexed) != list(range(len(indexed))):
            raise ExportError(f"labels {path}: the map's indices must be 0..{len(indexed) - 1}, each once")
        if not all(isinstance(value, str) and value.strip() for value in indexed.values()):
            raise ExportError(f"labels {path}: every class name must be a non-empty string")
        return [indexed[i].strip() for i in range(len(indexed))]
    raise ExportError(f"labels {path}: JSON must be a list of names or an {{index: name}} map")
