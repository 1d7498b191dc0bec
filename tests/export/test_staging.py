"""Atomic publication of a version directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.errors import ExportError
from models.repository import staged_version


def test_published_version_appears_with_all_files(tmp_path: Path) -> None:
    with staged_version(tmp_path, "b0", 1) as staging:
        (staging / "model.onnx").write_bytes(b"graph")
        assert not (tmp_path / "b0" / "1").exists()  # nothing visible before the end
    assert (tmp_path / "b0" / "1" / "model.onnx").read_bytes() == b"graph"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b0"]  # no staging leftovers
    assert (tmp_path / "b0" / "1").stat().st_mode & 0o777 == 0o755


def test_failure_leaves_the_repository_untouched(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), staged_version(tmp_path, "b0", 1) as staging:
        (staging / "model.onnx").write_bytes(b"half")
        raise RuntimeError("export crashed")
    assert list(tmp_path.iterdir()) == []


def test_republishing_replaces_the_old_version_whole(tmp_path: Path) -> None:
    for content in (b"old", b"new"):
        with staged_version(tmp_path, "b0", 1) as staging:
            (staging / "model.onnx").write_bytes(content)
            if content == b"old":
                (staging / "stale.txt").write_text("only in the old one")
    version = tmp_path / "b0" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["model.onnx"]
    assert (version / "model.onnx").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b0"]


def test_unwritable_repository_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ExportError, match="is not writable"), staged_version(blocker / "repo", "b0", 1):
        pass
