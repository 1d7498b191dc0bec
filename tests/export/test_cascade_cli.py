"""models.cascade --fp32-where-int8-is-slow: a cascade's int8 stage becomes its fp32 model only where
this CPU runs int8 without fused kernels, and only where the repository has that model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models import cascade
from models.cascade import fp32_where_int8_is_slow


def repository_of(tmp_path: Path, *names: str) -> Path:
    for name in names:
        (tmp_path / name).mkdir()
    return tmp_path


def test_int8_stages_become_fp32_only_where_int8_is_unfused_and_fp32_is_there(tmp_path: Path) -> None:
    repository = repository_of(tmp_path, "lite0", "lite0-int8", "lite1-int8", "lite2")
    stages: list[dict[str, object]] = [
        {"model": "lite0-int8", "exit_confidence": 0.45},
        {"model": "lite1-int8", "exit_confidence": 0.6},  # no lite1 here: kept
        {"model": "lite2"},
    ]
    assert fp32_where_int8_is_slow(repository, stages, int8_fused=True) == (stages, [])
    chosen, replaced = fp32_where_int8_is_slow(repository, stages, int8_fused=False)
    assert chosen == [
        {"model": "lite0", "exit_confidence": 0.45},
        {"model": "lite1-int8", "exit_confidence": 0.6},
        {"model": "lite2"},
    ]
    assert replaced == ["lite0 in place of lite0-int8"]


@pytest.mark.parametrize(("fused", "first"), [(True, "lite0-int8"), (False, "lite0")])
def test_the_cli_writes_the_stage_this_cpu_runs_cheaper(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fused: bool,
    first: str,
) -> None:
    repository = repository_of(tmp_path, "lite0", "lite0-int8", "lite2")
    monkeypatch.setattr(cascade, "fused_int8_exact", lambda: fused)
    argv = ["--repository", str(repository), "--name", "cascade-lite", "--fp32-where-int8-is-slow",
            "--stage", "lite0-int8:0.45", "--stage", "lite2"]  # fmt: skip
    assert cascade.main(argv) == 0
    written = json.loads((repository / "cascade-lite" / "cascade.json").read_text())
    assert [stage["model"] for stage in written["stages"]] == [first, "lite2"]
    assert written["stages"][0]["exit_confidence"] == 0.45
    if fused:
        assert "description" not in written
    else:
        assert "no VNNI" in written["description"]
        assert "lite0 in place of lite0-int8" in capsys.readouterr().out
