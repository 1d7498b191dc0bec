"""`features` and `cam` against PyTorch, on real weights and real photos (models/heads.py).

features: the pooled vector the classifier reads; cam: sum_c W[k, c] * A_c over the last feature map
A, for the top-k classes. Both computed here from the torch model's own tensors (forward hooks)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

from models.architectures import PixelClassifier, build_classifier, preprocessing
from models.graph import export_onnx
from models.variants import get_variant
from models.weights import WeightsResolver, load_into
from service.model_spec import MODEL_FILE, SPEC_FILE, ModelSpec
from service.preprocess.images import PreprocessSpec, preprocess
from service.runtime.int8_kernels import faithful_int8
from tests.export.test_parity import calibrated_b0

pytestmark = pytest.mark.slow
TOP_K = 3


def _session(path: Path) -> ort.InferenceSession:
    """The graph as the server runs it on this CPU (int8 unfused where its kernels saturate)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), faithful_int8(options), providers=["CPUExecutionProvider"])


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _pixels(photos: list[bytes], spec: PreprocessSpec) -> np.ndarray:
    return np.stack([preprocess(photo, spec) for photo in photos])


def _torch_head(
    module: nn.Module, pixels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(logits, pooled features, last feature map A, classifier weight W) from one torch forward pass."""
    pool = [m for m in module.modules() if isinstance(m, nn.AdaptiveAvgPool2d)][-1]
    linear = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        pool.register_forward_hook(lambda _m, inputs, _o: seen.__setitem__("A", inputs[0])),
        linear.register_forward_hook(lambda _m, inputs, _o: seen.__setitem__("pooled", inputs[0])),
    ]
    try:
        with torch.inference_mode():
            logits, _ = module(torch.from_numpy(pixels))
    finally:
        for hook in hooks:
            hook.remove()
    weight, bias = linear.weight.detach().numpy(), linear.bias.detach().numpy()
    return logits.numpy(), seen["pooled"].numpy(), seen["A"].numpy(), weight, bias


@pytest.fixture(scope="module", params=["lite0", "b0"])
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[nn.Module, Path, str]:
    """(torch PixelClassifier, its ONNX export, variant): lite0 with its ImageNet weights, b0 with a
    calibrated random init (a plain one has vanishing activations: a vacuous comparison)."""
    variant = get_variant(request.param)
    if variant.key == "lite0":
        classifier = build_classifier(variant)
        loaded = WeightsResolver().resolve("imagenet", variant)
        assert loaded.state_dict is not None
        load_into(classifier, loaded.state_dict, "imagenet")
    else:
        classifier = calibrated_b0()
    pre = preprocessing(variant)
    module = PixelClassifier(classifier, pre.mean, pre.std).eval()
    path = tmp_path_factory.mktemp(f"explain-{variant.key}") / MODEL_FILE
    export_onnx(module, pre.crop_size, path)
    return module, path, variant.key


def test_features_and_maps_equal_pytorch(
    exported: tuple[nn.Module, Path, str], real_photos: dict[str, bytes]
) -> None:
    module, path, key = exported
    pre = preprocessing(get_variant(key))
    spec = PreprocessSpec(pre.crop_size, pre.resize_size, pre.interpolation)  # type: ignore[arg-type]
    noise = np.random.default_rng(3).integers(0, 256, (1, 3, pre.crop_size, pre.crop_size), dtype=np.uint8)
    pixels = np.concatenate([_pixels([real_photos["chelsea"], real_photos["coffee"]], spec), noise])
    ids = np.full((1, TOP_K), -1, dtype=np.int64)
    features, cam, cam_classes, logits = _session(path).run(
        ["features", "cam", "cam_classes", "logits"], {"pixels": pixels, "cam_class_ids": ids}
    )
    torch_logits, pooled, feature_map, weight, bias = _torch_head(module, pixels)

    assert features.dtype == np.float32 and features.shape == pooled.shape == (3, weight.shape[1])
    # Within 1e-4 of the largest feature (as the logits are checked, models/graph.py): the calibrated
    # b0's features reach about 160, where float32 through 16 blocks differs by about 1e-5 relative.
    assert np.abs(pooled).max() > 0.1, "comparison would be vacuous"
    assert np.abs(features - pooled).max() / np.abs(pooled).max() < 1e-4

    top = np.argsort(-torch_logits, axis=1, kind="stable")[:, :TOP_K]
    np.testing.assert_array_equal(cam_classes, top)
    expected = np.einsum("nkc,nchw->nkhw", weight[top], feature_map)
    assert cam.shape == expected.shape == (3, TOP_K, *feature_map.shape[2:])
    scale = np.abs(expected).max()
    assert np.abs(cam - expected).max() / scale < 1e-4
    # The map's mean plus the bias is the logit: the map explains exactly what was classified.
    np.testing.assert_allclose(
        cam.mean(axis=(2, 3)) + bias[top], logits[np.arange(3)[:, None], top], atol=1e-4 * scale
    )


def test_a_given_class_is_mapped(exported: tuple[nn.Module, Path, str]) -> None:
    module, path, key = exported
    size = preprocessing(get_variant(key)).crop_size
    pixels = np.random.default_rng(4).integers(0, 256, (2, 3, size, size), dtype=np.uint8)
    # -1 in column j: the class ranked j + 1. Row 0: class 7, then the runner-up; row 1: the best, then 9.
    ids = np.array([[7, -1], [-1, 9]], dtype=np.int64)
    cam, cam_classes = _session(path).run(["cam", "cam_classes"], {"pixels": pixels, "cam_class_ids": ids})
    torch_logits, _, feature_map, weight, _ = _torch_head(module, pixels)
    ranked = np.argsort(-torch_logits, axis=1, kind="stable")
    np.testing.assert_array_equal(cam_classes, [[7, ranked[0, 1]], [ranked[1, 0], 9]])
    expected = np.einsum("kc,chw->khw", weight[[7, ranked[0, 1]]], feature_map[0])
    np.testing.assert_allclose(cam[0], expected, atol=1e-4 * np.abs(expected).max())


def _lite0(model_repository: Path) -> tuple[ort.InferenceSession, PreprocessSpec]:
    folder = model_repository / "lite0" / "1"
    spec = ModelSpec.from_file(folder / SPEC_FILE)
    return _session(folder / MODEL_FILE), PreprocessSpec.from_model_spec(spec)


def _peak_in_photo(cam: np.ndarray, photo_size: tuple[int, int], spec: PreprocessSpec) -> tuple[float, float]:
    """The centre of the map's hottest cell, in the photo's pixels (Resize + CenterCrop undone)."""
    from service.preprocess.overlay import crop_box

    left, top, right, bottom = crop_box(*photo_size, spec)
    row, col = np.unravel_index(int(cam.argmax()), cam.shape)
    return left + (col + 0.5) / cam.shape[1] * (right - left), top + (row + 0.5) / cam.shape[0] * (
        bottom - top
    )


def _inside(point: tuple[float, float], box: tuple[int, int, int, int]) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def test_top_class_map_peaks_on_the_cat(model_repository: Path) -> None:
    """Boxes drawn once by hand on scikit-image's chelsea (451 x 300): the face (eyes to nose), and,
    for a photo where the background is most of the frame, the cat shrunk into a corner of a brick wall."""
    from skimage import data

    session, spec = _lite0(model_repository)
    cat = Image.fromarray(data.chelsea())
    wall = Image.fromarray(data.brick()).convert("RGB").resize((400, 400))
    wall.paste(cat.resize((225, 150)), (30, 220))
    cases = [(cat, (100, 50, 360, 290)), (wall, (30, 220, 255, 370))]
    for photo, box in cases:
        pixels = preprocess(_jpeg(photo), spec)[None]
        probabilities, cam, classes = session.run(
            ["probabilities", "cam", "cam_classes"], {"pixels": pixels, "cam_class_ids": np.array([[-1]])}
        )
        assert 281 <= int(classes[0, 0]) <= 285, "a cat class is the top class"
        assert int(classes[0, 0]) == int(probabilities[0].argmax())
        peak = _peak_in_photo(cam[0, 0], photo.size, spec)
        assert _inside(peak, box), f"peak at {peak} is outside the cat {box}"
    # The wall-side half of the composite's map is cooler than the cat's corner.
    pixels = preprocess(_jpeg(wall), spec)[None]
    (cam,) = session.run(["cam"], {"pixels": pixels, "cam_class_ids": np.array([[-1]])})
    grid = cam[0, 0]
    assert grid[grid.shape[0] // 2 :, : grid.shape[1] // 2].mean() > grid[: grid.shape[0] // 2].mean() + 1.0


def test_mirror_is_closer_than_another_photo(model_repository: Path, real_photos: dict[str, bytes]) -> None:
    session, spec = _lite0(model_repository)
    cat = Image.open(io.BytesIO(real_photos["chelsea"]))
    photos = [
        real_photos["chelsea"],
        _jpeg(cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
        real_photos["coffee"],
    ]
    (features,) = session.run(["features"], {"pixels": _pixels(photos, spec)})
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    mirror, other = float(unit[0] @ unit[1]), float(unit[0] @ unit[2])
    assert mirror > other + 0.1, (mirror, other)


def test_lower_precisions_keep_the_outputs(precision_repository: Path, real_photos: dict[str, bytes]) -> None:
    """fp16 (exported with the pass) and int8 (the pass added back after quantisation) offer the same
    outputs, close to fp32's: same top class mapped, features pointing the same way."""
    fp32 = precision_repository / "lite0" / "1"
    spec = PreprocessSpec.from_model_spec(ModelSpec.from_file(fp32 / SPEC_FILE))
    pixels = _pixels([real_photos["chelsea"], real_photos["coffee"]], spec)
    feeds = {"pixels": pixels, "cam_class_ids": np.array([[-1]])}
    names = ["features", "cam", "cam_classes"]
    reference = _session(fp32 / MODEL_FILE).run(names, feeds)
    for model in ("lite0-fp16", "lite0-int8"):
        folder = precision_repository / model / "1"
        offered = [o.name for o in ModelSpec.from_file(folder / SPEC_FILE).outputs]
        assert offered == ["logits", "probabilities", *names]
        features, cam, classes = _session(folder / MODEL_FILE).run(names, feeds)
        np.testing.assert_array_equal(classes, reference[2])
        cosine = np.sum(features * reference[0], axis=1) / (
            np.linalg.norm(features, axis=1) * np.linalg.norm(reference[0], axis=1)
        )
        assert cosine.min() > 0.95, (model, cosine)
        assert cam.shape == reference[1].shape
