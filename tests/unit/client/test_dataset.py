"""Labelled photo sets as `eval`, `models.measure`, `--tune` and `--calibration` read them: class folders,
CSVs (file,label and file,class_id,wnid), label resolution, the held-out split, and the one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.client.dataset import (
    HOLD_OUT_ONE_IN,
    DatasetError,
    Sample,
    read_dataset,
    resolve_labels,
    split,
)
from tests.tiny_model import png


def _folder(root: Path) -> Path:
    for label in ("red", "green"):
        (root / label / "deeper").mkdir(parents=True)
        (root / label / "a.png").write_bytes(png())
        (root / label / "deeper" / "b.PNG").write_bytes(png())
        (root / label / "notes.txt").write_text("not a photo")
    (root / "loose.png").write_bytes(png())  # not in a class folder: ignored
    return root


def test_class_folders_in_a_stable_order(tmp_path: Path) -> None:
    samples = read_dataset(_folder(tmp_path / "set"))
    assert [(s.label, s.key) for s in samples] == [
        ("green", "green/a.png"),
        ("green", "green/deeper/b.PNG"),
        ("red", "red/a.png"),
        ("red", "red/deeper/b.PNG"),
    ]


def test_csv_with_the_imagenet_sample_header(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(png())
    (tmp_path / "y.jpg").write_bytes(png())
    csv = tmp_path / "labels.csv"
    csv.write_text("file,class_id,wnid\nx.jpg,0,n01440764\ny.jpg,2,n01484850\n")
    samples = read_dataset(csv)
    assert [(s.path.name, s.label) for s in samples] == [("x.jpg", "0"), ("y.jpg", "2")]


def test_csv_without_a_header(tmp_path: Path) -> None:
    (tmp_path / "x.jpg").write_bytes(png())
    csv = tmp_path / "set.csv"
    csv.write_text("x.jpg,tabby cat\n")
    assert [(s.path.name, s.label) for s in read_dataset(csv)] == [("x.jpg", "tabby cat")]


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: root.mkdir(), "has no labelled photos"),
        (
            lambda root: (root.mkdir(), (root / "a.png").write_bytes(png())),
            "1 images, but not in class folders",
        ),
        (lambda root: None, "no such folder or CSV file"),
    ],
)
def test_unusable_folders_are_refused_in_one_line(tmp_path: Path, setup, message: str) -> None:
    root = tmp_path / "set"
    setup(root)
    with pytest.raises(DatasetError, match=message) as caught:
        read_dataset(root)
    assert "\n" not in str(caught.value)


def test_a_csv_naming_missing_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "here.jpg").write_bytes(png())
    csv = tmp_path / "set.csv"
    csv.write_text("file,label\nhere.jpg,red\ngone1.jpg,red\ngone2.jpg,blue\n")
    with pytest.raises(DatasetError, match=r"2 of 3 files are missing: gone1.jpg, gone2.jpg"):
        read_dataset(csv)


def test_a_csv_header_without_a_label_column_is_refused(tmp_path: Path) -> None:
    csv = tmp_path / "set.csv"
    csv.write_text("file,colour\nx.jpg,red\n")
    with pytest.raises(DatasetError, match="needs a file column"):
        read_dataset(csv)


def test_labels_resolve_by_name_case_or_index() -> None:
    classes = ["red", "Green", "blue", "grey"]
    assert resolve_labels(["red", "green", "2", "GREY"], classes) == {"red": 0, "green": 1, "2": 2, "GREY": 3}


def test_unknown_labels_are_named() -> None:
    with pytest.raises(DatasetError, match=r"2 labels match none of the model's 4 classes.*'purple', '7'"):
        resolve_labels(["red", "purple", "7"], ["red", "green", "blue", "grey"])


def test_with_only_a_class_count_names_stay_unchecked_and_indices_are_checked() -> None:
    assert resolve_labels(["tabby", "3"], 4) == {"3": 3}
    with pytest.raises(DatasetError, match="'9'"):
        resolve_labels(["9"], 4)


def test_the_held_out_split_is_deterministic_and_about_a_fifth() -> None:
    samples = [Sample(Path(f"/x/{i}.jpg"), "a", f"a/{i}.jpg") for i in range(500)]
    rest, held = split(samples)
    assert len(rest) + len(held) == 500 and not set(s.key for s in rest) & set(s.key for s in held)
    assert 500 / HOLD_OUT_ONE_IN * 0.7 < len(held) < 500 / HOLD_OUT_ONE_IN * 1.3
    assert split(list(reversed(samples)))[1] == list(reversed(held))  # by path, not by position
