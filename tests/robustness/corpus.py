"""Hostile and odd inputs, built in memory. Every body carries MARKER somewhere so a test can prove
that the server's log never holds request bytes."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

MARKER = b"SECRETPIXELS"


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo(size: tuple[int, int] = (320, 240), seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def jpeg(size: tuple[int, int] = (320, 240)) -> bytes:
    return encode(photo(size), "JPEG", quality=85)


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR (CRC fixed up) claims width x height: a decompression bomb."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 header claims width x height."""
    data = bytearray(jpeg((16, 16)))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def animated_gif() -> bytes:
    frames = [Image.new("P", (64, 48), colour) for colour in (1, 50, 200)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)


def sixteen_bit_png() -> bytes:
    ramp = np.linspace(0, 65535, 64 * 48, dtype=np.uint16).reshape(48, 64)
    return encode(Image.fromarray(ramp), "PNG")


SVG = (
    b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<!--SECRETPIXELS--></svg>"
)
PDF = b"%PDF-1.4\n% SECRETPIXELS\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def random_bytes() -> bytes:
    return os.urandom(2048) + MARKER + os.urandom(2048)


def truncated_jpeg() -> bytes:
    data = jpeg()
    return data[: len(data) // 2]


def images() -> dict[str, tuple[bytes, str, int]]:
    """name -> (body, content type, expected HTTP status) for POST /classify with a raw body."""
    return {
        "empty": (b"", "image/jpeg", 400),
        "truncated_jpeg": (truncated_jpeg(), "image/jpeg", 400),
        "random_bytes": (random_bytes(), "application/octet-stream", 400),
        "text_as_octets": (b"hello " + MARKER, "application/octet-stream", 400),
        "text_plain": (b"hello " + MARKER, "text/plain", 415),
        "json_type": (jpeg(), "application/json", 415),
        "svg": (SVG, "image/svg+xml", 415),
        "pdf": (PDF, "application/pdf", 415),
        "pdf_as_image": (PDF, "image/jpeg", 415),
        "ico": (encode(Image.new("RGB", (32, 32)), "ICO"), "image/x-icon", 415),
        "png_bomb": (png_claiming(50_000, 50_000), "image/png", 413),
        "jpeg_bomb": (jpeg_claiming(60_000, 60_000), "image/jpeg", 413),
        "extreme_aspect": (encode(Image.new("RGB", (1, 3000)), "PNG"), "image/png", 422),
        "one_pixel": (encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "image/png", 200),
        "sixteen_bit": (sixteen_bit_png(), "image/png", 200),
        "palette": (encode(Image.new("P", (50, 40), 7), "PNG"), "image/png", 200),
        "cmyk_jpeg": (encode(Image.new("CMYK", (50, 40), (0, 80, 80, 0)), "JPEG"), "image/jpeg", 200),
        "animated_gif": (animated_gif(), "image/gif", 200),
        "rgba_png": (encode(Image.new("RGBA", (50, 40), (255, 0, 0, 0)), "PNG"), "image/png", 200),
    }
