"""Exported graphs against PyTorch: same logits, same labels, valid model.json.

Logit agreement is measured as max |onnx - torch| / max |torch| over the batch: elementwise relative
error is ill-defined for logits near zero. b0 is compared with a *calibrated* random init (BatchNorm
running statistics re-estimated on noise), because a plain random torchvision EfficientNet outputs
logits around 1e-14, where any comparison is vacuous.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from models.architectures import build_classifier
from models.export import export_variant
from models.variants import get_variant
from service.model_spec import LABELS_FILE, MODEL_FILE, SPEC_FILE, ModelSpec, read_labels
from service.model_spec import TensorSpec as Spec

pytestmark = pytest.mark.slow
TOLERANCE = 1e-4


def session(version_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(version_dir / MODEL_FILE), providers=["CPUExecutionProvider"])


def torch_logits(model: nn.Module, pixels: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """The PyTorch side does its own normalisation, the torchvision way."""
    normalize = transforms.Normalize(spec.normalization.mean, spec.normalization.std)
    with torch.inference_mode():
        return model(normalize(torch.from_numpy(pixels).float() / 255)).numpy()


def assert_parity(version_dir: Path, model: nn.Module, pixels: np.ndarray) -> None:
    spec = ModelSpec.from_file(version_dir / SPEC_FILE)
    logits, probabilities = session(version_dir).run(["logits", "probabilities"], {"pixels": pixels})
    expected = torch_logits(model, pixels, spec)
    assert logits.shape == probabilities.shape == (pixels.shape[0], spec.num_classes)
    assert logits.dtype == probabilities.dtype == np.float32
    scale = np.abs(expected).max()
    assert scale > 1e-3, "comparison would be vacuous"
    assert np.abs(logits - expected).max() / scale < TOLERANCE
    np.testing.assert_array_equal(logits.argmax(1), expected.argmax(1))
    np.testing.assert_allclose(probabilities, torch.softmax(torch.from_numpy(expected), 1).numpy(), atol=1e-5)


def calibrated_b0(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    model = build_classifier(get_variant("b0"))
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over the calibration batch
    # Calibrate on what the test feeds it (normalised uniform pixels) so activations stay O(1).
    pixels = torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (8, 3, 224, 224), dtype=np.uint8))
    normalize = transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    model.train()
    with torch.no_grad():
        model(normalize(pixels.float() / 255))
    return model.eval()


def preprocess(jpeg: bytes, spec: ModelSpec) -> np.ndarray:
    """uint8 (3, S, S) the torchvision way: resize shorter side, centre crop."""
    steps = transforms.Compose([
        transforms.Resize(spec.resize_size, interpolation=transforms.InterpolationMode(spec.interpolation)),
        transforms.CenterCrop(spec.crop_size),
        transforms.PILToTensor(),
    ])  # fmt: skip
    return steps(Image.open(io.BytesIO(jpeg)).convert("RGB")).numpy()


@pytest.fixture(scope="module")
def lite0_torch() -> nn.Module:
    from models.weights import WeightsResolver, load_into

    weights = WeightsResolver().resolve("imagenet", get_variant("lite0"))
    model = build_classifier(get_variant("lite0"))
    load_into(model, weights.state_dict or {}, "lite0")
    return model


@pytest.mark.parametrize("name", ["b0", "lite0"])
def test_model_json_validates_and_describes_the_graph(model_repository: Path, name: str) -> None:
    version_dir = model_repository / name / "1"
    spec = ModelSpec.from_file(version_dir / SPEC_FILE)
    assert (spec.name, spec.variant, spec.version) == (name, name, 1)
    assert (spec.crop_size, spec.resize_size) == (224, 256)
    assert spec.inputs == (Spec(name="pixels", dtype="uint8", shape=(-1, 3, 224, 224)),)
    assert [o.shape for o in spec.outputs] == [(-1, 1000), (-1, 1000), (-1, 1280), (-1, -1, 7, 7), (-1, -1)]
    assert [o.name for o in spec.outputs] == ["logits", "probabilities", "features", "cam", "cam_classes"]
    assert spec.weights.kind == ("random" if name == "b0" else "imagenet")
    assert spec.opset == 18 and spec.exporter["torch"].startswith("2.")
    assert 0.37 < spec.gmacs < 0.41
    assert len(read_labels(version_dir / LABELS_FILE, spec.num_classes)) == 1000
    from models.weights import sha256_file

    assert sha256_file(version_dir / MODEL_FILE) == spec.onnx_sha256
    graph = onnx.load(str(version_dir / MODEL_FILE))
    assert graph.opset_import[0].version == spec.opset
    batch_dim = graph.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # symbolic batch axis


@pytest.mark.parametrize("batch", [1, 3])
def test_lite0_matches_pytorch(
    model_repository: Path, lite0_torch: nn.Module, real_photos: dict[str, bytes], batch: int
) -> None:
    spec = ModelSpec.from_file(model_repository / "lite0" / "1" / SPEC_FILE)
    photos = [preprocess(real_photos[n], spec) for n in ("chelsea", "coffee")]
    noise = np.random.default_rng(0).integers(0, 256, (3, 224, 224), dtype=np.uint8)
    pixels = np.stack((photos + [noise])[:batch])
    assert_parity(model_repository / "lite0" / "1", lite0_torch, pixels)


def test_b0_matches_pytorch_with_a_custom_checkpoint(tmp_path: Path) -> None:
    model = calibrated_b0()
    checkpoint = tmp_path / "b0-calibrated.pt"
    torch.save(model.state_dict(), checkpoint)
    version_dir = export_variant("b0", tmp_path / "repo", weights=str(checkpoint))
    spec = ModelSpec.from_file(version_dir / SPEC_FILE)
    assert spec.weights.kind == "custom" and spec.weights.source == checkpoint.name
    pixels = np.random.default_rng(1).integers(0, 256, (3, 3, 224, 224), dtype=np.uint8)
    for batch in (1, 3):
        assert_parity(version_dir, model, pixels[:batch])


def test_lite0_names_the_cat_and_the_coffee(model_repository: Path, real_photos: dict[str, bytes]) -> None:
    version_dir = model_repository / "lite0" / "1"
    spec = ModelSpec.from_file(version_dir / SPEC_FILE)
    pixels = np.stack([preprocess(real_photos[n], spec) for n in ("chelsea", "coffee")])
    (probabilities,) = session(version_dir).run(["probabilities"], {"pixels": pixels})
    cat, coffee = probabilities.argmax(1)
    labels = read_labels(version_dir / LABELS_FILE, spec.num_classes)
    assert 281 <= cat <= 285, labels[cat]
    assert coffee in (967, 968), labels[coffee]
