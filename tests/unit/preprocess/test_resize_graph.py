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
from service.preprocess.images import PreprocessSpec, crop_offsets, decode_rgb, preprocess, resized_size
from service.preprocess.resize_graph import (
    Copy2D,
    ResizeGraphRunner,
    build_resize_crop_graph,
    size_groups,
    stack_copies,
)


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
    assert (image.name, image.type, image.shape) == ("image", "tensor(uint8)", ["N", "H", "W", 3])
    assert (pixels.name, pixels.type, pixels.shape) == ("pixels", "tensor(uint8)", ["N", 3, 224, 224])


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


def test_a_decoded_batch_is_resized_in_one_run_per_image_size() -> None:
    spec = PreprocessSpec(32, 36, "bicubic")
    runner = ResizeGraphRunner(spec)
    images = [
        smooth_image(80, 60, 1),
        None,
        smooth_image(64, 48, 2),
        smooth_image(80, 60, 3),
        smooth_image(80, 60, 4),
    ]
    assert size_groups(images) == {(60, 80, 3): [0, 3, 4], (48, 64, 3): [2]}
    rows = runner.run_batch(images)
    assert runner.runs == 2 and rows[1] is None  # not one run per image
    for image, row in zip(images, rows, strict=True):
        if image is not None:
            np.testing.assert_array_equal(row, ResizeGraphRunner(spec)(image))


def test_device_images_are_stacked_with_their_pitch() -> None:
    """The copies that stack nvImageCodec's images (rows possibly padded) into one batch input."""
    padded = {"shape": (2, 3, 3), "data": (5000, False), "strides": (16, 3, 1), "typestr": "|u1"}
    dense = {"shape": (2, 3, 3), "data": (9000, False), "strides": None, "typestr": "|u1"}
    assert stack_copies([padded, dense], base=100) == [
        Copy2D(dst=100, dst_pitch=9, src=5000, src_pitch=16, width=9, height=2),
        Copy2D(dst=118, dst_pitch=9, src=9000, src_pitch=9, width=9, height=2),
    ]
    with pytest.raises(ValueError, match="not row-contiguous"):
        stack_copies([{**dense, "strides": (9, 1, 3)}], base=0)


# At 1080p the two paths part: the Pillow path decodes the JPEG at reduced scale (draft) for speed,
# the graph resizes the full image as torchvision does. Bounds measured on this photo (2026-12-03):
# graph vs torchvision max 3 / mean 0.10; Pillow path vs graph max 29 / mean 1.35 at resize 256.
GRAPH_VS_REFERENCE_MAX, GRAPH_VS_REFERENCE_MEAN = 4, 0.2
GRAPH_VS_PILLOW_MAX, GRAPH_VS_PILLOW_MEAN = 40, 2.0


@pytest.mark.parametrize(("crop", "size"), [(224, 256), (300, 320), (600, 600)])
def test_on_a_1080p_photo_the_graph_stays_on_the_reference_and_near_the_pillow_path(
    photo_1080p: bytes, crop: int, size: int
) -> None:
    """Which side changes if they differ (resize_graph.py's docstring): the reference is torchvision's
    full-resolution Resize + CenterCrop; the graph must stay on it, the Pillow path within the bound."""
    spec = PreprocessSpec(crop, size, "bicubic")
    full = Image.open(io.BytesIO(photo_1080p)).convert("RGB")
    assert full.size == (1920, 1080)
    width, height = resized_size(*full.size, size)
    left, top = crop_offsets(width, height, crop)
    reference = full.resize((width, height), Image.Resampling.BICUBIC).crop(
        (left, top, left + crop, top + crop)
    )
    reference_chw = np.asarray(reference).transpose(2, 0, 1).astype(np.int16)
    graph = ResizeGraphRunner(spec)(decode_rgb(photo_1080p)).astype(np.int16)
    pillow = preprocess(photo_1080p, spec).astype(np.int16)
    to_reference = np.abs(graph - reference_chw)
    assert to_reference.max() <= GRAPH_VS_REFERENCE_MAX and to_reference.mean() <= GRAPH_VS_REFERENCE_MEAN
    to_pillow = np.abs(graph - pillow)
    assert to_pillow.max() <= GRAPH_VS_PILLOW_MAX and to_pillow.mean() <= GRAPH_VS_PILLOW_MEAN, (
        to_pillow.max(),
        to_pillow.mean(),
    )


def test_without_cupy_a_cuda_resize_graph_runs_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import service.preprocess.resize_graph as resize_graph

    def no_cupy(device_id: int) -> None:
        raise ImportError("No module named 'cupy'")

    monkeypatch.setattr(resize_graph, "DeviceContext", no_cupy)
    spec = PreprocessSpec(32, 36, "bicubic")
    runner = ResizeGraphRunner(spec, "cuda")
    assert runner.device == "cpu" and runner.context is None
    image = smooth_image(80, 60, 5)
    np.testing.assert_array_equal(runner(image), ResizeGraphRunner(spec)(image))
