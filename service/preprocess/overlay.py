"""A class activation map drawn over the photo it explains: PNG, at the photo's own size and
orientation (EXIF applied), the map stretched over the region the model saw (Resize + CenterCrop,
the same geometry as images.py) and that crop outlined."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from service.preprocess.formats import DEFAULT_LIMITS, DecodeLimits
from service.preprocess.images import PreprocessSpec, crop_offsets, decode_rgb, resized_size

ALPHA = 0.5  # the map's share of each pixel where the map is at its strongest
# A "jet"-like colour map: blue (low) -> cyan -> yellow -> red (high), as (position, RGB) stops.
_STOPS = np.array([0.0, 0.35, 0.65, 1.0])
_COLOURS = np.array([[0, 0, 160], [0, 200, 255], [255, 230, 0], [220, 0, 0]], dtype=np.float32)


def crop_box(width: int, height: int, spec: PreprocessSpec) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in the photo's pixels of the crop the model saw."""
    resized_w, resized_h = resized_size(width, height, spec.resize_size)
    left, top = crop_offsets(resized_w, resized_h, spec.crop_size)
    sx, sy = width / resized_w, height / resized_h
    return left * sx, top * sy, (left + spec.crop_size) * sx, (top + spec.crop_size) * sy


def colour(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> float32 RGB (…, 3)."""
    channels = [np.interp(values, _STOPS, _COLOURS[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.float32)


def normalised(cam: np.ndarray) -> np.ndarray:
    """The map scaled to [0, 1] (its minimum 0, its maximum 1; a flat map is all zero)."""
    cam = np.asarray(cam, dtype=np.float32)
    low, high = float(cam.min()), float(cam.max())
    return np.zeros_like(cam) if high - low <= 1e-12 else (cam - low) / (high - low)


def overlay_png(
    data: bytes, cam: np.ndarray, spec: PreprocessSpec, limits: DecodeLimits = DEFAULT_LIMITS
) -> bytes:
    """The photo with `cam` (h, w) blended over its crop region, the crop outlined; PNG bytes."""
    photo = decode_rgb(data, limits)
    height, width = photo.shape[:2]
    left, top, right, bottom = crop_box(width, height, spec)
    box = (round(left), round(top), round(right), round(bottom))
    size = (max(1, box[2] - box[0]), max(1, box[3] - box[1]))
    heat = Image.fromarray(normalised(cam)).resize(size, Image.Resampling.BILINEAR)
    values = np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)
    out = photo.astype(np.float32)
    # The crop may reach past the photo by a rounding pixel: clip both sides alike.
    x0, y0 = max(box[0], 0), max(box[1], 0)
    x1, y1 = min(box[0] + size[0], width), min(box[1] + size[1], height)
    part = values[y0 - box[1] : y1 - box[1], x0 - box[0] : x1 - box[0]]
    alpha = (ALPHA * (0.3 + 0.7 * part))[..., None]
    out[y0:y1, x0:x1] = (1 - alpha) * out[y0:y1, x0:x1] + alpha * colour(part)
    image = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    line = max(2, round(min(width, height) / 200))
    ImageDraw.Draw(image).rectangle((x0, y0, x1 - 1, y1 - 1), outline=(255, 255, 255), width=line)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
