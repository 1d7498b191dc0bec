"""The classify CLI's parts without a server: finding images, retrying overload, writing results."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from rich.console import Console

from service.client import cli as client
from service.client.cli import Failure, classify_all, classify_one, find_images
from service.client.report import Outcome, Writer, summarise


def test_find_images_walks_folders_and_keeps_named_files(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/x.JPG", "a/b/y.webp", "a/b/z.png", "a/readme.md", "named.txt"):
        (tmp_path / name).write_bytes(b"")
    named = [tmp_path / "a", tmp_path / "named.txt", tmp_path / "a/b/y.webp", tmp_path / "no"]
    images, missing = find_images(named)
    relative = [str(p.relative_to(tmp_path)) for p in images]
    assert relative == ["a/b/y.webp", "a/b/z.png", "a/x.JPG", "named.txt"]  # sorted, unique, no .md
    assert missing == [str(tmp_path / "no")]


class FakeTransport:
    def __init__(self, answers: list[Exception | Outcome]) -> None:
        self.answers = answers
        self.calls = 0
        self.closed = False

    async def classify(self, data: bytes, name: str) -> Outcome:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return Outcome(name, ok=True, model=answer.model, predictions=answer.predictions)

    async def close(self) -> None:
        self.closed = True


async def test_overload_is_retried_then_reported(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(client, "MAX_RETRY_WAIT_S", 0.0)
    image = tmp_path / "x.jpg"
    image.write_bytes(b"jpeg")
    busy = Failure("overloaded", "HTTP 503: queue is full", retry_after=1.0)
    recovered = FakeTransport([busy, busy, Outcome("", ok=True, model="b0")])
    outcome = await classify_one(recovered, image)
    assert outcome.ok and recovered.calls == 3
    never = FakeTransport([busy])
    outcome = await classify_one(never, image)
    assert not outcome.ok and outcome.error_code == "overloaded"
    assert never.calls == client.OVERLOAD_RETRIES + 1
    refused = FakeTransport([Failure("bad_image", "HTTP 400: not an image")])  # no retry hint: no retry
    outcome = await classify_one(refused, image)
    assert refused.calls == 1 and outcome.error == "HTTP 400: not an image"
    broken = FakeTransport([KeyError("results")])  # a 200 that is not our answer fails that image only
    assert (await classify_one(broken, image)).error_code == "bad_response"
    assert (await classify_one(broken, tmp_path / "gone.jpg")).error_code == "unreadable"


async def test_every_image_gets_one_outcome(tmp_path: Path) -> None:
    images = []
    for index in range(7):
        images.append(tmp_path / f"{index}.jpg")
        images[-1].write_bytes(b"x")
    transport = FakeTransport([Outcome("", ok=True, model="b0")])
    seen: list[Outcome] = []
    outcomes = await classify_all(lambda: transport, images, concurrency=3, done=seen.append)
    assert sorted(o.path for o in outcomes) == sorted(str(p) for p in images) and len(seen) == 7
    assert transport.closed


def test_writers_and_summary() -> None:
    good = Outcome("a.jpg", ok=True, model="lite0", weights="imagenet", timings={"total_ms": 5.0},
                   predictions=[{"class_id": 281, "label": "tabby", "score": 0.5}])  # fmt: skip
    bad = Outcome("b.jpg", ok=False, error_code="bad_image", error="HTTP 400: not an image")
    lines = io.StringIO()
    writer = Writer(lines, "jsonl", top_k=2)
    writer.write(good)
    writer.write(bad)
    records = [json.loads(line) for line in lines.getvalue().splitlines()]
    assert records[0]["predictions"][0]["label"] == "tabby" and "error" not in records[0]
    assert records[1] == {
        "path": "b.jpg", "ok": False, "predictions": [], "timings": {},
        "error_code": "bad_image", "error": "HTTP 400: not an image", "seconds": 0.0,
    }  # fmt: skip
    table = io.StringIO()
    writer = Writer(table, "csv", top_k=2)
    writer.write(good)
    writer.write(bad)
    rows = list(csv.DictReader(io.StringIO(table.getvalue())))
    assert rows[0]["label_1"] == "tabby" and rows[0]["score_1"] == "0.500000" and rows[0]["label_2"] == ""
    assert rows[1]["error_code"] == "bad_image" and rows[1]["ok"] == "False"
    console = Console(file=io.StringIO(), width=200)
    summarise([good, bad, bad], 2.0, console)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "classified 1 of 3 images in 2.00 s (0.5 images/s); 2 failed" in text
    assert "2 x bad_image: HTTP 400: not an image (b.jpg, b.jpg)" in text


def test_the_bulk_cli_sends_low_priority_unless_told() -> None:
    from service.client.cli import _parser

    assert _parser().parse_args(["photos"]).priority == "low"
    assert _parser().parse_args(["photos", "--priority", "high"]).priority == "high"
