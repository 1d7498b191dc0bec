"""Parity of the fast path (JPEG draft decoding, crop-box resize, reducing_gap) with torchvision.

Reference: the image decoded by Pillow without draft, then torchvision's
``Resize(resize, interpolation=BICUBIC)`` + ``CenterCrop(crop)``, as the models were trained.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from service.preprocess.images import PreprocessSpec, preprocess

transforms = pytest.importorskip("torchvision.transforms")
skimage_data = pytest.importorskip("skimage.data")

B0 = PreprocessSpec(crop_size=224, resize_size=256, interpolation="bicubic")
B7 = PreprocessSpec(crop_size=600, resize_size=600, interpolation="bicubic")
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "chelsea": skimage_data.chelsea,
    "coffee": skimage_data.coffee,
    "astronaut": skimage_data.astronaut,
}
MAD_LIMIT = 2.0


@functools.cache
def _encoded(fmt: str, name: str, size: tuple[int, int] | None) -> bytes:
    im = Image.fromarray(PHOTOS[name]())
    if size is not None:
        im = im.resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {"compress_level": 1}))
    return buf.getvalue()


def _torchvision(data: bytes, spec: PreprocessSpec) -> np.ndarray:
    pipeline = transforms.Compose(
        [
            transforms.Resize(spec.resize_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(spec.crop_size),
        ]
    )
    with Image.open(io.BytesIO(data)) as im:
        out = pipeline(im.convert("RGB"))
    return np.asarray(out).transpose(2, 0, 1)


@pytest.mark.parametrize("spec", [B0, B7], ids=["b0", "b7"])
@pytest.mark.parametrize("size", [None, (1920, 1080)], ids=["original", "1080p"])
@pytest.mark.parametrize("name", list(PHOTOS))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_matches_torchvision(fmt: str, name: str, size: tuple[int, int] | None, spec: PreprocessSpec) -> None:
    data = _encoded(fmt, name, size)
    ours = preprocess(data, spec)
    theirs = _torchvision(data, spec)
    assert ours.shape == theirs.shape
    mad = float(np.abs(ours.astype(np.int16) - theirs).mean())
    print(f"parity {fmt} {name} {size} crop={spec.crop_size}: MAD {mad:.3f}")
    assert mad < MAD_LIMIT
