"""Model repository scanning, config.json, file validation and the digest cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.errors import (
    ERROR_TABLE,
    BadImage,
    LoadFailed,
    NotReady,
    Overloaded,
    ServiceError,
    retry_after,
    status_for,
)
from service.lifecycle.configs import VersionPolicy, read_config
from service.lifecycle.files import HashCache, ModelLoadError, read_spec, recorded_identity, validate_files
from service.lifecycle.repository import scan
from tests.tiny_model import write_model


def test_scan_lists_every_version_and_ignores_junk(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    write_model(tmp_path, "tiny", version=7)
    (tmp_path / "tiny" / "latest").mkdir()
    (tmp_path / "tiny" / "0").mkdir()
    (tmp_path / "Not A Name").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "README").write_text("x")
    models = scan(tmp_path)
    assert list(models) == ["tiny"]
    assert sorted(models["tiny"].versions) == [1, 7]
    assert models["tiny"].config_error is None


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"latest": 1}, [5]),
        ({"latest": 2}, [3, 5]),
        ({"all": True}, [1, 3, 5]),
        ({"specific": [1, 3, 9]}, [1, 3]),
    ],
)
def test_version_policy_selects(policy: dict[str, object], expected: list[int]) -> None:
    assert VersionPolicy.model_validate(policy).select([5, 1, 3]) == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"version_policy": {"latest": 1, "all": true}}', "exactly one"),
        ('{"version_policy": {"latest": 0}}', "greater than or equal to 1"),
        ('{"max_batch_size": 0}', "max_batch_size"),
        ('{"colour": "blue"}', "colour"),
        ("not json", "config.json is invalid"),
    ],
)
def test_a_bad_config_fails_that_model_with_the_reason(tmp_path: Path, content: str, message: str) -> None:
    write_model(tmp_path, "tiny")
    write_model(tmp_path, "other")
    (tmp_path / "tiny" / "config.json").write_text(content)
    with pytest.raises(ModelLoadError, match=message):
        read_config(tmp_path / "tiny")
    models = scan(tmp_path)
    assert message.split()[0] in (models["tiny"].config_error or "")
    assert models["other"].config_error is None


def test_config_overrides_are_read(tmp_path: Path) -> None:
    write_model(tmp_path, "tiny")
    config = {"version_policy": {"all": True}, "max_batch_size": 2, "instances": 2, "max_queue_delay_ms": 3}
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(config))
    read = read_config(tmp_path / "tiny")
    assert read.max_batch_size == 2 and read.instances == 2 and read.max_queue_delay_ms == 3
    assert read.version_policy.all is True


def test_validate_files_accepts_a_good_model(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny")
    spec, labels = validate_files(folder)
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
        validate_files(folder)


def test_the_folder_decides_name_and_version_and_a_copied_model_json_is_only_noted(tmp_path: Path) -> None:
    folder = write_model(tmp_path, "tiny")
    spec, _ = validate_files(folder)  # a copy of tiny/1 placed as tiny/2 or other/1 still validates
    assert recorded_identity(spec, "tiny", 1) is None
    assert recorded_identity(read_spec(folder), "tiny", 2) == "tiny/1"
    assert recorded_identity(spec, "other", 1) == "tiny/1"


def test_hash_cache_survives_a_restart_and_misses_on_change(tmp_path: Path) -> None:
    target = tmp_path / "graph.bin"
    target.write_bytes(b"a" * 1000)
    cache_file = tmp_path / "cache" / "hashes.json"
    first = HashCache(cache_file).sha256(target)
    assert cache_file.is_file()
    entries = json.loads(cache_file.read_text())
    # A second cache (a restart) answers from the file: prove it by doctoring the stored digest.
    key = next(iter(entries))
    entries[key][2] = "f" * 64
    cache_file.write_text(json.dumps(entries))
    assert HashCache(cache_file).sha256(target) == "f" * 64
    target.write_bytes(b"b" * 1001)  # size (and mtime) change: hashed again
    assert HashCache(cache_file).sha256(target) != first != "f" * 64


def test_hash_cache_without_a_writable_file_still_hashes(tmp_path: Path) -> None:
    target = tmp_path / "graph.bin"
    target.write_bytes(b"abc")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = HashCache(blocker / "sub" / "hashes.json")  # a file where a folder should be
    assert cache.sha256(target) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_error_table_maps_every_error_once() -> None:
    assert status_for(BadImage("x")).http == 400
    assert status_for(Overloaded("x")).http == 503
    assert status_for(LoadFailed("x")).http == 400
    assert retry_after(Overloaded("x", retry_after=2.5)) == 2.5
    assert retry_after(BadImage("x")) is None
    assert status_for(NotReady("x")).grpc.name == "UNAVAILABLE"
    assert all(issubclass(cls, ServiceError) for cls in ERROR_TABLE)
