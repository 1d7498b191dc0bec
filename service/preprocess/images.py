"""Encoded image bytes -> the uint8 (3, crop, crop) array a model's graph takes.

The geometry is torchvision's ``Resize(resize_size)`` + ``CenterCrop(crop_size)`` on a PIL image
(same long-side rounding, same crop offsets), but computed in one Pillow resize restricted to the
crop's source region, so pixels that the crop throws away are never resampled.

Decisions:
- Format and size are checked first (formats.py): GIF decodes its first frame, TIFF its first page.
  Pillow's global MAX_IMAGE_PIXELS check is bypassed by instantiating the format plugin directly:
  our own limits, checked on the header's full-resolution size, are the only mechanism.
- Transparency is composited on white (what a viewer shows; dropping alpha would expose the
  arbitrary, often black, colour of fully transparent pixels).
- 16-bit samples are scaled to 8 bits (round(v * 255 / 65535)), never clipped. 32-bit integer
  images within [0, 65535] are treated as 16-bit, others are min-max stretched; float images in
  [0, 1] are scaled by 255, others min-max stretched. ICC profiles are ignored.
- EXIF orientation is applied. JPEGs are decoded at 1/2, 1/4 or 1/8 scale (libjpeg DCT scaling)
  when the shorter side stays at least resize_size.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from service.errors import (
    BadImage,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)
from service.model_spec import ModelSpec
from service.preprocess.formats import DEFAULT_LIMITS, DecodeLimits, check_format, check_size

_PLUGINS: Final[dict[str, type[ImageFile.ImageFile]]] = {
    "jpeg": JpegImagePlugin.JpegImageFile,
    "png": PngImagePlugin.PngImageFile,
    "gif": GifImagePlugin.GifImageFile,
    "bmp": BmpImagePlugin.BmpImageFile,
    "tiff": TiffImagePlugin.TiffImageFile,
    "webp": WebPImagePlugin.WebPImageFile,
}

_RESAMPLE: Final = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}

# Downscales by 4x or more first box-reduce by an integer factor (Pillow's reducing_gap): measured
# on a 1080p PNG -> 224 bicubic, 2.8x faster for a mean difference of 0.3 grey levels.
# JPEGs rarely reach it: draft decoding already leaves less than 2x to go.
_REDUCING_GAP: Final = 2.0

_EXIF_ORIENTATION_TAG: Final = 0x0112
_TRANSPOSE: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_ALPHA_MODES: Final = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


@dataclass(frozen=True)
class PreprocessSpec:
    """What a model needs from an image: torchvision's Resize(resize_size) + CenterCrop(crop_size)."""

    crop_size: int
    resize_size: int
    interpolation: Literal["nearest", "bilinear", "bicubic"]

    def __post_init__(self) -> None:
        if self.crop_size <= 0 or self.resize_size < self.crop_size:
            raise ValueError(f"need 0 < crop_size <= resize_size, got {self.crop_size}, {self.resize_size}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {self.interpolation!r}")

    @classmethod
    def from_model_spec(cls, spec: ModelSpec) -> PreprocessSpec:
        return cls(crop_size=spec.crop_size, resize_size=spec.resize_size, interpolation=spec.interpolation)


def configure_pillow(blocks_max: int = 16) -> None:
    """Process-wide Pillow settings; the engine calls this once at start.

    Keeping freed image memory blocks for reuse roughly halves decode time for repeated large
    images (measured: 1080p JPEG decode 7.7 -> 4.2 ms). Truncated images must stay errors, so the
    flag some libraries flip is put back explicitly.
    """
    Image.core.set_blocks_max(blocks_max)
    ImageFile.LOAD_TRUNCATED_IMAGES = False


