"""Bringing your own model: what does not fit gets one clear line (exit 2) and nothing is written; small
ONNX graphs built here with onnx.helper also prove the wrapper's arithmetic and renaming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from models.export import main as export_main
from models.import_onnx import main as import_main
from service.model_spec import LABELS_FILE, SPEC_FILE, ModelSpec

CLASSES = 5
SIZE = 8
RNG = np.random.default_rng(0)
WEIGHT = RNG.normal(size=(3 * SIZE * SIZE, CLASSES)).astype(np.float32) * 0.05
BIAS = RNG.normal(size=(CLASSES,)).astype(np.float32)


def save_graph(
    path: Path,
    inputs: list[onnx.ValueInfoProto],
    nodes: list[onnx.NodeProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
) -> Path:
    graph = helper.make_graph(nodes, "classifier", inputs, outputs, initializers or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="handmade")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def classifier(
    path: Path,
    *,
    input_name: str = "x",
    output_name: str = "y",
    shape: tuple[int | str, ...] = ("N", 3, SIZE, SIZE),
    dtype: int = TensorProto.FLOAT,
    softmax: bool = False,
    flatten: list[int] | None = None,
) -> Path:
    """x -> flatten -> x @ W + b [-> softmax]: a linear classifier with an image-shaped input."""
    shape_const = numpy_helper.from_array(np.array(flatten or [-1, 3 * SIZE * SIZE], np.int64), "shape")
    nodes = [
        helper.make_node("Reshape", [input_name, "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["scores"]),
        helper.make_node("Add", ["scores", "b"], ["logits_inner" if softmax else output_name]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits_inner"], [output_name], axis=-1))
    batch = shape[0]
    return save_graph(
        path,
        [helper.make_tensor_value_info(input_name, dtype, list(shape))],
        nodes,
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, CLASSES])],
        [numpy_helper.from_array(WEIGHT, "W"), numpy_helper.from_array(BIAS, "b"), shape_const],
    )


@pytest.fixture
def labels(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"c{i}\n" for i in range(CLASSES)))
    return path


def refused(code: int, capsys: pytest.CaptureFixture[str], repository: Path, *fragments: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error:") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not repository.exists() or not [p for p in repository.iterdir() if not p.name.startswith(".")]
    assert not repository.exists() or list(repository.iterdir()) == []


NCHW_IMAGENET = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]


def test_import_wraps_a_fixed_batch_logits_graph_named_like_ours(tmp_path: Path, labels: Path) -> None:
    """Input `pixels` and output `logits` in the original graph, batch fixed at 1: renamed, made dynamic,
    and the wrapped graph computes exactly the front's arithmetic followed by the original graph."""
    path = classifier(
        tmp_path / "m.onnx", input_name="pixels", output_name="logits", shape=(1, 3, SIZE, SIZE)
    )
    repository = tmp_path / "repo"
    argv = [
        str(path),
        "--name",
        "hand",
        "--labels",
        str(labels),
        "--repository",
        str(repository),
        "--resize",
        "9",
    ]
    assert import_main([*argv, *NCHW_IMAGENET]) == 0
    folder = repository / "hand" / "1"
    spec = ModelSpec.from_file(folder / SPEC_FILE)
    assert (spec.crop_size, spec.resize_size, spec.interpolation) == (SIZE, 9, "bicubic")
    assert spec.weights.kind == "imported" and spec.opset == 17 and spec.num_classes == CLASSES
    assert spec.parameters == WEIGHT.size + BIAS.size + 2 and spec.gmacs > 0
    assert (folder / LABELS_FILE).read_text().split() == [f"c{i}" for i in range(CLASSES)]
    pixels = RNG.integers(0, 256, (3, 3, SIZE, SIZE), dtype=np.uint8)
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(["logits", "probabilities"], {"pixels": pixels})
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = (pixels / 255.0 - mean.reshape(1, 3, 1, 1)) / std.reshape(1, 3, 1, 1)
    expected = x.reshape(3, -1) @ WEIGHT + BIAS
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(probabilities, torch.softmax(torch.from_numpy(expected), 1).numpy(), atol=1e-5)


def test_import_takes_logits_from_a_softmax_ending_nhwc_graph(tmp_path: Path, labels: Path) -> None:
    path = classifier(tmp_path / "k.onnx", shape=("N", SIZE, SIZE, 3), softmax=True)
    repository = tmp_path / "repo"
    argv = [str(path), "--name", "k", "--keras", "--labels", str(labels), "--repository", str(repository)]
    assert import_main(argv) == 0
    model = onnx.load(str(repository / "k" / "1" / "model.onnx"))
    assert [n.op_type for n in model.graph.node].count("Softmax") == 1  # the original one was taken off
    pixels = RNG.integers(0, 256, (2, 3, SIZE, SIZE), dtype=np.uint8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"pixels": pixels})
    expected = pixels.transpose(0, 2, 3, 1).astype(np.float32).reshape(2, -1) @ WEIGHT + BIAS
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-3)


