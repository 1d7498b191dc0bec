"""Which graph a bare model name means under --precision (service/core/precision.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from service.core.precision import choose_model, resolve_precision

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


@pytest.mark.parametrize(
    ("name", "precision", "ready", "expected"),
    [
        ("b0", "auto", {"b0": CUDA, "b0-fp16": CUDA}, "b0-fp16"),  # auto on CUDA: fp16
        ("b0", "auto", {"b0": CPU, "b0-fp16": CPU}, "b0"),  # auto on CPU: fp32
        ("b0", "auto", {"b0": CUDA}, "b0"),  # no fp16 export
        ("b0", "fp16", {"b0": CPU, "b0-fp16": CPU}, "b0-fp16"),  # asked for, wherever it runs
        ("b0", "fp32", {"b0": CUDA, "b0-fp16": CUDA}, "b0"),
        ("b0-fp16", "fp32", {"b0": CUDA, "b0-fp16": CUDA}, "b0-fp16"),  # explicit names always work
        ("b0-fp16", "auto", {"b0": CPU, "b0-fp16": CPU}, "b0-fp16"),
        ("b0", "auto", {"b0": CUDA, "b0-fp16": None}, "b0"),  # provider unknown: not CUDA
        ("lite0", "auto", {"lite0": CUDA, "b0-fp16": CUDA}, "lite0"),
        ("nope", "auto", {"b0": CUDA}, "nope"),  # unknown names pass through to the usual 404
    ],
)
def test_choose_model(name: str, precision: str, ready: dict[str, str | None], expected: str) -> None:
    assert choose_model(name, precision, ready) == expected  # type: ignore[arg-type]


@dataclass
class Entry:
    provider: str | None
    state: str


def test_only_ready_models_are_candidates() -> None:
    loading = {"b0": Entry(CUDA, "ready"), "b0-fp16": Entry(None, "loading")}
    assert resolve_precision("b0", "auto", loading) == "b0"
    ready = {"b0": Entry(CUDA, "ready"), "b0-fp16": Entry(CUDA, "ready")}
    assert resolve_precision("b0", "auto", ready) == "b0-fp16"
