"""Bring your own EfficientNet, end to end: a timm `efficientnet_b0` and `tf_efficientnet_b2` saved as
timm training checkpoints, a torchvision `efficientnet_v2_s`, and a Keras-style ONNX graph (NHWC, 0-255
floats, normalisation and softmax inside) are exported/imported, served by the real server, and answer
what their own framework answers on the same preprocessed photos; each model.json holds the
preprocessing that framework's eval transform does.

Random weights are made meaningful first: BatchNorm statistics are re-estimated on normalised noise
(as in test_parity.py), so the logits are O(1) and a top-1 comparison is not a comparison of ties.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as triton_http
from PIL import Image
from torch import nn

from models.cascade import write_cascade
from models.export import main as export_main
from models.import_onnx import main as import_main
from service.lifecycle.configs import CascadeSpec, CascadeStage
from service.model_spec import LABELS_FILE, SPEC_FILE, ModelSpec
from tests.e2e.conftest import LiveServer, ServerFactory, classify
from tests.e2e.conftest import server_factory as server_factory  # noqa: F401 (the shared fixture)

pytestmark = pytest.mark.slow
CLASSES = 10
PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photos() -> list[Image.Image]:
    from skimage import data

    return [Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS]


def calibrate(model: nn.Module, inputs: torch.Tensor) -> nn.Module:
    """BatchNorm running statistics from `inputs` (the test photos as the framework preprocesses them)
    and as many images of uniform noise (what the exporter's own check feeds), so activations stay O(1)
    on both. Calibrated on noise alone, these random networks answer photos with logits in the
    thousands; on photos alone, noise; and there float32 rounding alone changes the answers."""
    for layer in model.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.reset_running_stats()
            layer.momentum = None
    noise = torch.rand(inputs.shape, generator=torch.Generator().manual_seed(0)) * 4 - 2
    model.train()
    with torch.no_grad():
        model(torch.cat([inputs, inputs.flip(3), noise]))
    return model.eval()


@dataclass
class Case:
    """One model in the repository and what its own framework answers on the test photos."""

    name: str
    pixels: np.ndarray  # uint8 (N, 3, S, S): the framework's eval transform before ToTensor/Normalize
    probabilities: np.ndarray  # the framework's forward pass on the same photos
    labels: list[str]
    expected_preprocessing: dict[str, object]
    logits: np.ndarray | None = None  # where the framework's model gives logits


def timm_reference(
    model: nn.Module, overrides: dict[str, object] | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms

    config = resolve_data_config(overrides or {}, model=model)
    transform = create_transform(**config, is_training=False)
    resize, crop = transform.transforms[0], transform.transforms[1]
    assert isinstance(resize, transforms.Resize) and isinstance(crop, transforms.CenterCrop)
    images = photos()
    pixels = np.stack([np.asarray(crop(resize(image))).transpose(2, 0, 1) for image in images])
    with torch.inference_mode():
        inputs = torch.stack([transform(image) for image in images])
        logits = model(inputs).numpy()
    expected = {
        "crop_size": crop.size[0],
        "resize_size": resize.size,
        "interpolation": config["interpolation"],
        "mean": tuple(config["mean"]),
        "std": tuple(config["std"]),
    }
    return pixels, logits, expected


def timm_inputs(model: nn.Module, overrides: dict[str, object]) -> torch.Tensor:
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config(overrides, model=model), is_training=False)
    return torch.stack([transform(image) for image in photos()])


def timm_checkpoint(path: Path, arch: str, weights: nn.Module, ema: nn.Module) -> None:
    """What timm's train.py CheckpointSaver writes (from a DDP run: `module.` prefixes)."""
    torch.save(
        {
            "epoch": 3,
            "arch": arch,
            "state_dict": {f"module.{k}": v for k, v in weights.state_dict().items()},
            "state_dict_ema": {f"module.{k}": v for k, v in ema.state_dict().items()},
            "optimizer": {"state": {}, "param_groups": []},
            "version": 2,
            "args": argparse.Namespace(model=arch, num_classes=CLASSES),
            "metric": 12.5,
        },
        path,
    )


def export_timm(
    work: Path, repository: Path, arch: str, labels: Path, *extra: str, crop: int | None = None
) -> tuple[nn.Module, nn.Module]:
    import timm

    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = timm.create_model(arch, pretrained=False, num_classes=CLASSES)
        overrides = {"input_size": (3, crop, crop)} if crop else {}
        models.append(calibrate(model, timm_inputs(model, overrides)))
    checkpoint = work / f"{arch}-epoch3.pth.tar"
    timm_checkpoint(checkpoint, arch, *models)
    argv = ["--from", "timm", "--arch", arch, "--weights", str(checkpoint), "--labels", str(labels)]
    assert export_main([*argv, "--repository", str(repository), *extra]) == 0
    return models[0], models[1]


def torchvision_v2_s(work: Path, repository: Path, labels: Path) -> Case:
    from torchvision.models import EfficientNet_V2_S_Weights, efficientnet_v2_s
    from torchvision.transforms import functional

    torch.manual_seed(3)
    weights = EfficientNet_V2_S_Weights.IMAGENET1K_V1
    transform = weights.transforms()
    model = calibrate(efficientnet_v2_s(num_classes=CLASSES), torch.stack([transform(i) for i in photos()]))
    checkpoint = work / "v2s-finetuned.pt"
    torch.save({"model": model.state_dict()}, checkpoint)
    argv = ["--variant", "v2-s", "--weights", str(checkpoint), "--labels", str(labels), "--name", "my-v2s"]
    assert export_main([*argv, "--repository", str(repository)]) == 0
    pixels = []
    for image in photos():  # torchvision's ImageClassification resizes and crops the PIL image
        resized = functional.resize(image, transform.resize_size, transform.interpolation, antialias=True)
        pixels.append(functional.pil_to_tensor(functional.center_crop(resized, transform.crop_size)).numpy())
    stacked = np.stack(pixels)
    inputs = torch.stack([transform(image) for image in photos()])
    # The torchvision transform is exactly these pixels, scaled and normalised.
    normalised = functional.normalize(torch.from_numpy(stacked).float() / 255, transform.mean, transform.std)
    assert float((inputs - normalised).abs().max()) < 1e-5
    with torch.inference_mode():
        logits = model(inputs).numpy()
    expected = {
        "crop_size": transform.crop_size[0],
        "resize_size": transform.resize_size[0],
        "interpolation": transform.interpolation.value,
        "mean": tuple(transform.mean),
        "std": tuple(transform.std),
    }
    return Case("my-v2s", stacked, _softmax(logits), read_lines(labels), expected, logits)


class KerasStyle(nn.Module):
    """A tf2onnx EfficientNet's interface: NHWC float 0-255 in, Rescaling + Normalization inside,
    softmax probabilities out."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.SiLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(32, CLASSES)

    def forward(self, nhwc: torch.Tensor) -> torch.Tensor:
        x = (nhwc.permute(0, 3, 1, 2) / 255.0 - self.mean) / self.std
        return torch.softmax(self.head(self.features(x)) * 4, dim=-1)


def keras_style(work: Path, repository: Path, labels: Path, crop: int = 128) -> Case:
    torch.manual_seed(4)
    module = KerasStyle().eval()
    nchw = torch.from_numpy(
        np.stack([np.asarray(_resize_crop(i, crop, Image.Resampling.BILINEAR)) for i in photos()])
    )
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    calibrate(module.features, (nchw.permute(0, 3, 1, 2).float() / 255 - mean) / std)
    graph = work / "keras-effnet.onnx"
    # A fixed batch of 1, as many converted graphs have: the importer makes it dynamic. (The TorchScript
    # exporter, like tf2onnx, writes the fixed shapes it traced; its deprecation warning is not ours.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (torch.zeros(1, crop, crop, 3),), str(graph), dynamo=False,
            input_names=["input_1"], output_names=["predictions"], opset_version=17,
        )  # fmt: skip
    argv = [str(graph), "--name", "keras-b0", "--keras", "--crop", str(crop), "--labels", str(labels)]
    argv += ["--precision", "fp32,fp16,int8"]
    assert import_main([*argv, "--repository", str(repository)]) == 0
    pixels = np.stack(
        [
            np.asarray(_resize_crop(image, crop, Image.Resampling.BILINEAR)).transpose(2, 0, 1)
            for image in photos()
        ]
    )
    with torch.inference_mode():
        probabilities = module(torch.from_numpy(pixels).permute(0, 2, 3, 1).float()).numpy()
    expected = {
        "crop_size": crop,
        "resize_size": crop,
        "interpolation": "bilinear",
        "mean": (0.0, 0.0, 0.0),
        "std": (1 / 255,) * 3,
    }
    return Case("keras-b0", pixels, probabilities, json.loads(labels.read_text()), expected)


def _resize_crop(image: Image.Image, size: int, method: Image.Resampling) -> Image.Image:
    scale = size / min(image.size)
    resized = image.resize(
        (max(size, round(image.width * scale)), max(size, round(image.height * scale))), method
    )
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def read_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


@pytest.fixture(scope="module")
def own_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Case]]:
    work = tmp_path_factory.mktemp("own-models")
    repository = work / "repository"
    names = [f"class{i}" for i in range(1, CLASSES + 1)]
    folder = work / "train"  # a training folder: class1 ... class10, timm's natural order
    for name in names:
        (folder / name).mkdir(parents=True)
    as_map = work / "classes.json"
    as_map.write_text(json.dumps({str(i): f"kind {i}" for i in reversed(range(CLASSES))}))
    as_text = work / "classes.txt"
    as_text.write_text("".join(f"species {i}\n" for i in range(CLASSES)))
    as_list = work / "keras-classes.json"
    as_list.write_text(json.dumps([f"keras {i}" for i in range(CLASSES)]))

    cases: dict[str, Case] = {}
    began = time.monotonic()
    weights, _ = export_timm(work, repository, "efficientnet_b0", folder, "--name", "my-b0")
    pixels, logits, expected = timm_reference(weights)
    cases["my-b0"] = Case("my-b0", pixels, _softmax(logits), names, expected, logits)
    # At 192 px instead of timm's 260 (an override, and a faster test): timm's config with the same override.
    extra = ("--name", "my-tf-b2", "--ema", "--input-size", "192")
    _, ema = export_timm(work, repository, "tf_efficientnet_b2", as_map, *extra, crop=192)
    pixels, logits, expected = timm_reference(ema, {"input_size": (3, 192, 192)})
    cases["my-tf-b2"] = Case(
        "my-tf-b2", pixels, _softmax(logits), [f"kind {i}" for i in range(CLASSES)], expected, logits
    )
    print(f"timm exports {time.monotonic() - began:.1f} s")
    cases["my-v2s"] = torchvision_v2_s(work, repository, as_text)
    print(f"+ v2-s {time.monotonic() - began:.1f} s")
    cases["keras-b0"] = keras_style(work, repository, as_list)
    print(f"+ keras {time.monotonic() - began:.1f} s")
    # A cascade of an imported model's int8 graph and the model itself: one label set, so it is served.
    stages = [CascadeStage(model="keras-b0-int8", exit_confidence=0.6), CascadeStage(model="keras-b0")]
    write_cascade(repository, "keras-cascade", CascadeSpec(stages=stages))
    return repository, cases


@pytest.fixture(scope="module")
def own_server(server_factory: ServerFactory, own_models: tuple[Path, dict[str, Case]]) -> LiveServer:  # noqa: F811
    return server_factory(own_models[0])


NAMES = ("my-b0", "my-tf-b2", "my-v2s", "keras-b0")


@pytest.mark.parametrize("name", NAMES)
def test_model_json_holds_the_frameworks_eval_preprocessing(
    own_models: tuple[Path, dict[str, Case]], name: str
) -> None:
    repository, cases = own_models
    case = cases[name]
    spec = ModelSpec.from_file(repository / name / "1" / SPEC_FILE)
    got = {
        "crop_size": spec.crop_size,
        "resize_size": spec.resize_size,
        "interpolation": spec.interpolation,
        "mean": spec.normalization.mean,
        "std": spec.normalization.std,
    }
    assert got["crop_size"] == case.expected_preprocessing["crop_size"]
    assert got["resize_size"] == case.expected_preprocessing["resize_size"]
    assert got["interpolation"] == case.expected_preprocessing["interpolation"]
    np.testing.assert_allclose(got["mean"], case.expected_preprocessing["mean"], rtol=1e-6)  # type: ignore[arg-type]
    np.testing.assert_allclose(got["std"], case.expected_preprocessing["std"], rtol=1e-6)  # type: ignore[arg-type]
    assert spec.num_classes == CLASSES and spec.accuracy is None
    assert (repository / name / "1" / LABELS_FILE).read_text().splitlines() == case.labels


def test_provenance_names_the_source(own_models: tuple[Path, dict[str, Case]]) -> None:
    from models.weights import sha256_file

    repository, _ = own_models
    specs = {name: ModelSpec.from_file(repository / name / "1" / SPEC_FILE) for name in NAMES}
    assert specs["my-b0"].variant == "timm:efficientnet_b0" and specs["my-b0"].weights.kind == "custom"
    assert specs["my-tf-b2"].weights.source == "tf_efficientnet_b2-epoch3.pth.tar"
    assert "timm" in specs["my-tf-b2"].exporter and specs["my-v2s"].variant == "v2-s"
    keras = specs["keras-b0"]
    assert keras.variant == "imported" and keras.weights.kind == "imported"
    assert keras.weights.sha256 == sha256_file(repository.parent / "keras-effnet.onnx")
    assert keras.weights.source == "keras-effnet.onnx"


@pytest.mark.parametrize("name", NAMES)
def test_served_answers_equal_the_frameworks(
    own_server: LiveServer, own_models: tuple[Path, dict[str, Case]], name: str
) -> None:
    """The served graph (V2 protocol, the framework's own preprocessed pixels) against the framework."""
    case = own_models[1][name]
    client = triton_http.InferenceServerClient(own_server.http_url.removeprefix("http://"))
    tensor = triton_http.InferInput("pixels", list(case.pixels.shape), "UINT8")
    tensor.set_data_from_numpy(case.pixels)
    result = client.infer(name, [tensor])
    probabilities, logits = result.as_numpy("probabilities"), result.as_numpy("logits")
    assert probabilities.shape == logits.shape == (len(PHOTOS), CLASSES)
    best_two = np.sort(case.probabilities, axis=1)[:, -2:]
    assert (best_two[:, 1] - best_two[:, 0]).min() > 1e-3, "top-1 too close to the runner-up to compare"
    np.testing.assert_array_equal(probabilities.argmax(1), case.probabilities.argmax(1))
    np.testing.assert_allclose(probabilities, case.probabilities, atol=1e-4)
    np.testing.assert_allclose(probabilities, _softmax(logits), atol=1e-6)
    if case.logits is not None:
        scale = float(np.abs(case.logits).max())
        assert scale > 1e-2 and float(np.abs(logits - case.logits).max()) / scale < 1e-4


@pytest.mark.parametrize("name", NAMES)
def test_served_from_jpeg_with_its_own_labels(
    own_server: LiveServer, own_models: tuple[Path, dict[str, Case]], real_photos: dict[str, bytes], name: str
) -> None:
    """The ordinary path too: a JPEG in, the model's own class names out, preprocessed from model.json."""
    response = classify(own_server, real_photos["chelsea"], variant=name, top_k=CLASSES)
    assert response.status_code == 200, response.text
    predictions = response.json()["results"][0]["predictions"]
    assert sorted(p["label"] for p in predictions) == sorted(own_models[1][name].labels)
    assert abs(sum(p["score"] for p in predictions) - 1) < 1e-4


def test_derived_fp16_answers_like_the_framework(
    own_server: LiveServer, own_models: tuple[Path, dict[str, Case]]
) -> None:
    name, source = "keras-b0-fp16", "keras-b0"
    repository, cases = own_models
    spec = ModelSpec.from_file(repository / name / "1" / SPEC_FILE)
    assert spec.precision == "fp16" and spec.derived_from is not None and spec.derived_from.name == source
    assert spec.agreement is not None and spec.agreement.top1_agreement == 1.0
    assert spec.weights == ModelSpec.from_file(repository / source / "1" / SPEC_FILE).weights
    case = cases[source]
    client = triton_http.InferenceServerClient(own_server.http_url.removeprefix("http://"))
    tensor = triton_http.InferInput("pixels", list(case.pixels.shape), "UINT8")
    tensor.set_data_from_numpy(case.pixels)
    probabilities = client.infer(name, [tensor]).as_numpy("probabilities")
    np.testing.assert_array_equal(probabilities.argmax(1), case.probabilities.argmax(1))
    np.testing.assert_allclose(probabilities, case.probabilities, atol=1e-2)


def test_imported_int8_and_its_cascade_are_served(
    own_server: LiveServer, own_models: tuple[Path, dict[str, Case]], real_photos: dict[str, bytes]
) -> None:
    repository, cases = own_models
    spec = ModelSpec.from_file(repository / "keras-b0-int8" / "1" / SPEC_FILE)
    assert spec.precision == "int8" and spec.weights.kind == "imported" and spec.agreement is not None
    assert "quantizer" in spec.exporter
    response = classify(own_server, real_photos["coffee"], variant="keras-cascade", top_k=3)
    assert response.status_code == 200, response.text
    body = response.json()
    image = body["route"]["images"][0]
    assert body["route"]["policy"] == "cascade" and image["answered_by"] in ("keras-b0-int8", "keras-b0")
    assert image["stages"][0]["model"] == "keras-b0-int8"
    assert {p["label"] for p in body["results"][0]["predictions"]} <= set(cases["keras-b0"].labels)


def test_timm_checkpoint_derives_fp16(tmp_path: Path) -> None:
    """fp16 through the family's gate (100 % top-1 agreement on the real-photo set), with no fp32 asked
    for: a scratch reference is made and discarded. timm's own init at 96 px, not the calibrated
    weights above, whose answers on the gate's other photos and crops swing on rounding."""
    import timm

    torch.manual_seed(5)
    model = timm.create_model("efficientnet_b0", pretrained=False, num_classes=CLASSES)
    checkpoint = tmp_path / "b0.pth"
    torch.save({"state_dict": model.state_dict()}, checkpoint)
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"c{i}\n" for i in range(CLASSES)))
    repository = tmp_path / "repo"
    argv = [
        "--from",
        "timm",
        "--arch",
        "efficientnet_b0",
        "--weights",
        str(checkpoint),
        "--labels",
        str(labels),
    ]
    argv += ["--input-size", "96", "--precision", "fp16", "--name", "t", "--repository", str(repository)]
    assert export_main(argv) == 0
    spec = ModelSpec.from_file(repository / "t-fp16" / "1" / SPEC_FILE)
    assert spec.precision == "fp16" and spec.variant == "timm:efficientnet_b0" and spec.crop_size == 96
    assert (
        spec.derived_from is not None and spec.derived_from.name == "t"
    )  # a scratch reference (no fp32 asked)
    assert spec.agreement is not None and spec.agreement.top1_agreement == 1.0
    assert sorted(p.name for p in repository.iterdir()) == ["t-fp16"]


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)
