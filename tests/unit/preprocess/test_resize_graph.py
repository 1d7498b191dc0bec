"""The resize-and-crop ONNX graph (service/preprocess/resize_graph.py) against the Pillow path it replaces on
the GPU, both run here on the CPU."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.model_spec import ModelSpec
from service.preprocess.images import PreprocessSpec, decode_rgb, preprocess
from service.preprocess.resize_graph import ResizeGraphRunner, build_resize_crop_graph


def smooth_image(width: int, height: int, seed: int) -> np.ndarray:
    """A photo-like (low-frequency) RGB image: upsampled noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 16), max(2, width // 16), 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC))


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_graph_is_valid_onnx_with_the_documented_interface() -> None:
    model = build_resize_crop_graph(PreprocessSpec(224, 256, "bicubic"))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (image,) = session.get_inputs()
    (pixels,) = session.get_outputs()
    assert (image.name, image.type, image.shape) == ("image", "tensor(uint8)", ["H", "W", 3])
    assert (pixels.name, pixels.type, pixels.shape) == ("pixels", "tensor(uint8)", [3, 224, 224])


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest"])
@pytest.mark.parametrize("size", [(451, 300), (300, 451), (257, 256), (999, 333), (256, 256), (225, 700)])
def test_geometry_and_pixels_match_pillow(size: tuple[int, int], interpolation: str) -> None:
    spec = PreprocessSpec(224, 256, interpolation)  # type: ignore[arg-type]
    image = smooth_image(*size, seed=size[0])
    got = ResizeGraphRunner(spec)(image)
    want = preprocess(png(image), spec)
    assert got.shape == want.shape == (3, 224, 224) and got.dtype == np.uint8
    difference = np.abs(got.astype(np.int16) - want).mean()
    # Nearest picks the same source pixels; the filters differ only in rounding (Pillow rounds
    # between its two passes).
    assert difference <= (0.01 if interpolation == "nearest" else 1.0), difference


def test_crop_equal_to_resize_and_upscaling() -> None:
    spec = PreprocessSpec(288, 288, "bicubic")  # b2: no crop margin
    for size in [(100, 80), (288, 500)]:
        image = smooth_image(*size, seed=3)
        got = ResizeGraphRunner(spec)(image)
        assert got.shape == (3, 288, 288)
        assert np.abs(got.astype(np.int16) - preprocess(png(image), spec)).mean() <= 1.0


def test_real_photos_match_the_pillow_path_and_lite0_top1(
    real_photos: dict[str, bytes], model_repository: Path
) -> None:
    spec = PreprocessSpec.from_model_spec(
        ModelSpec.from_file(model_repository / "lite0" / "1" / "model.json")
    )
    graph = ResizeGraphRunner(spec)
    session = ort.InferenceSession(
        str(model_repository / "lite0" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    for name, data in real_photos.items():
        from_graph = graph(decode_rgb(data))
        from_pillow = preprocess(data, spec)
        difference = np.abs(from_graph.astype(np.int16) - from_pillow).mean()
        assert difference <= 2.0, (name, difference)
        logits = session.run(["logits"], {"pixels": np.stack([from_graph, from_pillow])})[0]
        assert logits[0].argmax() == logits[1].argmax(), name
