"""Settings: defaults, EFFNET_* environment variables, command-line flags over both."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from service.__main__ import _serve_parser, build_settings
from service.settings import Settings


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _serve_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("EFFNET_HTTP_PORT", "EFFNET_GRPC_PORT", "EFFNET_DEVICE", "EFFNET_MODELS", "EFFNET_CPUS"):
        monkeypatch.delenv(name, raising=False)
    settings = build_settings(parse([]))
    assert (settings.http_port, settings.grpc_port, settings.device) == (8000, 8001, "auto")
    assert settings.model_names == [] and settings.max_queue_delay_ms == 0
    assert settings.batch_size_for("CPUExecutionProvider", gmacs=0.39) == 4  # b0
    assert settings.batch_size_for("CPUExecutionProvider", gmacs=37.75) == 1  # b7
    assert settings.batch_size_for("CUDAExecutionProvider", gmacs=37.75) == 32  # b7
    assert settings.batch_size_for("CUDAExecutionProvider", gmacs=0.39) == 256  # b0
    assert settings.cpus == 0, "sized by the cores it may use"
    assert settings.instances_for("CUDAExecutionProvider", gmacs=37.75) == 2
    two_cores = settings.model_copy(update={"cpus": 2})
    assert two_cores.instances_for("CPUExecutionProvider", gmacs=0.39) == 3  # b0: a spare batch thread
    assert two_cores.instances_for("CPUExecutionProvider", gmacs=0.70) == 2  # b1: one batch per core
    assert two_cores.instances_for("CPUExecutionProvider", gmacs=37.75) == 1  # b7: one at a time
    assert Settings(instances=3).instances_for("CPUExecutionProvider", gmacs=37.75) == 3
    assert Settings(max_batch_size=8).batch_size_for("CPUExecutionProvider", gmacs=37.75) == 8


def test_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EFFNET_HTTP_PORT", "9100")
    monkeypatch.setenv("EFFNET_MODELS", " b0, lite0 ,")
    monkeypatch.setenv("EFFNET_DEVICE", "cpu")
    monkeypatch.setenv("EFFNET_STRICT", "true")
    settings = build_settings(parse([]))
    assert settings.http_port == 9100 and settings.device == "cpu" and settings.strict
    assert settings.model_names == ["b0", "lite0"]


def test_flags_win_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EFFNET_HTTP_PORT", "9100")
    args = parse(["--http-port", "9200", "--repository", "/srv/models", "--default-model", "b3"])
    settings = build_settings(args)
    assert settings.http_port == 9200
    assert settings.repository == Path("/srv/models") and settings.default_model == "b3"


def test_invalid_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="http_port"):
        Settings(http_port=70000)
    with pytest.raises(ValueError, match="device"):
        Settings(device="tpu")  # type: ignore[arg-type]
