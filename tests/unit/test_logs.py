"""Log lines an operator can query: JSON fields that are fields, and an access log that can be off."""

from __future__ import annotations

import json
import logging

import pytest

from service.logs import ACCESS_LOGGER, JsonFormatter, fields_of, setup_logging


def test_key_values_become_typed_fields_and_prose_stays_the_message() -> None:
    text, fields = fields_of("batch failed model=b0 batch_size=4 ms=12.5 reason='no such file: a b' ok=true")
    assert text == "batch failed"
    assert fields == {"model": "b0", "batch_size": 4, "ms": 12.5, "reason": "no such file: a b", "ok": "true"}


def test_a_line_without_key_values_is_all_message() -> None:
    assert fields_of("open http://localhost:8000/") == ("open http://localhost:8000/", {})


def test_fields_never_overwrite_the_record_s_own() -> None:
    _, fields = fields_of("event=x level=high message=\"quoted 'inner'\"")
    assert fields == {"event": "x", "field_level": "high", "field_message": "quoted 'inner'"}


def _record(message: str, *args: object, name: str = "service.test") -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, message, args, None)


def test_json_lines_carry_the_event_and_its_fields_at_the_top() -> None:
    line = JsonFormatter().format(
        _record(
            "event=access protocol=%s route=%r model=%s status=%s ms=%.1f request_id=%s",
            "http",
            "POST /classify",
            "lite0",
            200,
            3.25,
            "abc",
        )  # fmt: skip
    )
    entry = json.loads(line)
    assert entry["event"] == "access" and entry["route"] == "POST /classify" and entry["model"] == "lite0"
    assert entry["status"] == 200 and entry["ms"] == 3.2 and entry["request_id"] == "abc"
    assert entry["level"] == "INFO" and entry["logger"] == "service.test" and entry["time"].endswith("Z")
    assert "message" not in entry  # nothing but fields: no string to parse again


def test_a_message_with_an_exception_keeps_both() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "load failed model=%s", ("b3",), sys.exc_info()
        )
    entry = json.loads(JsonFormatter().format(record))
    assert (
        entry["message"] == "load failed"
        and entry["model"] == "b3"
        and "ValueError: boom" in entry["exception"]
    )


@pytest.mark.parametrize("enabled", [True, False])
def test_the_access_log_can_be_turned_off_alone(enabled: bool, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging("INFO", as_json=True, access_log=enabled)
        logging.getLogger(ACCESS_LOGGER).info("event=access route=%s", "POST /classify")
        logging.getLogger("service").info("event=ready models=%s", "lite0")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
        logging.getLogger(ACCESS_LOGGER).disabled = False
    events = [line["event"] for line in lines]
    assert events == (["access", "ready"] if enabled else ["ready"])
