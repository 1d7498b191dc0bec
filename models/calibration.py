"""int8 calibration on the user's own photos (`python -m models.export ... --precision int8
--calibration DIR`), with the agreement gate measured on a held-out part of the same folder.

The split is deterministic (`service.client.dataset.split`: one photo in five, chosen by a hash of its
relative path) and recorded in `model.json`: `agreement.image_set` names the held-out photos and the
rule, the exporter's `quantizer` entry the calibration part. DIR is a folder of class folders or a CSV
of file,label (labels are not used: any folder of images also works).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.errors import ExportError
from models.labelled import pixels
from models.photos import PhotoSet
from service.client.dataset import IMAGE_SUFFIXES, SPLIT_RULE, DatasetError, Sample, read_dataset, split
from service.preprocess.images import PreprocessSpec

# ORT's percentile (histogram) calibrator keeps every intermediate activation of every calibration photo
# in memory before it builds the histograms: about 60 MB per photo for lite0 at 224 px (256 photos took
# 15 GB here), more for bigger models. 64 photos keep it to a few GB; the default calibration uses 27.
MAX_CALIBRATION = 64
MIN_HELD_OUT = 4


@dataclass(frozen=True)
class UserPhotos:
    source: Path
    calibration: np.ndarray  # uint8 (N, 3, S, S)
    calibration_count: int
    available: int
    held_out: PhotoSet

    @property
    def image_set(self) -> str:
        return f"{len(self.held_out.names)} held-out photos of {self.source} ({SPLIT_RULE})"

    def describe(self, method: str) -> str:
        """The quantiser's own description with the user's photos in place of the scikit-image views."""
        used = f"{self.calibration_count} photos of {self.source} (not held out"
        used += (
            f"; {MAX_CALIBRATION} of {self.available}, evenly spaced in path order)"
            if self.available > self.calibration_count
            else ")"
        )
        return method.replace("the real-photo calibration views", used)


def _samples(source: Path) -> list[Sample]:
    try:
        return read_dataset(source)
    except DatasetError as e:
        if source.is_dir():
            loose = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if loose:
                return [Sample(p, "", p.relative_to(source).as_posix()) for p in loose]
        raise ExportError(f"--calibration: {e}") from None


def user_photos(source: Path, spec: PreprocessSpec) -> UserPhotos:
    rest, held = split(_samples(source))
    if len(held) < MIN_HELD_OUT or not rest:
        raise ExportError(
            f"--calibration {source}: {len(rest) + len(held)} photos leave {len(held)} held out; "
            f"the agreement gate needs at least {MIN_HELD_OUT} (give about {5 * MIN_HELD_OUT} photos or more)"
        )
    # Evenly spaced through the set (it is in class order), so every class has its say.
    chosen = (
        [rest[i * len(rest) // MAX_CALIBRATION] for i in range(MAX_CALIBRATION)]
        if len(rest) > MAX_CALIBRATION
        else rest
    )
    return UserPhotos(
        source=source,
        calibration=pixels(chosen, spec),
        calibration_count=len(chosen),
        available=len(rest),
        held_out=PhotoSet(tuple(s.key for s in held), pixels(held, spec)),
    )
