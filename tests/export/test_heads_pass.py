"""The graph pass (models/heads.py) and the torch-free upgrade of a repository (models/upgrade.py),
on the tiny real graph: pooled colour -> linear layer (tests/tiny_model.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from models.errors import ExportError
from models.heads import HeadNotFound, add_explain_outputs, strip_explain_outputs
from models.upgrade import main, upgrade
from service.model_spec import MODEL_FILE, SPEC_FILE, ModelSpec
from tests.tiny_model import CLASSES, SIZE, TINY_WEIGHTS, tiny_graph, write_model


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(names, feeds)  # type: ignore[no-any-return]


def test_maps_are_the_weights_times_the_feature_map() -> None:
    model, shapes = add_explain_outputs(tiny_graph())
    onnx.checker.check_model(model, full_check=True)
    assert (shapes.channels, shapes.height, shapes.width) == (3, SIZE, SIZE)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 3, SIZE, SIZE), dtype=np.uint8)
    ids = np.array([[1, -1], [-1, -1]], dtype=np.int64)
    features, cam, classes, probabilities = _run(
        model, {"pixels": pixels, "cam_class_ids": ids}, ["features", "cam", "cam_classes", "probabilities"]
    )
    np.testing.assert_allclose(features, pixels.mean(axis=(2, 3)), rtol=1e-5)
    ranked = np.argsort(-probabilities, axis=1, kind="stable")
    np.testing.assert_array_equal(classes, [[1, ranked[0, 1]], ranked[1, :2]])
    expected = np.einsum("ck,nchw->nkhw", TINY_WEIGHTS, pixels.astype(np.float32))
    np.testing.assert_allclose(
        cam, np.take_along_axis(expected, classes[:, :, None, None], axis=1), rtol=1e-5
    )
    # Without cam_class_ids (its default), no map is made: the outputs cost nothing to carry.
    (empty,) = _run(model, {"pixels": pixels}, ["cam"])
    assert empty.shape == (2, 0, SIZE, SIZE)


def test_the_pass_is_idempotent_and_strips_back() -> None:
    original = tiny_graph()
    once, _ = add_explain_outputs(original)
    twice, _ = add_explain_outputs(once)
    assert len(twice.graph.node) == len(once.graph.node)
    assert strip_explain_outputs(once).SerializeToString() == original.SerializeToString()


def test_a_graph_without_a_pooled_linear_head_is_refused() -> None:
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["pixels"], ["f"], to=TensorProto.FLOAT),
            helper.make_node("Flatten", ["f"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "headless",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["N", 3, SIZE, SIZE])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", None]),
        ],
    )
    with pytest.raises(HeadNotFound, match="no linear layer"):
        add_explain_outputs(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_upgrade_gives_old_models_the_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_model(tmp_path, "old")
    write_model(tmp_path, "new", explain=True)
    assert upgrade(tmp_path) == ["old/1"]
    spec = ModelSpec.from_file(tmp_path / "old" / "1" / SPEC_FILE)
    assert [o.name for o in spec.outputs] == ["logits", "probabilities", "features", "cam", "cam_classes"]
    assert spec.outputs[3].shape == (-1, -1, SIZE, SIZE) and spec.outputs[4].dtype == "int64"
    model = onnx.load(str(tmp_path / "old" / "1" / MODEL_FILE))
    pixels = np.full((1, 3, SIZE, SIZE), 7, np.uint8)
    (features,) = _run(model, {"pixels": pixels}, ["features"])
    np.testing.assert_allclose(features, [[7, 7, 7]])
    assert main(["--repository", str(tmp_path)]) == 0
    assert "nothing to upgrade" in capsys.readouterr().out
    assert CLASSES == spec.num_classes


def test_upgrade_leaves_a_graph_it_cannot_read_as_it_was(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "odd")
    model = tiny_graph()
    model.graph.node[2].op_type = "Mul"  # logits = pooled * weights: no linear layer any more
    (folder / MODEL_FILE).write_bytes(model.SerializeToString())
    before = (folder / MODEL_FILE).read_bytes()
    with pytest.raises(ExportError, match="no linear layer"):
        upgrade(tmp_path)
    assert (folder / MODEL_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd"]  # no staging folder left behind
