"""eval's arithmetic on answers: top-1/top-5 by class index or (over gRPC, unchecked) by name, errors per
class with what was answered instead, classes named when the set gives indices, and agreement."""

from __future__ import annotations

from pathlib import Path

from service.client.dataset import Sample
from service.client.report import Outcome
from service.client.scoring import agreement, score_model, truths


def _answer(path: str, *labels: tuple[int, str]) -> Outcome:
    predictions = [{"class_id": c, "label": name, "score": 0.5} for c, name in labels]
    return Outcome(path, ok=True, model="m", predictions=predictions)


SAMPLES = [Sample(Path(f"/{i}.jpg"), label, f"{i}.jpg") for i, label in enumerate(["0", "0", "2", "2"])]
NAMES = ["tench", "goldfish", "shark"]


def test_top1_top5_and_errors_per_class_named() -> None:
    outcomes = [
        _answer("/0.jpg", (0, "tench")),
        _answer("/1.jpg", (1, "goldfish"), (0, "tench")),
        _answer("/2.jpg", (1, "goldfish"), (0, "tench")),
        Outcome("/3.jpg", ok=False, error_code="bad_image", error="not an image"),
    ]
    truth = truths(SAMPLES, {"0": 0, "2": 2})
    run = score_model("m", SAMPLES, outcomes, truth, seconds=2.0, class_names=NAMES)
    assert (run["answered"], run["failed"], run["top1"], run["top5"]) == (3, 1, 33.33, 66.67)
    assert run["images_per_s"] == 1.5 and run["failures"][0]["path"] == "/3.jpg (2)"
    first, second = run["per_class"]
    assert first == {
        "label": "0", "name": "tench", "images": 2, "top1_errors": 1, "top1": 50.0,
        "confused_with": {"goldfish": 1},
    }  # fmt: skip
    assert second["label"] == "2" and second["name"] == "shark" and second["top1"] == 0.0


def test_unchecked_names_match_answers_ignoring_case() -> None:
    samples = [Sample(Path("/a.jpg"), "Tench", "a.jpg")]
    run = score_model("m", samples, [_answer("/a.jpg", (0, "tench"))], truths(samples, {}), seconds=1.0)
    assert run["top1"] == 100.0 and run["per_class"][0]["name"] is None


def test_agreement_counts_who_was_right() -> None:
    truth = truths(SAMPLES, {"0": 0, "2": 2})
    first = [
        _answer("/0.jpg", (0, "tench")),
        _answer("/2.jpg", (2, "shark")),
        _answer("/3.jpg", (1, "goldfish")),
    ]
    second = [
        _answer("/0.jpg", (0, "tench")),
        _answer("/2.jpg", (1, "goldfish")),
        _answer("/3.jpg", (2, "shark")),
    ]
    pair = agreement(first, second, truth)
    assert pair == {
        "images": 3, "top1_agreement": 33.33, "both_right": 1, "only_first_right": 1, "only_second_right": 1,
    }  # fmt: skip


def test_a_name_several_classes_share_accepts_any_of_them() -> None:
    samples = [Sample(Path("/c.jpg"), "crane", "c.jpg")]
    names = ["crane", "goldfish", "crane"]
    truth = truths(samples, {"crane": 0}, names)
    run = score_model("m", samples, [_answer("/c.jpg", (2, "crane"))], truth, seconds=1.0, class_names=names)
    assert run["top1"] == 100.0
