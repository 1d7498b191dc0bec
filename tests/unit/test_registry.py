"""Model repository discovery and file validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import ERROR_TABLE, BadImage, NotReady, Overloaded, ServiceError, retry_after, status_for
from service.registry import ModelLoadError, ModelState, discover, validate_files
from tests.tiny_model import write_model


def test_discover_takes_the_newest_version_and_ignores_junk(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    (tmp_path / "tiny" / "7").mkdir()
    (tmp_path / "tiny" / "latest").mkdir()
    (tmp_path / "Not A Name").mkdir()
    (tmp_path / "README").write_text("x")
    entries = discover(tmp_path, [])
    assert list(entries) == ["tiny"]
    assert entries["tiny"].version == 7


def test_wanted_but_absent_models_fail_with_a_reason(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    entries = discover(tmp_path, ["tiny", "b3"])
    assert entries["tiny"].state is ModelState.LOADING
    assert entries["b3"].state is ModelState.FAILED and "not found" in (entries["b3"].reason or "")


def test_validate_files_accepts_a_good_model(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    spec, labels = validate_files(discover(tmp_path, [])["tiny"])
    assert spec.crop_size == 16 and labels == ["red", "green", "blue", "grey"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "model.json").unlink(), "model.json is missing"),
        (lambda d: (d / "model.json").write_text('{"name": 3}'), "model.json is invalid"),
        (lambda d: (d / "model.onnx").unlink(), "model.onnx is missing"),
        (lambda d: (d / "model.onnx").write_bytes(b"truncated"), "sha256"),
        (lambda d: (d / "labels.txt").write_text("only\n"), "1 labels"),
    ],
)
def test_validate_files_says_what_is_wrong(tmp_path: Path, damage, message: str) -> None:
    folder = write_model(tmp_path, "tiny")
    damage(folder)
    with pytest.raises(ModelLoadError, match=message):
        validate_files(discover(tmp_path, [])["tiny"])


def test_error_table_maps_every_error_once() -> None:
    assert status_for(BadImage("x")).http == 400
    assert status_for(Overloaded("x")).http == 503
    assert retry_after(Overloaded("x", retry_after=2.5)) == 2.5
    assert retry_after(BadImage("x")) is None
    assert status_for(NotReady("x")).grpc.name == "UNAVAILABLE"
    assert all(issubclass(cls, ServiceError) for cls in ERROR_TABLE)
