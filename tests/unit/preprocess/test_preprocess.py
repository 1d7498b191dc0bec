"""Unit tests for service.preprocess.images: formats, modes, orientation, geometry, and bad input."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile

from service.errors import BadImage, EmptyBody, InvalidArgument, PayloadTooLarge, UnsupportedMediaType
from service.model_spec import ModelSpec
from service.preprocess import images as pp
from service.preprocess.formats import DecodeLimits, sniff_format
from service.preprocess.images import PreprocessSpec, preprocess

SMALL = PreprocessSpec(crop_size=32, resize_size=32, interpolation="bilinear")
B0 = PreprocessSpec(crop_size=224, resize_size=256, interpolation="bicubic")

RED = (220, 20, 40)


def encode(im: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def gradient(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus a little noise: content where resampling mistakes show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    arr = arr + rng.integers(0, 16, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def reference(im: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """What torchvision's Resize(int) + CenterCrop do to a PIL image, written out with Pillow."""
    w, h = im.size
    if w <= h:
        size = (spec.resize_size, int(spec.resize_size * h / w))
    else:
        size = (int(spec.resize_size * w / h), spec.resize_size)
    resample = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}.get(
        spec.interpolation, Image.Resampling.BICUBIC
    )
    resized = im.convert("RGB").resize(size, resample)
    left = int(round((size[0] - spec.crop_size) / 2.0))
    top = int(round((size[1] - spec.crop_size) / 2.0))
    crop = resized.crop((left, top, left + spec.crop_size, top + spec.crop_size))
    return np.asarray(crop).transpose(2, 0, 1)


def centre_pixel(out: np.ndarray) -> tuple[int, ...]:
    c = out.shape[1] // 2
    return tuple(int(v) for v in out[:, c, c])


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG written by hand, for what Pillow will not encode (16-bit RGB, lying headers)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


# --- output contract ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        B0,
        PreprocessSpec(600, 600, "bicubic"),
        PreprocessSpec(288, 288, "bicubic"),
        PreprocessSpec(240, 256, "bilinear"),
        PreprocessSpec(224, 256, "nearest"),
    ],
)
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_output_shape_dtype_contiguity(spec: PreprocessSpec, fmt: str) -> None:
    out = preprocess(encode(gradient(640, 480), fmt), spec)
    assert out.shape == (3, spec.crop_size, spec.crop_size)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous
    assert out.flags.writeable


@pytest.mark.parametrize(
    ("size", "spec"),
    [
        ((640, 480), B0),
        ((480, 640), B0),
        ((333, 517), PreprocessSpec(240, 256, "bilinear")),
        ((517, 333), PreprocessSpec(224, 256, "nearest")),
        ((300, 300), PreprocessSpec(288, 288, "bicubic")),
        ((200, 150), PreprocessSpec(600, 600, "bicubic")),  # upscaling
        ((257, 1000), B0),
    ],
)
def test_geometry_matches_resize_then_centre_crop(size: tuple[int, int], spec: PreprocessSpec) -> None:
    im = gradient(*size)
    out = preprocess(encode(im, "PNG"), spec)
    diff = np.abs(out.astype(np.int16) - reference(im, spec))
    assert diff.max() <= 1  # same kernel positions and weights; only fixed-point rounding may differ


def test_large_downscale_uses_reduce_but_stays_close() -> None:
    im = gradient(1920, 1080)
    out = preprocess(encode(im, "PNG"), B0)
    assert np.abs(out.astype(np.int16) - reference(im, B0)).mean() < 1.0


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(1920, 1080, (455, 256)), (1080, 1920, (256, 455)), (256, 256, (256, 256)), (3, 7, (256, 597))],
)
def test_resized_size_truncates_like_torchvision(width: int, height: int, expected: tuple[int, int]) -> None:
    assert pp.resized_size(width, height, 256) == expected


def test_crop_offsets_round_half_to_even() -> None:
    # (455 - 224) / 2 = 115.5 -> 116 ; (257 - 224) / 2 = 16.5 -> 16
    assert pp.crop_offsets(455, 257, 224) == (116, 16)


