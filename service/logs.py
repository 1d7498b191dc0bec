"""Logging set-up: one line per event on stderr, key=value text or JSON whose fields are fields.

Call sites log `event=NAME key=value ...` (values that may hold spaces with %r). The text format prints
that as it is; the JSON format turns each key=value into a field of its own (numbers as numbers, quoted
values unquoted), so `jq 'select(.event == "access" and .status != 200)'` works. Words before the first
key=value stay in `message`.

The access log (one line per request: logger `service.access`, event `access`) can be turned off
(`--no-access-log`, EFFNET_ACCESS_LOG=false) without touching the rest.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import sys
import time
from typing import Any

ACCESS_LOGGER = "service.access"

# key=value where value is a Python repr of a str ('...' or "..."), or runs to the next space.
_PAIR = re.compile(r"""(?:^|\s)([A-Za-z_][\w.]*)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S*)""")
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")
_RESERVED = {"time", "level", "logger", "message", "exception"}


def _value(raw: str) -> Any:
    if raw[:1] in ("'", '"'):
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    if _NUMBER.fullmatch(raw):
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    return raw


def fields_of(message: str) -> tuple[str, dict[str, Any]]:
    """The words before the first key=value, and the key=value pairs as fields."""
    first = _PAIR.search(message)
    if first is None:
        return message, {}
    fields: dict[str, Any] = {}
    for match in _PAIR.finditer(message):
        key = match.group(1)
        fields[f"field_{key}" if key in _RESERVED else key] = _value(match.group(2))
    return message[: first.start()].strip(), fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text, fields = fields_of(record.getMessage())
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            **fields,
        }
        if text:
            entry["message"] = text
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(level: str, as_json: bool, access_log: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger(ACCESS_LOGGER).disabled = not access_log
    # uvicorn's own error log keeps its format but goes through our handler.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
