"""The fast preprocessing path (JPEG draft, one-pass resize+crop) gives lite0 the same top-1 as
torchvision's own transforms on real photos, at 1080p and at original size."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from torchvision import transforms

from service.model_spec import ModelSpec
from service.preprocess.images import PreprocessSpec, preprocess

pytestmark = pytest.mark.slow


def torchvision_pixels(data: bytes, spec: ModelSpec) -> np.ndarray:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    pipeline = transforms.Compose(
        [
            transforms.Resize(spec.resize_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(spec.crop_size),
        ]
    )
    return np.asarray(pipeline(image)).transpose(2, 0, 1).copy()


def upscaled_1080p(data: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize((1920, 1080), Image.BICUBIC).save(
        buffer, format="JPEG", quality=95
    )
    return buffer.getvalue()


@pytest.mark.parametrize("photo", ["chelsea", "coffee"])
@pytest.mark.parametrize("at_1080p", [False, True])
def test_lite0_top1_is_the_same_either_way(
    model_repository: Path, real_photos: dict[str, bytes], photo: str, at_1080p: bool
) -> None:
    folder = model_repository / "lite0" / "1"
    spec = ModelSpec.from_file(folder / "model.json")
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    data = upscaled_1080p(real_photos[photo]) if at_1080p else real_photos[photo]

    fast = preprocess(data, PreprocessSpec.from_model_spec(spec))
    reference = torchvision_pixels(data, spec)
    assert np.abs(fast.astype(np.int16) - reference).mean() < 2.0

    logits = session.run(["logits"], {"pixels": np.stack([fast, reference])})[0]
    assert logits[0].argmax() == logits[1].argmax()
