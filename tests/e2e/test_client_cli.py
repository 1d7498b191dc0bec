"""`python -m service classify` over folders against the real server: HTTP and gRPC, JSON lines and CSV,
N requests at once, one bad file that fails alone, a summary, and a progress bar on a terminal."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.slow

CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}


@pytest.fixture
def photos(tmp_path: Path, real_photos: dict[str, bytes]) -> Path:
    """photos/chelsea.jpg, photos/broken.jpg (text), photos/notes.txt (skipped: not an image name),
    photos/more/coffee.PNG and photos/more/deeper/chelsea.webp."""
    root = tmp_path / "photos"
    (root / "more" / "deeper").mkdir(parents=True)
    (root / "chelsea.jpg").write_bytes(real_photos["chelsea"])
    (root / "broken.jpg").write_text("this is not a picture\n")
    (root / "notes.txt").write_text("not picked up from a folder\n")
    coffee = Image.open(io.BytesIO(real_photos["coffee"]))
    coffee.save(root / "more" / "coffee.PNG")
    Image.open(io.BytesIO(real_photos["chelsea"])).save(root / "more" / "deeper" / "chelsea.webp")
    return root


def by_name(records: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {Path(record["path"]).name: record for record in records}


def test_folder_over_http_to_jsonl(live_server, photos: Path, tmp_path: Path, capsys) -> None:
    from service.client.cli import main

    out = tmp_path / "results.jsonl"
    args = [str(photos), "--model", "LITE0", "--concurrency", "3", "--output", str(out)]
    assert main([*args, "--url", live_server.http_url]) == 1  # one image failed, the rest did not
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4  # notes.txt is not an image name, so the folder scan skips it
    results = by_name(records)
    assert results["chelsea.jpg"]["ok"] and results["chelsea.jpg"]["model"] == "lite0"
    assert results["chelsea.jpg"]["predictions"][0]["label"] in CAT_LABELS
    assert len(results["chelsea.jpg"]["predictions"]) == 5
    assert results["chelsea.webp"]["predictions"][0]["label"] in CAT_LABELS
    assert results["coffee.PNG"]["predictions"][0]["label"] == "espresso"
    assert set(results["coffee.PNG"]["timings"]) == {"preprocess_ms", "queue_ms", "inference_ms", "total_ms"}
    broken = results["broken.jpg"]
    assert not broken["ok"] and broken["error_code"] == "bad_image"
    assert "not a recognised image" in broken["error"]
    captured = capsys.readouterr()
    assert "classified 3 of 4 images" in captured.err and "images/s" in captured.err
    assert "1 x bad_image" in captured.err and "broken.jpg" in captured.err
    assert "classifying" not in captured.err  # no progress bar when stderr is not a terminal
    assert captured.out == ""  # results went to the file


def test_files_and_folders_over_grpc_to_csv(live_server, photos: Path, tmp_path: Path, capsys) -> None:
    from service.client.cli import main

    out = tmp_path / "results.csv"
    paths = [str(photos / "more"), str(photos / "chelsea.jpg"), str(photos / "more" / "coffee.PNG")]
    args = [*paths, "--grpc", "--url", live_server.grpc_address, "-c", "8", "--top-k", "3", "-o", str(out)]
    assert main(args) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    assert len(rows) == 3  # coffee.PNG named twice (folder and file) is classified once
    results = by_name(rows)
    assert results["coffee.PNG"]["label_1"] == "espresso" and results["coffee.PNG"]["class_id_1"] == "967"
    assert float(results["coffee.PNG"]["score_1"]) > 0.5
    assert results["chelsea.jpg"]["label_1"] in CAT_LABELS and results["chelsea.jpg"]["ok"] == "True"
    assert "label_3" in rows[0] and "label_4" not in rows[0]
    assert "classified 3 of 3 images" in capsys.readouterr().err


def test_failures_never_stop_the_run(live_server, photos: Path, tmp_path: Path, capsys) -> None:
    from service.client.cli import main

    out = tmp_path / "results.jsonl"
    args = [str(photos), "--model", "b9", "--url", live_server.http_url, "--format", "jsonl", "-o", str(out)]
    assert main(args) == 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 4 and not any(record["ok"] for record in records)
    assert all("did you mean" in record["error"] for record in records)
    err = capsys.readouterr().err
    assert "classified 0 of 4 images" in err and "4 x unknown_model" in err
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_progress_bar_on_a_terminal(live_server, photos: Path, tmp_path: Path) -> None:
    """Run in a pseudo-terminal, as a person would: rich draws its progress bar."""
    leader, follower = pty.openpty()
    command = [sys.executable, "-m", "service", "classify", str(photos), "--url", live_server.http_url,
               "-o", str(tmp_path / "out.jsonl")]  # fmt: skip
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    assert process.wait(timeout=60) == 1
    text = output.decode(errors="replace")
    assert "classifying" in text and "4/4" in text, text[-2000:]
    assert "classified 3 of 4 images" in text
