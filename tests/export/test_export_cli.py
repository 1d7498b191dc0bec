"""The CLI's contract: what lands in the repository, and one clear line (exit 2) for user errors.

The ONNX conversion itself is faked here (it is covered by test_parity.py); everything around it
(weights, labels, model.json, atomic publication, messages) is real.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import models.sources as sources_module
import models.weights as weights_module
from models import export as export_module
from models.architectures import build_classifier
from models.errors import ExportError, WeightsUnavailable
from models.export import main
from models.variants import Variant, get_variant
from service.model_spec import LABELS_FILE, SPEC_FILE, ModelSpec

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    def write(_module: object, _crop: int, path: Path) -> None:
        path.write_bytes(b"not really onnx")

    monkeypatch.setattr(sources_module, "export_onnx", write)
    monkeypatch.setattr(sources_module, "verify", lambda _path, _reference: 0.0)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(_variant: Variant) -> Path:
        raise WeightsUnavailable("cannot download https://example/b0.pth: no network")

    monkeypatch.setattr(weights_module, "_torchvision_checkpoint", unreachable)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_custom_checkpoint_with_labels_under_its_own_name(
    tmp_path: Path, fake_graph: None, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "dogs.pt"
    torch.save(build_classifier(get_variant("b0"), num_classes=3).state_dict(), checkpoint)
    labels = tmp_path / "labels.txt"
    labels.write_text("corgi\nbeagle\npug\n")
    repository = tmp_path / "repo"
    code, _ = run(
        [
            "--variant",
            "b0",
            "--repository",
            str(repository),
            "--weights",
            str(checkpoint),
            "--labels",
            str(labels),
            "--name",
            "dogs",
            "--version",
            "3",
        ],
        capsys,
    )
    assert code == 0
    spec = ModelSpec.from_file(repository / "dogs" / "3" / SPEC_FILE)
    assert (spec.name, spec.variant, spec.version, spec.num_classes) == ("dogs", "b0", 3, 3)
    assert [o.shape for o in spec.outputs] == [(-1, 3), (-1, 3)]  # a stand-in graph: no explain outputs
    assert spec.weights.kind == "custom" and spec.weights.source == "dogs.pt"
    assert (repository / "dogs" / "3" / LABELS_FILE).read_text().split() == ["corgi", "beagle", "pug"]


def test_default_weights_offline_warns_once_for_several_variants(
    tmp_path: Path, fake_graph: None, offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["--variant", "b0,b1", "--repository", str(tmp_path)], capsys)
    assert code == 0
    assert err.count("WARNING") == 1 and "RANDOM" in err
    for key in ("b0", "b1"):
        assert ModelSpec.from_file(tmp_path / key / "1" / SPEC_FILE).weights.kind == "random"


def test_failed_export_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def crash(_module: object, _crop: int, path: Path) -> None:
        path.write_bytes(b"half a graph")
        raise ExportError("exporter crashed half-way")

    monkeypatch.setattr(sources_module, "export_onnx", crash)
    code, err = run(["--variant", "b0", "--repository", str(tmp_path), "--weights", "random"], capsys)
    assert code == 2 and "crashed half-way" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--variant", "b9"], "unknown variant 'b9'"),
        (["--variant", "b0", "--opset", "13"], "only opset 18"),
        (["--variant", "b0", "--weights", "random", "--num-classes", "10"], "needs --labels"),
        (["--variant", "b0", "--weights", "imagenet"], "cannot download"),
        (["--variant", "lite0", "--weights", "imagenet", "--num-classes", "10"], "1000 classes, not 10"),
        (["--variant", "b0", "--weights", "/nonexistent/x.pt"], "is not default, imagenet, random"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(
    tmp_path: Path, offline: None, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, err = run([*argv, "--repository", str(tmp_path / "repo")], capsys)
    assert code == 2
    assert message in err and err.startswith("error:")


def test_unreadable_and_mismatching_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 64)
    argv = ["--variant", "b0", "--repository", str(tmp_path / "r"), "--weights"]
    code, err = run([*argv, str(garbage)], capsys)
    assert code == 2 and "cannot read checkpoint" in err

    b1 = tmp_path / "b1.pt"
    torch.save(build_classifier(get_variant("b1")).state_dict(), b1)
    code, err = run([*argv, str(b1)], capsys)
    assert code == 2 and "does not fit this architecture" in err and "unexpected keys: features.1.1" in err
    assert not (tmp_path / "r" / "b0").exists()


def test_unwritable_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run(["--variant", "b0", "--repository", str(blocker / "repo"), "--weights", "random"], capsys)
    assert code == 2 and "is not writable" in err


def test_cli_process_reports_without_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "models.export", "--variant", "b8", "--repository", "/tmp/unused"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "unknown variant 'b8'" in result.stderr and "Traceback" not in result.stderr


def test_export_error_is_raised_by_the_api(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown variant"):
        export_module.export_variant("b10", tmp_path)
