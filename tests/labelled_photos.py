"""A small labelled photo set built from scikit-image's photos, for the tiny colour model.

Each photo, in grey, is tinted red, green or blue: *strongly* (the colour dominates: every tiny model
answers it, confidently) or *weakly* (grey still dominates: a model that weighs grey more answers
"grey", and is not very sure). The class folders are the tint's name, so the labels are the truth.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "camera")
TINTS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0)}
# Stage 2 of the test cascade (confident and right) and stage 1 (scaled down, weighs grey more:
# right on strong tints, unsure and wrong on weak ones).
STRONG_WEIGHTS = ((1.0, 0.0, 0.0, 0.34), (0.0, 1.0, 0.0, 0.34), (0.0, 0.0, 1.0, 0.34))
WEAK_WEIGHTS = tuple(tuple(0.05 * w for w in row) for row in ((1, 0, 0, 0.5), (0, 1, 0, 0.5), (0, 0, 1, 0.5)))


def _grey(name: str) -> np.ndarray:
    from skimage import data

    image = np.asarray(getattr(data, name)(), dtype=np.float32)
    if image.ndim == 3:
        image = image[..., :3].mean(axis=2)
    return image


def tinted(name: str, colour: str, strong: bool) -> bytes:
    grey = _grey(name)
    keep, add = (0.2, 200.0) if strong else (0.6, 60.0)
    channels = [keep * grey + add * weight for weight in TINTS[colour]]
    image = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).resize((96, 96)).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def labelled_folder(root: Path, weak: bool = True) -> Path:
    """root/<colour>/<photo>-strong.jpg (and -weak.jpg): 12 or 24 photos in 3 class folders."""
    for colour in TINTS:
        (root / colour).mkdir(parents=True, exist_ok=True)
        for name in PHOTOS:
            (root / colour / f"{name}-strong.jpg").write_bytes(tinted(name, colour, True))
            if weak:
                (root / colour / f"{name}-weak.jpg").write_bytes(tinted(name, colour, False))
    return root
