"""The real-photo set: scikit-image's photos plus deterministic crops and flips, as model input.

Two disjoint sets of views of the same photos:
- the *agreement* set (what the export gate compares a lower-precision graph on): each whole photo,
  its mirror image, and two 80 % corner crops (one of them mirrored);
- the *calibration* set (what int8 activation ranges are measured on): a 60 % centre crop, a 70 %
  top-right crop and a mirrored 70 % bottom-left crop of each photo.
Every view is encoded as a JPEG (quality 95) and preprocessed by `service.preprocess.images`, exactly as the
server would preprocess an upload, at the model's own resolution.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from service.preprocess.images import PreprocessSpec, preprocess

# Photographs of things ImageNet knows, shipped inside scikit-image (no download).
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "clock", "moon", "hubble_deep_field")
JPEG_QUALITY = 95

View = Callable[[np.ndarray], np.ndarray]


def _corner(fraction: float, bottom: bool, right: bool) -> View:
    def crop(image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        h, w = int(height * fraction), int(width * fraction)
        top, left = (height - h if bottom else 0), (width - w if right else 0)
        return image[top : top + h, left : left + w]

    return crop


def _centre(fraction: float) -> View:
    def crop(image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        h, w = int(height * fraction), int(width * fraction)
        top, left = (height - h) // 2, (width - w) // 2
        return image[top : top + h, left : left + w]

    return crop


def _mirrored(view: View) -> View:
    return lambda image: view(image)[:, ::-1]


def _whole(image: np.ndarray) -> np.ndarray:
    return image


AGREEMENT_VIEWS: tuple[tuple[str, View], ...] = (
    ("whole", _whole),
    ("mirrored", _mirrored(_whole)),
    ("top-left 80%", _corner(0.8, bottom=False, right=False)),
    ("bottom-right 80% mirrored", _mirrored(_corner(0.8, bottom=True, right=True))),
)
CALIBRATION_VIEWS: tuple[tuple[str, View], ...] = (
    ("centre 60%", _centre(0.6)),
    ("top-right 70%", _corner(0.7, bottom=False, right=True)),
    ("bottom-left 70% mirrored", _mirrored(_corner(0.7, bottom=True, right=False))),
)
AGREEMENT_SET = (
    f"scikit-image {', '.join(PHOTOS)}; each whole, mirrored, top-left 80% crop, mirrored bottom-right "
    "80% crop; JPEG q95, preprocessed by service.preprocess.images"
)


@dataclass(frozen=True)
class PhotoSet:
    names: tuple[str, ...]  # "<photo>: <view>"
    pixels: np.ndarray  # uint8 (N, 3, crop, crop)


@cache
def _photo(name: str) -> np.ndarray:
    from skimage import data

    image = np.asarray(getattr(data, name)())
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _jpeg(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _build(views: tuple[tuple[str, View], ...], spec: PreprocessSpec) -> PhotoSet:
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for photo in PHOTOS:
        image = _photo(photo)
        for label, view in views:
            names.append(f"{photo}: {label}")
            arrays.append(preprocess(_jpeg(view(image)), spec))
    return PhotoSet(tuple(names), np.stack(arrays))


def agreement_set(spec: PreprocessSpec) -> PhotoSet:
    return _build(AGREEMENT_VIEWS, spec)


def calibration_set(spec: PreprocessSpec) -> PhotoSet:
    return _build(CALIBRATION_VIEWS, spec)
