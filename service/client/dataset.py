"""A labelled photo set, as people keep one: a folder of class folders, or a CSV of file,label.

- Folder: each sub-folder is a class (its name the label, as torchvision's and timm's ImageFolder read
  it); the image files under it, recursively, are its photos. Files at the top level are ignored.
- CSV: a header naming a `file` (or `path`, `image`) column and a `label` (or `class_id`, `class`) column,
  e.g. `file,class_id,wnid`; or no header and two columns, file then label. Paths are relative to the
  CSV's folder.

A label is matched to a model's classes by name (exactly, else ignoring case) or as a class index.
Used by `python -m service eval` and by the export-time tools (`models.measure`, `models.cascade
--tune`, `models.export --calibration`), so all of them read the same photos the same way.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
FILE_COLUMNS = ("file", "path", "image", "filename")
LABEL_COLUMNS = ("label", "class_id", "class", "class_name")
HOLD_OUT_ONE_IN = 5  # a deterministic fifth of a folder is held out (see `split`)


class DatasetError(ValueError):
    """A labelled set that cannot be used as given; the message is one line that says why."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: str
    key: str  # the path relative to the set's root: what the held-out split hashes


def read_dataset(source: Path) -> list[Sample]:
    """The labelled photos of a folder of class folders or a CSV, in a stable order."""
    if source.is_dir():
        return _from_folder(source)
    if source.is_file():
        return _from_csv(source)
    raise DatasetError(f"no such folder or CSV file: {source}")


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _from_folder(root: Path) -> list[Sample]:
    samples = [
        Sample(path, label.name, path.relative_to(root).as_posix())
        for label in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        for path in _images_under(label)
    ]
    if not samples:
        loose = _images_under(root)
        hint = f" ({len(loose)} images, but not in class folders)" if loose else ""
        raise DatasetError(
            f"{root} has no labelled photos{hint}: give a folder of class folders (CLASS/photo.jpg) "
            "or a CSV of file,label"
        )
    return samples


def _from_csv(path: Path) -> list[Sample]:
    try:
        rows = [row for row in csv.reader(path.read_text(encoding="utf-8-sig").splitlines()) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"cannot read {path} as a CSV: {exc}") from None
    if not rows:
        raise DatasetError(f"{path} is empty: expected rows of file,label")
    header = [cell.strip().lower() for cell in rows[0]]
    file_column = next((header.index(c) for c in FILE_COLUMNS if c in header), None)
    label_column = next((header.index(c) for c in LABEL_COLUMNS if c in header), None)
    if file_column is not None and label_column is not None:
        rows = rows[1:]
    elif file_column is None and label_column is None:
        file_column, label_column = 0, 1
    else:
        raise DatasetError(
            f"{path}: a header needs a file column ({'/'.join(FILE_COLUMNS)}) and a label column "
            f"({'/'.join(LABEL_COLUMNS)}), got {', '.join(header)}"
        )
    samples: list[Sample] = []
    missing: list[str] = []
    for number, row in enumerate(rows, start=1):
        if len(row) <= max(file_column, label_column) or not row[label_column].strip():
            raise DatasetError(f"{path}: row {number} has no file and label: {','.join(row)}")
        name, label = row[file_column].strip(), row[label_column].strip()
        file = (path.parent / name).resolve()
        if not file.is_file():
            missing.append(name)
        samples.append(Sample(file, label, name))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DatasetError(
            f"{path}: {len(missing)} of {len(samples)} files are missing: {', '.join(missing[:3])}{more}"
        )
    if not samples:
        raise DatasetError(f"{path} lists no photos")
    return samples


def resolve_labels(labels: Sequence[str], classes: Sequence[str] | int) -> dict[str, int]:
    """Each distinct label -> the model's class index: by name, else by name ignoring case, else as an
    index. `classes` is the model's label list, or only its class count (then names cannot be checked
    and stay out of the map). Raises DatasetError naming the labels that match no class."""
    names = list(classes) if not isinstance(classes, int) else []
    count = len(names) if names else int(classes)  # type: ignore[arg-type]
    exact = {name: index for index, name in enumerate(names)}
    folded: dict[str, int] = {}
    for index, name in enumerate(names):
        folded.setdefault(name.casefold(), index)
    mapping: dict[str, int] = {}
    unknown: list[str] = []
    for label in dict.fromkeys(labels):
        if label in exact:
            mapping[label] = exact[label]
        elif label.casefold() in folded:
            mapping[label] = folded[label.casefold()]
        elif label.isdigit() and int(label) < count:
            mapping[label] = int(label)
        elif names or label.isdigit():
            unknown.append(label)
        # else: a name, and no label list to check it against: matched by name in the answers
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        shown = ", ".join(repr(label) for label in unknown[:5])
        raise DatasetError(
            f"{len(unknown)} labels match none of the model's {count} classes (by name or index): "
            f"{shown}{more}"
        )
    return mapping


def shared_names(classes: Sequence[str]) -> set[str]:
    """Class names (case-folded) that more than one class carries (ImageNet has `crane` the bird and
    `crane` the machine): a label with such a name is right for any of them."""
    seen: set[str] = set()
    shared: set[str] = set()
    for name in classes:
        (shared if name.casefold() in seen else seen).add(name.casefold())
    return shared


def held_out(sample: Sample) -> bool:
    """One photo in HOLD_OUT_ONE_IN, chosen by the sha256 of its relative path: the same photos on every
    run and machine, whatever else is added to the folder."""
    digest = hashlib.sha256(sample.key.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % HOLD_OUT_ONE_IN == 0


def split(samples: Sequence[Sample]) -> tuple[list[Sample], list[Sample]]:
    """(the rest, the held-out part) of a set; see `held_out`."""
    rest = [s for s in samples if not held_out(s)]
    return rest, [s for s in samples if held_out(s)]


SPLIT_RULE = (
    f"held out: 1 in {HOLD_OUT_ONE_IN} photos, those whose sha256(relative path) as a big-endian uint32 "
    f"is divisible by {HOLD_OUT_ONE_IN}"
)
