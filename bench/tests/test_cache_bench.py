"""The cache benchmark's tools: a "new" photo decodes to the same pixels under other bytes; quantiles."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bench.cache_priority import quantiles, unique


def test_a_unique_photo_decodes_the_same_under_other_bytes() -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(
        buffer, format="JPEG"
    )
    photo = buffer.getvalue()
    a, b = unique(photo, 1), unique(photo, 2)
    assert len({photo, a, b}) == 3
    pixels = [np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in (photo, a, b)]
    np.testing.assert_array_equal(pixels[0], pixels[1])
    np.testing.assert_array_equal(pixels[0], pixels[2])


def test_quantiles_in_milliseconds() -> None:
    figures = quantiles([i / 1000 for i in range(1, 101)])
    assert figures == {"n": 100, "p50_ms": 51.0, "p90_ms": 91.0, "p99_ms": 100.0}
    assert quantiles([]) == {}