def test_two_inputs(tmp_path: Path, labels: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = ["N", 3, SIZE, SIZE]
    path = save_graph(
        tmp_path / "two.onnx",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, image) for n in ("a", "b")],
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, image)],
    )
    repository = tmp_path / "repo"
    code = import_main(
        [str(path), "--name", "x", "--labels", str(labels), "--repository", str(repository), *NCHW_IMAGENET]
    )
    refused(code, capsys, repository, "2 inputs (a, b)", "exactly one")


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"dtype": TensorProto.INT64}, ("is int64, not float", "not an image input")),
        ({"shape": ("N", 1, SIZE, SIZE), "flatten": [-1, SIZE * SIZE]}, ("1 channels", "not 3 (RGB)")),
        ({"shape": ("N", 3 * SIZE * SIZE)}, ("rank 2", "rank 4")),
        ({"shape": ("N", SIZE, SIZE, 3)}, ("try --layout nhwc",)),
        ({"shape": ("N", 3, "H", "W")}, ("give --crop",)),
        (
            {"shape": (1, 3, SIZE, SIZE), "flatten": [1, 3 * SIZE * SIZE]},
            ("fixed batch of 1", "cannot be made dynamic"),
        ),
    ],
    ids=["int-input", "one-channel", "rank-2", "nhwc-as-nchw", "no-size", "batch-baked-in"],
)
def test_graphs_that_are_not_image_classifiers(
    tmp_path: Path, labels: Path, capsys: pytest.CaptureFixture[str], kwargs: dict, fragments: tuple[str, ...]
) -> None:
    path = classifier(tmp_path / "bad.onnx", **kwargs)
    repository = tmp_path / "repo"
    code = import_main(
        [str(path), "--name", "x", "--labels", str(labels), "--repository", str(repository), *NCHW_IMAGENET]
    )
    refused(code, capsys, repository, *fragments)


def test_two_outputs_and_unreadable_files(
    tmp_path: Path, labels: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = ["N", 3, SIZE, SIZE]
    path = save_graph(
        tmp_path / "two-out.onnx",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, image)],
        [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["z"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, image) for n in ("y", "z")],
    )
    repository = tmp_path / "repo"
    base = ["--name", "x", "--labels", str(labels), "--repository", str(repository), *NCHW_IMAGENET]
    refused(import_main([str(path), *base]), capsys, repository, "2 outputs (y, z)")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a graph at all")
    refused(import_main([str(junk), *base]), capsys, repository, "not a valid ONNX model")


def test_import_label_count_and_missing_normalisation(
    tmp_path: Path, labels: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = classifier(tmp_path / "m.onnx")
    repository = tmp_path / "repo"
    three = tmp_path / "three.json"
    three.write_text(json.dumps(["a", "b", "c"]))
    base = [str(path), "--name", "x", "--repository", str(repository)]
    refused(
        import_main([*base, "--labels", str(three), *NCHW_IMAGENET]),
        capsys,
        repository,
        "3 labels",
        "5 classes",
    )
    refused(import_main([*base, "--labels", str(labels)]), capsys, repository, "--mean and --std", "--keras")
    refused(
        import_main([*base, "--labels", str(labels), "--keras", "--layout", "nchw"]),
        capsys,
        repository,
        "--keras sets",
    )


# ------------------------------------------------------------------------------------------------ timm
@pytest.fixture(scope="module")
def b0_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import argparse

    import timm

    folder = tmp_path_factory.mktemp("timm-checkpoints")
    state = timm.create_model("efficientnet_b0", pretrained=False, num_classes=CLASSES).state_dict()
    paths = {"bare": folder / "bare.pth", "named": folder / "named.pth.tar"}
    torch.save(state, paths["bare"])
    torch.save(
        {"arch": "efficientnet_b0", "state_dict": state, "args": argparse.Namespace(lr=0.1)}, paths["named"]
    )
    return paths


def timm_argv(arch: str, weights: Path, labels: Path, repository: Path, *extra: str) -> list[str]:
    return [
        "--from",
        "timm",
        "--arch",
        arch,
        "--weights",
        str(weights),
        "--labels",
        str(labels),
        "--repository",
        str(repository),
        *extra,
    ]


def test_unknown_timm_architecture_names_the_closest(
    tmp_path: Path, labels: Path, b0_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    repository = tmp_path / "repo"
    code = export_main(timm_argv("tf_efficientnet_b9", b0_checkpoints["bare"], labels, repository))
    refused(
        code,
        capsys,
        repository,
        "unknown timm EfficientNet architecture 'tf_efficientnet_b9'",
        "closest:",
        "tf_efficientnet_b8",
    )
    code = export_main(timm_argv("resnet50", b0_checkpoints["bare"], labels, repository))
    refused(code, capsys, repository, "not an EfficientNet")


def test_checkpoint_for_another_architecture(
    tmp_path: Path, labels: Path, b0_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    repository = tmp_path / "repo"
    code = export_main(timm_argv("tf_efficientnet_b2", b0_checkpoints["named"], labels, repository))
    refused(code, capsys, repository, "trained as 'efficientnet_b0', not 'tf_efficientnet_b2'")
    code = export_main(timm_argv("tf_efficientnet_b2", b0_checkpoints["bare"], labels, repository))
    refused(code, capsys, repository, "does not fit this architecture", "missing keys")


def test_timm_label_count_and_missing_ema(
    tmp_path: Path, labels: Path, b0_checkpoints: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    repository = tmp_path / "repo"
    seven = tmp_path / "seven.txt"
    seven.write_text("\n".join("abcdefg"))
    code = export_main(timm_argv("efficientnet_b0", b0_checkpoints["bare"], seven, repository))
    refused(code, capsys, repository, "7 labels but the model has 5 classes")
    code = export_main(timm_argv("efficientnet_b0", b0_checkpoints["named"], labels, repository, "--ema"))
    refused(code, capsys, repository, "no state_dict_ema")
    code = export_main(
        timm_argv("efficientnet_b0", b0_checkpoints["bare"], labels, repository, "--variant", "b0")
    )
    refused(code, capsys, repository, "--variant is for --from torchvision")


def test_timm_flags_are_refused_without_from_timm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repository = tmp_path / "repo"
    code = export_main(
        [
            "--variant",
            "b0",
            "--weights",
            "random",
            "--ema",
            "--input-size",
            "128",
            "--repository",
            str(repository),
        ]
    )
    refused(code, capsys, repository, "--ema, --input-size apply to --from timm only")