# --- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "kwargs", "tolerance"),
    [
        ("JPEG", {"quality": 95}, 6),
        ("PNG", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("BMP", {}, 0),
        ("GIF", {}, 0),
        ("TIFF", {}, 0),
        ("TIFF", {"compression": "tiff_lzw"}, 0),
    ],
)
def test_each_format_decodes(fmt: str, kwargs: dict[str, Any], tolerance: int) -> None:
    data = encode(Image.new("RGB", (48, 40), RED), fmt, **kwargs)
    out = preprocess(data, SMALL)
    expected = np.array(RED, dtype=np.int16)[:, None, None]
    if fmt == "GIF":  # palette quantisation may move the colour a little
        tolerance = 8
    assert np.abs(out.astype(np.int16) - expected).max() <= tolerance


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert centre_pixel(preprocess(data, SMALL)) == (255, 0, 0)


def test_multipage_tiff_uses_first_page() -> None:
    pages = [Image.new("RGB", (32, 32), (0, 200, 0)), Image.new("RGB", (32, 32), (0, 0, 200))]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert centre_pixel(preprocess(data, SMALL)) == (0, 200, 0)


# --- modes -------------------------------------------------------------------------------------


def test_grayscale_becomes_three_equal_channels() -> None:
    im = Image.fromarray(np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1)), "L")
    out = preprocess(encode(im, "PNG"), SMALL)
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])
    assert np.array_equal(out, reference(im, SMALL))


def test_grayscale_jpeg() -> None:
    out = preprocess(encode(Image.new("L", (64, 64), 90), "JPEG"), SMALL)
    assert np.abs(out.astype(int) - 90).max() <= 2


def test_rgba_is_composited_on_white() -> None:
    arr = np.zeros((32, 64, 4), dtype=np.uint8)
    arr[:, :32] = (255, 0, 0, 128)  # left: half-transparent red
    arr[:, 32:] = (0, 0, 0, 0)  # right: fully transparent black
    out = preprocess(encode(Image.fromarray(arr, "RGBA"), "PNG"), PreprocessSpec(32, 32, "nearest"))
    assert tuple(out[:, 16, 2]) == pytest.approx((255, 127, 127), abs=1)
    assert tuple(out[:, 16, 29]) == (255, 255, 255)


@pytest.mark.parametrize(("fmt", "kwargs"), [("WEBP", {"lossless": True}), ("TIFF", {})])
def test_alpha_in_other_formats(fmt: str, kwargs: dict[str, Any]) -> None:
    data = encode(Image.new("RGBA", (32, 32), (0, 0, 0, 0)), fmt, **kwargs)
    assert centre_pixel(preprocess(data, SMALL)) == (255, 255, 255)


def test_la_is_composited_on_white() -> None:
    data = encode(Image.new("LA", (32, 32), (0, 0)), "PNG")
    assert centre_pixel(preprocess(data, SMALL)) == (255, 255, 255)


def _palette_image() -> Image.Image:
    im = Image.new("P", (32, 32), 1)
    im.putpalette([0, 0, 0, 10, 200, 30, 0, 0, 255])
    im.paste(2, (0, 0, 16, 32))
    return im


def test_palette_png() -> None:
    out = preprocess(encode(_palette_image(), "PNG"), PreprocessSpec(32, 32, "nearest"))
    assert tuple(out[:, 16, 4]) == (0, 0, 255)
    assert tuple(out[:, 16, 28]) == (10, 200, 30)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_is_white(fmt: str) -> None:
    data = encode(_palette_image(), fmt, transparency=2)
    out = preprocess(data, PreprocessSpec(32, 32, "nearest"))
    assert tuple(out[:, 16, 4]) == (255, 255, 255)
    assert tuple(out[:, 16, 28]) == (10, 200, 30)


def test_rgb_png_with_transparent_colour() -> None:
    im = Image.new("RGB", (32, 32), (1, 2, 3))
    out = preprocess(encode(im, "PNG", transparency=(1, 2, 3)), SMALL)
    assert centre_pixel(out) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk(fmt: str) -> None:
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), fmt)
    out = preprocess(data, SMALL)
    assert np.abs(out.astype(int) - np.array([255, 0, 0])[:, None, None]).max() <= 3


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_gray_is_scaled_not_clipped(fmt: str) -> None:
    values = np.array([0, 1000, 32896, 65535], dtype=np.uint16)
    im = Image.fromarray(np.repeat(np.repeat(values[None, :], 32, axis=0), 8, axis=1))  # 32x32
    assert im.mode == "I;16"
    out = preprocess(encode(im, fmt), PreprocessSpec(32, 32, "nearest"))
    assert list(out[0, 4, 4::8]) == [0, 4, 128, 255]  # 1000 would clip to 255


