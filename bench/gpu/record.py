"""gpu.json: the one result file of the device check, written by every step that learns something.

Standard library only (run.sh calls it on the device before anything is installed). Each step merges
its own top-level keys into OUT/gpu.json and rewrites it atomically, so whatever stops the check
(a missing wheel part, a CPU fallback, a timeout, a crash) leaves a file saying what was measured and
why it stopped:
- `stopped`: {"phase", "reason"} of the first step that stopped the check (later ones do not overwrite it);
- `phases`: {phase: "done" | "skipped: ..." | "failed: ..."} in order.

    python3 -m bench.gpu.record --out DIR stop --phase install --reason "..."
    python3 -m bench.gpu.record --out DIR phase --phase export --status done [--json FILE --key export]
    python3 -m bench.gpu.record --out DIR pytest --junit FILE --exit-code N
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

NAME = "gpu.json"


def load(out: Path) -> dict[str, Any]:
    try:
        loaded = json.loads((out / NAME).read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def save(out: Path, report: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    target = out / NAME
    partial = target.with_name(f".{NAME}.{os.getpid()}")
    partial.write_text(json.dumps(report, indent=2, default=str) + "\n")
    partial.replace(target)
    return target


def update(out: Path, **fields: Any) -> dict[str, Any]:
    """Merge top-level `fields` into OUT/gpu.json (dict values merge one level down)."""
    report = load(out)
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(report.get(key), dict):
            report[key] = {**report[key], **value}
        else:
            report[key] = value
    report["updated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save(out, report)
    return report


def phase(out: Path, name: str, status: str, **fields: Any) -> dict[str, Any]:
    return update(out, phases={name: status}, **fields)


def stop(out: Path, name: str, reason: str, **fields: Any) -> dict[str, Any]:
    """Record that the check stopped in phase `name` because of `reason` (the first stop is kept)."""
    report = load(out)
    first = report.get("stopped") or {"phase": name, "reason": reason}
    return update(out, stopped=first, phases={name: f"stopped: {reason}"}, **fields)


def junit_summary(path: Path, exit_code: int | None = None, limit: int = 20) -> dict[str, Any]:
    """Counts and the failing/skipped tests (with their messages) of a pytest --junitxml file."""
    summary: dict[str, Any] = {"exit_code": exit_code}
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as exc:
        summary["error"] = f"no junit report: {exc}"
        return summary
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    problems: list[dict[str, str]] = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or child.text or "").strip()
                problems.append({"test": name, "outcome": outcome, "message": message[:300]})
                break
        counts[outcome] += 1
    summary.update(counts)
    summary["tests"] = sum(counts.values())
    summary["problems"] = problems[:limit]
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stop")
    p.add_argument("--phase", required=True)
    p.add_argument("--reason", required=True)
    p = sub.add_parser("phase")
    p.add_argument("--phase", required=True)
    p.add_argument("--status", required=True)
    p.add_argument("--json", type=Path, default=None, help="a JSON file to store under --key")
    p.add_argument("--key", default=None)
    p = sub.add_parser("pytest")
    p.add_argument("--junit", type=Path, required=True)
    p.add_argument("--exit-code", type=int, default=None)
    args = parser.parse_args(argv)
    if args.command == "stop":
        stop(args.out, args.phase, args.reason)
    elif args.command == "phase":
        extra: dict[str, Any] = {}
        if args.json is not None:
            try:
                extra[args.key or args.phase] = json.loads(args.json.read_text())
            except (OSError, ValueError) as exc:
                extra[args.key or args.phase] = f"unreadable: {exc}"
        phase(args.out, args.phase, args.status, **extra)
    else:
        summary = junit_summary(args.junit, args.exit_code)
        status = "done" if args.exit_code == 0 else f"failed: exit {args.exit_code}"
        phase(args.out, "pytest", status, pytest=summary)
        print(json.dumps({k: v for k, v in summary.items() if k != "problems"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
