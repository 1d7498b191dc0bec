"""What the classify CLI reports: one outcome per image, written as JSON lines or CSV while the run goes
on, a table for a handful of images, and the summary (images/s, failures grouped by reason)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table


@dataclass
class Outcome:
    """What became of one image: predictions, or the error the server (or the network) gave."""

    path: str
    ok: bool
    model: str | None = None
    version: int | None = None
    weights: str | None = None
    predictions: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    route: dict[str, Any] | None = None
    error_code: str | None = None
    error: str | None = None
    seconds: float = 0.0


class Writer:
    """One JSON line, or one CSV row, per image, written as results arrive (a crash keeps them)."""

    def __init__(self, stream: IO[str], fmt: str, top_k: int) -> None:
        self._stream, self._fmt, self._top_k = stream, fmt, top_k
        self._csv: Any = None
        if fmt == "csv":
            columns = ("label", "score", "class_id")
            ranks = [f"{name}_{rank}" for rank in range(1, top_k + 1) for name in columns]
            self._csv = csv.writer(stream)
            self._csv.writerow(["path", "ok", "model", "weights", *ranks, "total_ms", "error_code", "error"])

    def write(self, outcome: Outcome) -> None:
        if self._fmt == "jsonl":
            record = {k: v for k, v in asdict(outcome).items() if v is not None}
            self._stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            cells: list[object] = []
            for rank in range(self._top_k):
                p = outcome.predictions[rank] if rank < len(outcome.predictions) else {}
                cells += [p.get("label", ""), _score(p.get("score")), p.get("class_id", "")]
            self._csv.writerow(
                [outcome.path, outcome.ok, outcome.model or "", outcome.weights or "", *cells,
                 outcome.timings.get("total_ms", ""), outcome.error_code or "", outcome.error or ""]
            )  # fmt: skip
        self._stream.flush()


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def render(outcomes: list[Outcome], console: Console) -> None:
    table = Table(title="top-k predictions")
    for column, justify in (("image", "left"), ("rank", "right"), ("class", "right"), ("label", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_column("score", justify="right")
    for outcome in outcomes:
        if not outcome.ok:
            table.add_row(Path(outcome.path).name, "", "", f"[red]{outcome.error}[/red]", "")
        for rank, p in enumerate(outcome.predictions, start=1):
            name = Path(outcome.path).name if rank == 1 else ""
            table.add_row(name, str(rank), str(p["class_id"]), p["label"], f"{p['score']:.4f}")
        table.add_section()
    console.print(table)


def summarise(outcomes: list[Outcome], seconds: float, console: Console) -> None:
    ok = sum(o.ok for o in outcomes)
    failed = [o for o in outcomes if not o.ok]
    rate = ok / seconds if seconds > 0 else 0.0
    console.print(
        f"classified {ok} of {len(outcomes)} images in {seconds:.2f} s ({rate:.1f} images/s); "
        f"{len(failed)} failed",
        highlight=False,
    )
    reasons = Counter((o.error_code, o.error) for o in failed)
    for (code, message), count in reasons.most_common():
        examples = [Path(o.path).name for o in failed if (o.error_code, o.error) == (code, message)][:3]
        more = f" and {count - len(examples)} more" if count > len(examples) else ""
        console.print(f"  {count} x {code}: {message} ({', '.join(examples)}{more})", markup=False)