def test_16bit_rgb_png_keeps_the_high_byte() -> None:
    row = b"\x00" + struct.pack(">3H", 1000, 0x8080, 0xFFFF) * 16
    data = png_bytes(16, 16, 16, 2, row * 16)
    assert centre_pixel(preprocess(data, SMALL)) == (3, 128, 255)


def test_int32_tiff_in_16bit_range() -> None:
    im = Image.fromarray(np.full((16, 16), 65535, dtype=np.int32))
    assert im.mode == "I"
    assert centre_pixel(preprocess(encode(im, "TIFF"), SMALL)) == (255, 255, 255)


def test_int32_tiff_out_of_range_is_stretched() -> None:
    arr = np.full((16, 32), -70000, dtype=np.int32)
    arr[:, 16:] = 200000
    out = preprocess(encode(Image.fromarray(arr), "TIFF"), PreprocessSpec(32, 32, "nearest"))
    assert (out[0, 16, 2], out[0, 16, 29]) == (0, 255)


def test_float_tiff_in_unit_range() -> None:
    arr = np.full((16, 16), 0.5, dtype=np.float32)
    out = preprocess(encode(Image.fromarray(arr, "F"), "TIFF"), SMALL)
    assert centre_pixel(out) == (128, 128, 128)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_bilevel(fmt: str) -> None:
    im = Image.new("1", (32, 32), 0)
    im.paste(1, (16, 0, 32, 32))
    out = preprocess(encode(im, fmt), PreprocessSpec(32, 32, "nearest"))
    assert tuple(out[:, 16, 2]) == (0, 0, 0)
    assert tuple(out[:, 16, 29]) == (255, 255, 255)


def test_one_pixel_image_is_upscaled() -> None:
    out = preprocess(encode(Image.new("RGB", (1, 1), RED), "PNG"), B0)
    assert out.shape == (3, 224, 224)
    assert np.all(out == np.array(RED, dtype=np.uint8)[:, None, None])


# --- EXIF orientation --------------------------------------------------------------------------


