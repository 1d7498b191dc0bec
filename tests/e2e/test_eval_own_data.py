"""Measuring models on your own labelled photos, against the real server: `python -m service eval` over
HTTP and gRPC, `python -m models.measure` recording a measured accuracy that `/v1/models`, ListModels and
`auto` then use, and the one-line refusals of bad sets.

The photos are scikit-image's, tinted red, green or blue (tests/labelled_photos.py); the models are tiny
colour classifiers: `strong` answers every tint right, `weak` is wrong (and unsure) on the weak tints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
import httpx
import pytest

from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc
from tests.e2e.conftest import ROOT, LiveServer, ServerFactory
from tests.labelled_photos import STRONG_WEIGHTS, WEAK_WEIGHTS, labelled_folder
from tests.tiny_model import png, write_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return labelled_folder(tmp_path_factory.mktemp("labelled") / "tints")


@pytest.fixture(scope="module")
def measured_server(
    server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory, photos: Path
) -> LiveServer:
    """`weak` declares the better published accuracy; both are then measured on the tinted photos,
    where `strong` is the better one."""
    repository = tmp_path_factory.mktemp("measured")
    write_model(repository, "weak", weights_rows=WEAK_WEIGHTS, accuracy=90.0)
    write_model(repository, "strong", weights_rows=STRONG_WEIGHTS, accuracy=50.0)
    done = subprocess.run(
        [sys.executable, "-m", "models.measure", str(photos), "--repository", str(repository),
         "--model", "weak", "--model", "strong", "--dataset", "tints"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "strong: top-1 100.00%" in done.stdout and "weak: top-1 62.50%" in done.stdout
    spec = json.loads((repository / "strong" / "1" / "model.json").read_text())
    assert spec["schema_version"] == 3 and spec["accuracy"]["imagenet_top1"] == 50.0  # declared stays
    assert spec["measured"]["dataset"] == "tints" and spec["measured"]["images"] == 24
    return server_factory(repository)


def test_eval_two_models_over_http(measured_server: LiveServer, photos: Path, tmp_path: Path, capsys) -> None:
    from service.client.evaluate import main

    out = tmp_path / "eval.json"
    args = [str(photos), "--model", "strong", "--model", "WEAK", "--url", measured_server.http_url]
    assert main([*args, "-c", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["images"] == 24 and result["classes"] == 3 and result["transport"] == "http"
    strong, weak = result["models"]
    assert (strong["model"], strong["top1"], strong["top5"], strong["failed"]) == ("strong", 100.0, 100.0, 0)
    assert (weak["model"], weak["top1"], weak["answered"]) == ("weak", 62.5, 24)
    assert weak["images_per_s"] > 0
    # weak is wrong on 3 of the 4 weak tints of each colour, answering "grey" instead.
    assert {c["label"]: (c["images"], c["top1_errors"]) for c in weak["per_class"]} == {
        "red": (8, 3), "green": (8, 3), "blue": (8, 3),
    }  # fmt: skip
    assert all(c["confused_with"] == {"grey": 3} for c in weak["per_class"])
    (pair,) = result["agreement"]
    assert pair["models"] == ["strong", "weak"] and pair["top1_agreement"] == 62.5
    assert (pair["only_first_right"], pair["only_second_right"], pair["both_right"]) == (9, 0, 15)
    table = capsys.readouterr().out
    assert "classes with the most top-1 errors" in table and "grey x3" in table


def test_eval_over_grpc_with_a_csv_of_class_ids(
    measured_server: LiveServer, photos: Path, tmp_path: Path
) -> None:
    from service.client.evaluate import main

    index = {"red": 0, "green": 1, "blue": 2}
    lines = ["file,class_id,wnid"] + [
        f"{p.relative_to(photos).as_posix()},{index[p.parent.name]},n000"
        for p in sorted(photos.rglob("*.jpg"))
    ]
    (photos / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval.json"
    args = [str(photos / "labels.csv"), "--model", "weak", "--grpc", "--url", measured_server.grpc_address]
    assert main([*args, "--json", str(out)]) == 0
    (weak,) = json.loads(out.read_text())["models"]
    assert (weak["top1"], weak["answered"], weak["failed"]) == (62.5, 24, 0)
    assert {c["label"] for c in weak["per_class"]} == {"0", "1", "2"}


def test_measured_accuracy_is_shown_and_preferred_by_auto(measured_server: LiveServer) -> None:
    models = {m["name"]: m for m in httpx.get(f"{measured_server.http_url}/v1/models").json()["models"]}
    assert models["strong"]["measured"]["top1"] == 100.0 and models["weak"]["measured"]["top1"] == 62.5
    assert models["weak"]["accuracy"]["imagenet_top1"] == 90.0
    with grpc.insecure_channel(measured_server.grpc_address) as channel:
        reply = classifier_pb2_grpc.ClassifierStub(channel).ListModels(classifier_pb2.ListModelsRequest())
    info = {m.name: m for m in reply.models}["strong"]
    assert (info.measured_dataset, info.measured_images, info.measured_top1) == ("tints", 24, 100.0)
    # Declared, weak (90) would win; measured on the same set, strong does.
    answer = httpx.post(
        f"{measured_server.http_url}/classify",
        params={"variant": "auto", "budget_ms": 10000, "top_k": 1},
        content=png((250, 5, 5)),
    ).json()
    assert "model" in answer, answer
    assert answer["model"] == "strong" and answer["route"]["policy"] == "auto"


def _eval(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "eval", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_sets_get_one_clear_line(measured_server: LiveServer, photos: Path, tmp_path: Path) -> None:
    url = ["--url", measured_server.http_url, "--model", "strong"]
    (tmp_path / "empty").mkdir()
    unknown = labelled_folder(tmp_path / "unknown", weak=False)
    (unknown / "red").rename(unknown / "purple")
    missing = tmp_path / "missing.csv"
    missing.write_text("file,label\nnot-there.jpg,red\n")
    cases = {
        str(tmp_path / "empty"): "has no labelled photos",
        str(unknown): "1 labels match none of the model's 4 classes (by name or index): 'purple'",
        str(missing): "1 of 1 files are missing: not-there.jpg",
    }
    for source, message in cases.items():
        done = _eval(source, *url)
        assert done.returncode == 2 and done.stderr.startswith("error: ") and message in done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
    done = _eval(str(photos), "--url", measured_server.http_url, "--model", "nope")
    assert done.returncode == 2 and "unknown model" in done.stderr.lower() and done.stderr.count("\n") == 1


def test_eval_loads_a_model_a_lazy_server_has_not_loaded(
    server_factory: ServerFactory, tmp_path: Path, photos: Path
) -> None:
    from service.client.evaluate import main

    repository = tmp_path / "lazy"
    write_model(repository, "strong", weights_rows=STRONG_WEIGHTS)
    # A budget loads each model on first use; a first load is estimated at 192 MB and more.
    server = server_factory(repository, "--memory-budget-mb", "400")
    labels = httpx.get(f"{server.http_url}/v1/models/strong/labels")
    assert labels.status_code == 503
    out = tmp_path / "eval.json"
    assert main([str(photos), "--model", "strong", "--url", server.http_url, "--json", str(out)]) == 0
    assert json.loads(out.read_text())["models"][0]["top1"] == 100.0
    assert httpx.get(f"{server.http_url}/v1/models/strong/labels").json()["labels"][:3] == [
        "red",
        "green",
        "blue",
    ]
