"""Deterministic, photo-like JPEG request bodies at 1920x1080 and at a model's own crop size.

Photos come from scikit-image's bundled samples (no download). Upscaled photos are smooth, which
makes JPEGs unrealistically small and quick to decode, so mild sensor-like noise is added: the
1080p files land at a few hundred KB at quality 90, like phone pictures.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

FULL_HD = (1920, 1080)
_SAMPLES = ("chelsea", "coffee", "astronaut", "rocket")
_NOISE_SIGMA = 4.0
_QUALITY = 90


def _sample_photos() -> list[np.ndarray]:
    from skimage import data  # imported late: only the bench needs scikit-image

    return [np.asarray(getattr(data, name)())[..., :3] for name in _SAMPLES]


def _cover(photo: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Resize to cover `size`, then centre-crop to it (keeps the aspect ratio of the content)."""
    width, height = size
    scale = max(width / photo.width, height / photo.height)
    resized = photo.resize(
        (round(photo.width * scale), round(photo.height * scale)), Image.Resampling.BICUBIC
    )
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def make_jpegs(size: tuple[int, int], count: int = 4, seed: int = 0) -> list[bytes]:
    """`count` distinct JPEGs of `size` (width, height)."""
    rng = np.random.default_rng(seed)
    photos = _sample_photos()
    bodies = []
    for i in range(count):
        base = np.asarray(_cover(Image.fromarray(photos[i % len(photos)]), size), dtype=np.float32)
        noisy = np.clip(base + rng.normal(0.0, _NOISE_SIGMA, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noisy).save(buffer, format="JPEG", quality=_QUALITY)
        bodies.append(buffer.getvalue())
    return bodies