def preprocess(data: bytes, spec: PreprocessSpec, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Encoded image -> uint8 (3, crop, crop), C-contiguous. Thread-safe; raises service.errors types."""
    fmt = check_format(data, limits)
    image, full_size, draft_factor = _decode(data, fmt, spec.resize_size, limits)
    return _resize_crop(image, full_size, draft_factor, spec)


def decode_rgb(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Encoded image -> its full-resolution RGB pixels, uint8 (H, W, 3), EXIF orientation applied,
    transparency on white: the input of the resize graph (service/preprocess/resize_graph.py)."""
    fmt = check_format(data, limits)
    image, _, _ = _decode(data, fmt, None, limits)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def _decode(
    data: bytes, fmt: str, resize_size: int | None, limits: DecodeLimits
) -> tuple[Image.Image, tuple[int, int], float]:
    """Decoded, oriented image in mode RGB or L; its full-resolution (oriented) size; draft factor.

    The draft factor maps full-resolution coordinates to the decoded image's (1, 1/2, 1/4, 1/8).
    Without a resize_size, JPEGs are decoded at full resolution (no draft).
    """
    try:
        # Calling the plugin directly (not Image.open) skips Pillow's global decompression-bomb
        # check: our own limits, checked next, are the only mechanism.
        im = _PLUGINS[fmt](io.BytesIO(data))
        full_size = im.size
        check_size(full_size, limits)
        draft_factor = 1.0
        if resize_size is not None and isinstance(im, JpegImagePlugin.JpegImageFile):
            drafted = im.draft("RGB", (resize_size, resize_size))
            if drafted is not None:
                draft_factor = drafted[1][2] / full_size[0]
        im.load()
        orientation = _orientation(im)
        work = _to_rgb_or_l(im)
    except ServiceError:
        raise
    except Image.DecompressionBombError as exc:  # a GIF frame's size, checked by the plugin itself
        raise PayloadTooLarge(f"image dimensions are too large: {exc}") from exc
    except MemoryError:
        raise
    except Exception as exc:  # Pillow raises a zoo of types (OSError, SyntaxError, ValueError, ...)
        raise BadImage(f"could not decode the {fmt.upper()} image: {str(exc) or type(exc).__name__}") from exc
    method = _TRANSPOSE.get(orientation)
    if method is not None:
        work = work.transpose(method)
        if orientation >= 5:  # 5..8 swap the axes
            full_size = (full_size[1], full_size[0])
    return work, full_size, draft_factor


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block should not sink an otherwise fine image
        return 1
    return value if isinstance(value, int) else 1


def _to_rgb_or_l(im: Image.Image) -> Image.Image:
    """Any decoded mode -> RGB, or L for single-channel images (converted to RGB after the crop)."""
    mode = im.mode
    if mode in ("RGB", "L", "P") and "transparency" in im.info:
        return _flatten_on_white(im.convert("RGBA"))
    if mode in ("RGB", "L"):
        return im
    if mode in _ALPHA_MODES:
        return _flatten_on_white(im if mode == "RGBA" else im.convert("RGBA"))
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I;16"):
        return Image.fromarray(_scale_16bit(np.asarray(im).astype(np.uint32)))
    if mode == "I":
        return Image.fromarray(_int_to_8bit(np.asarray(im).astype(np.int64)))
    if mode == "F":
        return Image.fromarray(_float_to_8bit(np.asarray(im).astype(np.float64)))
    try:
        return im.convert("RGB")  # P, CMYK, YCbCr, RGBX, ...
    except ValueError as exc:
        raise UnsupportedMediaType(f"images in colour mode {mode} are not supported") from exc


def _flatten_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, (255, 255, 255))
    background.paste(rgba, (0, 0), rgba)
    return background


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    return ((values * 255 + 32767) // 65535).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _int_to_8bit(values: np.ndarray) -> np.ndarray:
    if values.size and values.min() >= 0 and values.max() <= 65535:
        return _scale_16bit(values)
    return _stretch(values)


def _float_to_8bit(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    if values.size and values.min() >= 0.0 and values.max() <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    return _stretch(values)


def resized_size(width: int, height: int, resize_size: int) -> tuple[int, int]:
    """torchvision Resize(int) output (width, height): shorter side -> resize_size, long side truncated."""
    if width <= height:
        return resize_size, int(resize_size * height / width)
    return int(resize_size * width / height), resize_size


def crop_offsets(width: int, height: int, crop_size: int) -> tuple[int, int]:
    """torchvision CenterCrop's (left, top) for an image of this size (Python's round, half to even)."""
    return int(round((width - crop_size) / 2.0)), int(round((height - crop_size) / 2.0))


def _resize_crop(
    image: Image.Image, full_size: tuple[int, int], draft_factor: float, spec: PreprocessSpec
) -> np.ndarray:
    width, height = full_size
    out_w, out_h = resized_size(width, height, spec.resize_size)
    crop = spec.crop_size
    left, top = crop_offsets(out_w, out_h, crop)
    if (out_w, out_h) == image.size and draft_factor == 1.0:
        region = image.crop((left, top, left + crop, top + crop))
    else:
        # The crop's footprint in the decoded image's coordinates. Pillow's resampling with a box
        # uses the same kernel positions and weights as a full resize followed by a crop.
        sx = width / out_w * draft_factor
        sy = height / out_h * draft_factor
        box = (
            left * sx,
            top * sy,
            min((left + crop) * sx, float(image.width)),
            min((top + crop) * sy, float(image.height)),
        )
        resample = _RESAMPLE[spec.interpolation]
        region = image.resize((crop, crop), resample, box=box, reducing_gap=_REDUCING_GAP)
    if region.mode != "RGB":
        region = region.convert("RGB")
    return np.ascontiguousarray(np.asarray(region).transpose(2, 0, 1))
