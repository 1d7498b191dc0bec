"""What an upload is, checked before any decoder sees it: its format from the magic bytes (accepted:
JPEG, PNG, WebP, BMP, GIF, TIFF; other recognised formats are UnsupportedMediaType, unrecognised bytes
BadImage) and its size from the header (pixel count and aspect ratio limits), so a decompression bomb
is refused without decoding a pixel. Every decoding path (Pillow, GPU) runs these first."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Final

from PIL import JpegImagePlugin, WebPImagePlugin

from service.errors import BadImage, EmptyBody, InvalidArgument, PayloadTooLarge, UnsupportedMediaType

SUPPORTED_FORMATS: Final = frozenset({"jpeg", "png", "webp", "bmp", "gif", "tiff"})
_ACCEPTED_LIST: Final = "JPEG, PNG, WebP, BMP, GIF or TIFF"


@dataclass(frozen=True)
class DecodeLimits:
    """Limits checked on the image header, before decoding."""

    max_pixels: int = 40_000_000  # width * height at full resolution, as the header states it
    # Longer side / shorter side. Beyond this the centre crop would show a sliver of the image.
    max_aspect_ratio: float = 100.0

    def __post_init__(self) -> None:
        if self.max_pixels <= 0 or self.max_aspect_ratio < 1.0:
            raise ValueError("max_pixels must be positive and max_aspect_ratio at least 1")


DEFAULT_LIMITS: Final = DecodeLimits()


def sniff_format(data: bytes) -> str | None:
    """Name of the image format from its magic bytes, supported or not; None when unrecognised.

    Check the result against SUPPORTED_FORMATS before accepting it.
    """
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"BM"):
        return "bmp"
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "tiff"
    return _sniff_unsupported(data)


def _sniff_unsupported(data: bytes) -> str | None:
    head = data[:32]
    if head.startswith(b"%PDF"):
        return "pdf"
    if head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):
        return "postscript"
    if head.startswith(b"\x00\x00\x01\x00"):
        return "ico"
    if head.startswith(b"\x00\x00\x02\x00"):
        return "cur"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "avif" if brand in (b"avif", b"avis") else "heif"
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "jpeg2000"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "jpegxl"
    if head.startswith(b"8BPS"):
        return "psd"
    if head.startswith(b"qoif"):
        return "qoi"
    if head.startswith(b"DDS "):
        return "dds"
    if head.startswith(b"icns"):
        return "icns"
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"1234567" and head[2:3].isspace():
        return "pnm"
    text = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith(b"<") and b"<svg" in text:
        return "svg"
    return None


def check_format(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> str:
    """The checks every decoder path runs first: non-empty, a supported format; for WebP (whose
    library allocates the canvas on open) the header's size. Returns the format name."""
    if not data:
        raise EmptyBody("the request body is empty; send an encoded image")
    fmt = sniff_format(data)
    if fmt is None:
        raise BadImage(f"the body is not a recognised image; send {_ACCEPTED_LIST}")
    if fmt not in SUPPORTED_FORMATS or (fmt == "webp" and not WebPImagePlugin.SUPPORTED):
        raise UnsupportedMediaType(f"image format {fmt!r} is not accepted; send {_ACCEPTED_LIST}")
    if fmt == "webp":
        # libwebp allocates the whole canvas when the file is opened, so check its header first.
        size = _webp_header_size(data)
        if size is not None:
            check_size(size, limits)
    return fmt


def jpeg_header(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS) -> tuple[tuple[int, int], str]:
    """A JPEG's (width, height) and Pillow mode from its header alone, size limits checked; nothing
    is decoded. For decoders other than Pillow (GPU), which must not see an image over the limits."""
    try:
        im = JpegImagePlugin.JpegImageFile(io.BytesIO(data))
    except Exception as exc:
        raise BadImage(f"could not decode the JPEG image: {str(exc) or type(exc).__name__}") from exc
    check_size(im.size, limits)
    return im.size, im.mode


def check_size(size: tuple[int, int], limits: DecodeLimits) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise BadImage(f"image header states an empty size {width}x{height}")
    if width * height > limits.max_pixels:
        raise PayloadTooLarge(
            f"image is {width}x{height} = {width * height} pixels, above the limit of "
            f"{limits.max_pixels} pixels"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > limits.max_aspect_ratio:
        raise InvalidArgument(
            f"image is {width}x{height}: aspect ratio {ratio:.1f}:1 exceeds the limit of "
            f"{limits.max_aspect_ratio:g}:1"
        )


def _webp_header_size(data: bytes) -> tuple[int, int] | None:
    """Canvas size from a WebP header (RFC 9649), or None when the header is not understood."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    return None
