"""Model names as users type them: case-insensitive lookup and the suggestion for a near miss."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.api.v2 import dataplane as v2
from service.errors import UnknownModel
from service.names import closest_name, match_name, unknown_name_message
from tests.tiny_model import write_model
from tests.unit.conftest import EngineStarter

NAMES = ["b0", "b5", "lite0", "b5-int8"]


@pytest.mark.parametrize(
    ("typed", "expected"),
    [("b5", "b5"), ("B5", "b5"), ("LITE0", "lite0"), ("Lite0", "lite0"), ("B5-INT8", "b5-int8")],
)
def test_match_ignores_case(typed: str, expected: str) -> None:
    assert match_name(typed, NAMES) == expected


def test_match_prefers_exact_and_refuses_ambiguity() -> None:
    assert match_name("Tiny", ["tiny", "Tiny"]) == "Tiny"
    assert match_name("TINY", ["tiny", "Tiny"]) is None
    assert match_name("b9", NAMES) is None
    assert match_name("", NAMES) is None


@pytest.mark.parametrize(
    ("typed", "expected"),
    [("lite-0", "lite0"), ("lite", "lite0"), ("LITE1", "lite0"), ("b5_int8", "b5-int8"), ("resnet50", None)],
)
def test_closest_name(typed: str, expected: str | None) -> None:
    assert closest_name(typed, NAMES) == expected


def test_closest_name_of_a_wrong_digit_is_a_sibling() -> None:
    assert closest_name("b9", NAMES) in ("b0", "b5")


def test_message_suggests_and_lists() -> None:
    message = unknown_name_message("lite", NAMES)
    assert message == "unknown model 'lite'; did you mean 'lite0'? valid models: b0, b5, b5-int8, lite0"
    assert unknown_name_message("resnet50", ["b0"]) == "unknown model 'resnet50'; valid models: b0"
    assert unknown_name_message("x" * 500, []).count("x") == 64


async def test_engine_lookup_is_case_insensitive(tmp_path: Path, start_engine: EngineStarter) -> None:
    write_model(tmp_path, "tiny")
    engine = await start_engine(tmp_path)
    assert engine.lookup("TINY").name == "tiny"
    assert v2.model_ready(engine, "TINY") and engine.label("Tiny") == "tiny"
    assert engine.admit("TiNy").name == "tiny" and engine.admit("AUTO").name == "auto"
    with pytest.raises(UnknownModel, match="did you mean 'tiny'"):
        v2.model_ready(engine, "tiny2")
    assert engine.ready_version("Tiny").name == "tiny"
    with pytest.raises(UnknownModel, match="did you mean 'tiny'"):
        engine.lookup("tiny2")
    assert engine.label("tiny2") == "unknown" and engine.label(None) == "tiny"