def _red_left_blue_right(width: int, height: int) -> Image.Image:
    im = Image.new("RGB", (width, height), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, width // 2, height))
    return im


def _with_orientation(im: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, "JPEG", quality=95, exif=exif.tobytes())


def test_exif_orientation_6_rotates_clockwise() -> None:
    im = _red_left_blue_right(80, 40)
    spec = PreprocessSpec(64, 64, "bilinear")
    plain = preprocess(_with_orientation(im, 1), spec)
    assert plain[0, 32, 5] > 200 and plain[2, 32, 58] > 200  # landscape: red left, blue right
    rotated = preprocess(_with_orientation(im, 6), spec)
    # Displayed after a 90 degree clockwise turn: portrait, the left (red) half on top.
    assert rotated[0, 5, 32] > 200 and rotated[2, 5, 32] < 50
    assert rotated[2, 58, 32] > 200 and rotated[0, 58, 32] < 50


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_orientation_with_draft_matches_transposed_reference(orientation: int) -> None:
    im = gradient(1100, 700)
    data = _with_orientation(im, orientation)
    decoded = Image.open(io.BytesIO(data))
    decoded.load()
    from PIL import ImageOps

    expected = reference(ImageOps.exif_transpose(decoded), B0)
    out = preprocess(data, B0)
    assert np.abs(out.astype(np.int16) - expected).mean() < 2.0


def test_tiff_orientation_tag() -> None:
    data = encode(_red_left_blue_right(80, 40), "TIFF", tiffinfo={0x0112: 6})
    rotated = preprocess(data, PreprocessSpec(64, 64, "bilinear"))
    assert rotated[0, 5, 32] > 200 and rotated[2, 58, 32] > 200


def test_malformed_exif_is_ignored() -> None:
    data = encode(Image.new("RGB", (32, 32), RED), "JPEG", quality=95, exif=b"Exif\x00\x00garbage!")
    assert np.abs(np.array(centre_pixel(preprocess(data, SMALL))) - RED).max() <= 6


# --- JPEG draft --------------------------------------------------------------------------------


def _spy_on_draft(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Record (size before, size after) of each draft call."""
    calls: list[tuple[tuple[int, int], tuple[int, int]]] = []
    original = pp.JpegImagePlugin.JpegImageFile.draft

    def draft(self: Any, mode: str | None, size: tuple[int, int] | None) -> Any:
        before = self.size
        result = original(self, mode, size)
        calls.append((before, self.size))
        return result

    monkeypatch.setattr(pp.JpegImagePlugin.JpegImageFile, "draft", draft)
    return calls


@pytest.mark.parametrize(
    ("size", "spec", "decoded"),
    [
        ((1920, 1080), B0, (480, 270)),  # 1/4 keeps 270 >= 256
        ((1920, 1080), PreprocessSpec(600, 600, "bicubic"), (1920, 1080)),  # 1/2 would give 540 < 600
        ((1100, 700), B0, (550, 350)),
        ((300, 260), B0, (300, 260)),
    ],
)
def test_draft_keeps_at_least_the_resize_size(
    monkeypatch: pytest.MonkeyPatch, size: tuple[int, int], spec: PreprocessSpec, decoded: tuple[int, int]
) -> None:
    calls = _spy_on_draft(monkeypatch)
    preprocess(encode(gradient(*size), "JPEG", quality=90), spec)
    assert calls == [(size, decoded)]
    assert min(decoded) >= spec.resize_size or decoded == size


# --- bad input ---------------------------------------------------------------------------------


def test_empty_body() -> None:
    with pytest.raises(EmptyBody):
        preprocess(b"", B0)


@pytest.mark.parametrize("data", [np.random.default_rng(1).bytes(5000), b"hello world", b"\x00"])
def test_random_bytes(data: bytes) -> None:
    with pytest.raises(BadImage, match="not a recognised image"):
        preprocess(data, B0)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize(
    "magic", [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x10\x00\x00WEBPVP8 ", b"BM", b"II*\x00"]
)
def test_right_magic_then_garbage(magic: bytes) -> None:
    with pytest.raises(BadImage, match="could not decode"):
        preprocess(magic + np.random.default_rng(2).bytes(3000), B0)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_truncated_image_is_an_error(fmt: str) -> None:
    data = encode(gradient(400, 300), fmt)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(BadImage) as info:
        preprocess(data[: len(data) // 2], B0)
    assert fmt in info.value.message


def test_truncated_progressive_jpeg_is_an_error() -> None:
    data = encode(gradient(400, 300), "JPEG", progressive=True)
    with pytest.raises(BadImage, match="truncated"):
        preprocess(data[:-200], B0)


def test_configure_pillow_resets_truncated_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = Image.core.get_blocks_max()
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    try:
        pp.configure_pillow(blocks_max=7)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is False
        assert Image.core.get_blocks_max() == 7
    finally:
        Image.core.set_blocks_max(blocks)


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>', "svg"),
        (b"%PDF-1.7\n", "pdf"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "avif"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "heif"),
        (b"8BPS\x00\x01", "psd"),
    ],
)
def test_unsupported_formats(data: bytes, name: str) -> None:
    assert sniff_format(data) == name
    with pytest.raises(UnsupportedMediaType, match=name):
        preprocess(data, B0)


def test_ico_is_unsupported() -> None:
    data = encode(Image.new("RGB", (16, 16)), "ICO")
    with pytest.raises(UnsupportedMediaType, match="ico"):
        preprocess(data, B0)


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp"), ("BMP", "bmp"), ("GIF", "gif"), ("TIFF", "tiff")],
)
def test_sniff_supported(fmt: str, name: str) -> None:
    assert sniff_format(encode(Image.new("RGB", (4, 4)), fmt)) == name


def test_sniff_unknown() -> None:
    assert sniff_format(b"just some text") is None
    assert sniff_format(b"") is None


# --- limits ------------------------------------------------------------------------------------


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every pixel decode (ImageFile.load) that happens."""
    calls: list[str] = []
    original: Callable[..., Any] = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> Any:
        calls.append(str(self.format))
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return calls


def test_png_bomb_is_rejected_before_decoding(loads: list[str]) -> None:
    # A 30000 x 30000 1-bit PNG whose data is one compressed row: the header alone must sink it.
    data = png_bytes(30000, 30000, 1, 0, b"\x00" * 3751)
    assert len(data) < 200
    with pytest.raises(PayloadTooLarge, match="30000x30000"):
        preprocess(data, B0)
    assert loads == []


def test_bomb_check_is_ours_not_pillows(monkeypatch: pytest.MonkeyPatch, loads: list[str]) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # Pillow's own check switched off
    with pytest.raises(PayloadTooLarge):
        preprocess(png_bytes(30000, 30000, 1, 0, b"\x00" * 3751), B0)
    assert loads == []
    # ...and Pillow's limit does not reject what ours allows.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert preprocess(encode(gradient(64, 64), "PNG"), SMALL).shape == (3, 32, 32)


def test_pixel_limit_is_configurable(loads: list[str]) -> None:
    data = encode(gradient(400, 300), "JPEG")
    with pytest.raises(PayloadTooLarge, match="120000 pixels"):
        preprocess(data, B0, DecodeLimits(max_pixels=100_000))
    assert loads == []
    assert preprocess(data, B0, DecodeLimits(max_pixels=120_000)).shape == (3, 224, 224)
    assert loads and set(loads) == {"JPEG"}  # the spy does see decodes


def test_jpeg_header_bomb(loads: list[str]) -> None:
    data = bytearray(encode(Image.new("RGB", (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width
    with pytest.raises(PayloadTooLarge):
        preprocess(bytes(data), B0)
    assert loads == []


def test_gif_screen_bomb(loads: list[str]) -> None:
    data = bytearray(encode(Image.new("RGB", (16, 16)), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen size
    with pytest.raises(PayloadTooLarge):
        preprocess(bytes(data), B0)
    assert loads == []


def test_webp_header_bomb_never_reaches_libwebp(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[bytes] = []
    monkeypatch.setattr(pp.WebPImagePlugin.WebPImageFile, "_open", lambda self: opened.append(b""))
    # VP8X header: canvas (width - 1, height - 1) as 24-bit little endian.
    header = b"VP8X" + struct.pack("<I", 10) + b"\x00" * 4 + (16383).to_bytes(3, "little") * 2
    data = b"RIFF" + struct.pack("<I", 4 + len(header)) + b"WEBP" + header
    with pytest.raises(PayloadTooLarge, match="16384x16384"):
        preprocess(data, B0)
    assert opened == []


def test_zero_size_header() -> None:
    with pytest.raises(BadImage):
        preprocess(png_bytes(0, 10, 8, 0, b""), B0)


@pytest.mark.parametrize("size", [(1, 300), (300, 2), (20000, 10)])
def test_extreme_aspect_ratio_is_rejected(size: tuple[int, int], loads: list[str]) -> None:
    with pytest.raises(InvalidArgument, match="aspect ratio"):
        preprocess(encode(Image.new("RGB", size), "PNG"), B0)
    assert loads == []


def test_aspect_ratio_limit_is_configurable() -> None:
    data = encode(Image.new("RGB", (2, 150)), "PNG")  # 75:1
    assert preprocess(data, B0).shape == (3, 224, 224)
    with pytest.raises(InvalidArgument):
        preprocess(data, B0, DecodeLimits(max_aspect_ratio=50))


def test_invalid_specs_and_limits() -> None:
    with pytest.raises(ValueError):
        PreprocessSpec(crop_size=256, resize_size=224, interpolation="bicubic")
    with pytest.raises(ValueError):
        PreprocessSpec(crop_size=224, resize_size=256, interpolation="lanczos")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DecodeLimits(max_aspect_ratio=0.5)


def test_from_model_spec() -> None:
    spec = ModelSpec.model_validate(
        {
            "name": "b1",
            "version": 1,
            "variant": "efficientnet_b1",
            "architecture": "torchvision.efficientnet_b1",
            "crop_size": 240,
            "resize_size": 255,
            "interpolation": "bilinear",
            "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
            "inputs": [{"name": "pixels", "dtype": "uint8", "shape": [-1, 3, 240, 240]}],
            "outputs": [
                {"name": "logits", "dtype": "float32", "shape": [-1, 1000]},
                {"name": "probabilities", "dtype": "float32", "shape": [-1, 1000]},
            ],
            "num_classes": 1000,
            "weights": {"kind": "random", "seed": 0},
            "parameters": 7_794_184,
            "gmacs": 0.69,
            "opset": 17,
            "exporter": {"torch": "2.14.1"},
            "onnx_sha256": "0" * 64,
        }
    )
    assert PreprocessSpec.from_model_spec(spec) == PreprocessSpec(240, 255, "bilinear")


# --- concurrency -------------------------------------------------------------------------------


def test_thread_pool_results_match_serial() -> None:
    bodies = [encode(gradient(640 + 16 * i, 480, seed=i), "JPEG" if i % 2 else "PNG") for i in range(8)]
    serial = [preprocess(b, B0) for b in bodies]
    with ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(lambda b: preprocess(b, B0), bodies * 2))
    for i, out in enumerate(parallel):
        assert np.array_equal(out, serial[i % len(bodies)])
