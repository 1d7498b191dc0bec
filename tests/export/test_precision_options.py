"""Cheap checks around precisions: `--precision` parsing and naming, declared accuracy, model.json
compatibility and the interface validator. No export runs here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from models.accuracy import declared_accuracy
from models.errors import ExportError
from models.export import main
from models.precision import model_name, parse_precisions
from models.variants import get_variant
from service.model_spec import ModelSpec, WeightsProvenance

IMAGENET = WeightsProvenance(kind="imagenet", source="published", sha256="0" * 64)
CUSTOM = WeightsProvenance(kind="custom", source="mine.pt", sha256="1" * 64)
RANDOM = WeightsProvenance(kind="random", seed=0)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["fp16"], ("fp16",)),
        (["int8,fp32"], ("fp32", "int8")),
        (["fp16", "fp32, INT8", "fp16"], ("fp32", "fp16", "int8")),
    ],
)
def test_precisions_parse_in_canonical_order(values: list[str], expected: tuple[str, ...]) -> None:
    assert parse_precisions(values) == expected


@pytest.mark.parametrize(
    ("values", "message"), [(["fp64"], "unknown precision 'fp64'"), ([","], "at least one")]
)
def test_bad_precisions_are_refused(values: list[str], message: str) -> None:
    with pytest.raises(ExportError, match=message):
        parse_precisions(values)


def test_model_names_carry_the_precision() -> None:
    assert [model_name("b0", p) for p in ("fp32", "fp16", "int8")] == ["b0", "b0-fp16", "b0-int8"]


def test_cli_refuses_an_unknown_precision_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--variant", "b0", "--precision", "fp32,bf16", "--repository", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and "unknown precision 'bf16'" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_declared_accuracy_for_published_weights() -> None:
    b0 = declared_accuracy(get_variant("b0"), IMAGENET, "fp32")
    assert b0 is not None and b0.imagenet_top1 == pytest.approx(77.692) and "torchvision" in b0.source
    assert declared_accuracy(get_variant("b7"), IMAGENET, "fp16").imagenet_top1 == pytest.approx(84.122)  # type: ignore[union-attr]
    assert declared_accuracy(get_variant("b0"), IMAGENET, "int8") is None  # nobody published one
    lite = {
        (key, precision): declared_accuracy(get_variant(key), IMAGENET, precision).imagenet_top1  # type: ignore[union-attr]
        for key in ("lite0", "lite1", "lite2")
        for precision in ("fp32", "fp16", "int8")
    }
    assert [lite[k, "fp32"] for k in ("lite0", "lite1", "lite2")] == [75.1, 76.7, 77.6]
    assert [lite[k, "fp16"] for k in ("lite0", "lite1", "lite2")] == [75.1, 76.7, 77.6]
    assert [lite[k, "int8"] for k in ("lite0", "lite1", "lite2")] == [74.4, 75.9, 77.0]


@pytest.mark.parametrize("weights", [RANDOM, CUSTOM])
def test_no_accuracy_is_invented_for_random_or_custom_weights(weights: WeightsProvenance) -> None:
    for key in ("b0", "lite0"):
        assert declared_accuracy(get_variant(key), weights, "fp32") is None


def test_operator_states_the_accuracy_of_custom_weights() -> None:
    stated = declared_accuracy(get_variant("b0"), CUSTOM, "fp32", operator_top1=91.5)
    assert stated is not None and stated.imagenet_top1 == 91.5 and "operator" in stated.source
    assert declared_accuracy(get_variant("b0"), CUSTOM, "int8", operator_top1=91.5) is None
    with pytest.raises(ExportError, match="percent"):
        declared_accuracy(get_variant("b0"), CUSTOM, "fp32", operator_top1=0.915e3)


def _spec_dict() -> dict[str, object]:
    return {
        "name": "b0",
        "version": 1,
        "variant": "b0",
        "architecture": "torchvision.models.efficientnet_b0",
        "crop_size": 224,
        "resize_size": 256,
        "interpolation": "bicubic",
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "inputs": [{"name": "pixels", "dtype": "uint8", "shape": [-1, 3, 224, 224]}],
        "outputs": [
            {"name": "logits", "dtype": "float32", "shape": [-1, 1000]},
            {"name": "probabilities", "dtype": "float32", "shape": [-1, 1000]},
        ],
        "num_classes": 1000,
        "weights": {"kind": "random", "seed": 0},
        "parameters": 5288548,
        "gmacs": 0.3855,
        "opset": 18,
        "exporter": {"torch": "2.14.1"},
        "onnx_sha256": "a" * 64,
    }


def _derived(precision: str) -> dict[str, object]:
    return {
        "precision": precision,
        "name": f"b0-{precision}",
        "derived_from": {"name": "b0", "version": 1, "onnx_sha256": "a" * 64},
        "agreement": {"images": 36, "image_set": "photos", "max_abs_logit_delta": 1e-14, "gate": "none"},
    }


def _tensor(name: str, dtype: str, shape: tuple[int, ...] = (-1, 1000)) -> dict[str, object]:
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def test_a_schema_1_model_json_stays_valid() -> None:
    old = {"schema_version": 1, **_spec_dict()}
    spec = ModelSpec.model_validate_json(json.dumps(old))
    assert spec.schema_version == 1 and spec.precision == "fp32"
    assert spec.derived_from is None and spec.agreement is None and spec.accuracy is None


def test_new_model_json_round_trips_with_precision_fields() -> None:
    spec = ModelSpec.model_validate({**_spec_dict(), **_derived("int8")})
    again = ModelSpec.model_validate_json(spec.to_json())
    assert again == spec and again.schema_version == 2 and again.precision == "int8"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"outputs": [_tensor("logits", "float16"), _tensor("probabilities", "float32")]}, "must be float32"),
        ({"inputs": [_tensor("pixels", "float16", (-1, 3, 224, 224))]}, "input must be uint8"),
        ({"inputs": [_tensor("image", "uint8", (-1, 3, 224, 224))]}, "named 'pixels'"),
        ({"agreement": None}, "must record derived_from and agreement"),
        ({"schema_version": 1}, "need schema_version 2"),
    ],
)  # fmt: skip
def test_lower_precision_keeps_the_uint8_in_float32_out_interface(
    change: dict[str, object], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelSpec.model_validate({**_spec_dict(), **_derived("fp16"), **change})


def test_an_fp32_model_has_no_agreement_record() -> None:
    fp32_with_record = {**_spec_dict(), **_derived("fp16"), "precision": "fp32", "name": "b0"}
    with pytest.raises(ValidationError, match="fp32 model has no derived_from"):
        ModelSpec.model_validate(fp32_with_record)
