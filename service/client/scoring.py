"""What `python -m service eval` measures from the answers: top-1/top-5, errors per class, agreement
between models; and how it shows them (a table, a JSON document)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.table import Table

from service.client.dataset import Sample, shared_names
from service.client.report import Outcome

CLASSES_SHOWN = 10  # classes with the most top-1 errors in the table (the JSON has them all)
CONFUSIONS_KEPT = 3


@dataclass(frozen=True)
class Truth:
    """How one model's answers are checked against a sample's label: its class index when the label
    resolved to one, else (names that could not be checked up front) its name, compared to the
    answer's label ignoring case."""

    index: int | None
    name: str

    def matches(self, prediction: dict[str, Any]) -> bool:
        if self.index is not None:
            return int(prediction["class_id"]) == self.index
        return str(prediction["label"]).casefold() == self.name.casefold()


def truths(
    samples: Sequence[Sample], mapping: dict[str, int], class_names: Sequence[str] | None = None
) -> dict[str, Truth]:
    """A label that names several of the model's classes is checked by name, so any of them counts."""
    shared = shared_names(class_names) if class_names is not None else set()
    return {
        str(s.path): Truth(None if s.label.casefold() in shared else mapping.get(s.label), s.label)
        for s in samples
    }


def score_model(
    name: str,
    samples: Sequence[Sample],
    outcomes: Sequence[Outcome],
    truth: dict[str, Truth],
    seconds: float,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """`class_names`: the model's labels, to name classes the set gives as indices."""
    by_path = {o.path: o for o in outcomes}
    label_of = {str(s.path): s.label for s in samples}
    answered = [o for o in outcomes if o.ok and o.predictions]
    top1 = sum(truth[o.path].matches(o.predictions[0]) for o in answered)
    top5 = sum(any(truth[o.path].matches(p) for p in o.predictions[:5]) for o in answered)
    per_class: dict[str, dict[str, Any]] = defaultdict(lambda: {"images": 0, "top1_errors": 0})
    confused: dict[str, Counter[str]] = defaultdict(Counter)
    for sample in samples:
        outcome = by_path.get(str(sample.path))
        if outcome is None or not outcome.ok or not outcome.predictions:
            continue
        row = per_class[sample.label]
        row["images"] += 1
        best = outcome.predictions[0]
        if not truth[str(sample.path)].matches(best):
            row["top1_errors"] += 1
            confused[sample.label][str(best["label"])] += 1
    index_of = {s.label: truth[str(s.path)].index for s in samples}

    def named(label: str) -> str | None:
        index = index_of.get(label)
        if class_names is None or index is None or class_names[index] == label:
            return None
        return class_names[index]

    classes = [
        {
            "label": label,
            "name": named(label),
            "images": row["images"],
            "top1_errors": row["top1_errors"],
            "top1": _percent(row["images"] - row["top1_errors"], row["images"]),
            "confused_with": dict(confused[label].most_common(CONFUSIONS_KEPT)),
        }
        for label, row in per_class.items()
    ]
    classes.sort(key=lambda c: (-c["top1_errors"], c["label"]))
    failed = [o for o in outcomes if not o.ok]
    served = Counter(o.model for o in answered if o.model)
    return {
        "model": name,
        "served_by": dict(served),
        "images": len(samples),
        "answered": len(answered),
        "failed": len(failed),
        "failures": [{"path": label_of_path(o.path, label_of), "error": o.error} for o in failed[:20]],
        "top1": _percent(top1, len(answered)),
        "top5": _percent(top5, len(answered)),
        "images_per_s": round(len(answered) / seconds, 2) if seconds > 0 else None,
        "seconds": round(seconds, 3),
        "per_class": classes,
    }


def label_of_path(path: str, labels: dict[str, str]) -> str:
    return f"{path} ({labels[path]})" if path in labels else path


def agreement(first: Sequence[Outcome], second: Sequence[Outcome], truth: dict[str, Truth]) -> dict[str, Any]:
    """Top-1 agreement of two models on the images both answered (compared by label name, so models with
    the same classes in another order still compare), and who was right where they differ."""
    other = {o.path: o for o in second if o.ok and o.predictions}
    same = both_right = only_first = only_second = images = 0
    for outcome in first:
        twin = other.get(outcome.path)
        if not outcome.ok or not outcome.predictions or twin is None:
            continue
        images += 1
        a, b = outcome.predictions[0], twin.predictions[0]
        same += str(a["label"]) == str(b["label"])
        right_a, right_b = truth[outcome.path].matches(a), truth[outcome.path].matches(b)
        both_right += right_a and right_b
        only_first += right_a and not right_b
        only_second += right_b and not right_a
    return {
        "images": images,
        "top1_agreement": _percent(same, images),
        "both_right": both_right,
        "only_first_right": only_first,
        "only_second_right": only_second,
    }


def _percent(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _figure(value: float | None, suffix: str = "%") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def render(result: dict[str, Any], console: Console) -> None:
    summary = Table(title=f"{result['dataset']}: {result['images']} photos, {result['classes']} classes")
    for column in ("model", "answered", "failed", "top-1", "top-5", "images/s"):
        summary.add_column(column, justify="left" if column == "model" else "right")
    for run in result["models"]:
        summary.add_row(
            run["model"], str(run["answered"]), str(run["failed"]), _figure(run["top1"]),
            _figure(run["top5"]), _figure(run["images_per_s"], ""),
        )  # fmt: skip
    console.print(summary)
    for run in result["models"]:
        wrong = [c for c in run["per_class"] if c["top1_errors"]]
        if not wrong:
            continue
        table = Table(title=f"{run['model']}: classes with the most top-1 errors ({len(wrong)} with any)")
        for column in ("class", "photos", "wrong", "top-1", "answered instead"):
            table.add_column(column, justify="right" if column in ("photos", "wrong", "top-1") else "left")
        for c in wrong[:CLASSES_SHOWN]:
            instead = ", ".join(f"{label} x{count}" for label, count in c["confused_with"].items())
            shown = c["label"] if not c.get("name") else f"{c['label']} ({c['name']})"
            table.add_row(shown, str(c["images"]), str(c["top1_errors"]), _figure(c["top1"]), instead)
        console.print(table)
    for pair in result["agreement"]:
        first, second = pair["models"]
        console.print(
            f"agreement {first} vs {second}: top-1 {_figure(pair['top1_agreement'])} of {pair['images']} "
            f"photos; where they differ, only {first} right {pair['only_first_right']}, "
            f"only {second} right {pair['only_second_right']}",
            highlight=False,
        )
