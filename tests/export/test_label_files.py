"""Class names from a training run's leftovers: text, JSON list, JSON {index: name}, class folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.errors import ExportError
from models.labels import check_count, read_labels


def test_text_file_one_name_per_line_blank_lines_ignored(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("corgi\n\nbeagle \n pug\n")
    assert read_labels(path) == ["corgi", "beagle", "pug"]


def test_json_list_and_index_map(tmp_path: Path) -> None:
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(["cat", "dog"]))
    mapped = tmp_path / "map.json"
    mapped.write_text(
        json.dumps({"1": "dog", "0": "cat", "2": "fox"})
    )  # keys out of order, as json.dump writes
    assert read_labels(listed) == ["cat", "dog"]
    assert read_labels(mapped) == ["cat", "dog", "fox"]
    keras = tmp_path / "imagenet_class_index.json"
    keras.write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}))
    assert read_labels(keras) == ["tench", "goldfish"]


def test_class_folders_in_torchvision_or_timm_order(tmp_path: Path) -> None:
    for name in ("class10", "class2", "Class1", ".cache"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("not a class")
    assert read_labels(tmp_path) == ["Class1", "class10", "class2"]  # torchvision ImageFolder: sorted()
    assert read_labels(tmp_path, folder_order="natural") == ["Class1", "class2", "class10"]  # timm


def test_folder_order_matches_the_libraries(tmp_path: Path) -> None:
    from timm.utils.misc import natural_key
    from torchvision.datasets.folder import find_classes

    names = ["b10", "B2", "a1", "a01x", "z", "10", "9"]
    for name in names:
        (tmp_path / name).mkdir()
    assert read_labels(tmp_path) == find_classes(str(tmp_path))[0]
    assert read_labels(tmp_path, folder_order="natural") == sorted(names, key=natural_key)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.txt", "\n\n", "is empty"),
        ("bad.json", "{not json", "not valid JSON"),
        ("gaps.json", json.dumps({"0": "a", "2": "b"}), "indices must be 0..1"),
        ("words.json", json.dumps({"zero": "a"}), "integer keys"),
        ("numbers.json", json.dumps([1, 2]), "non-empty strings"),
        ("scalar.json", json.dumps("cat"), "a list of names or an {index: name} map"),
    ],
)
def test_unusable_label_files_are_one_clear_error(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(
        ExportError, match=message.replace("{", r"\{").replace("}", r"\}").replace(".", r"\.")
    ):
        read_labels(path)


def test_missing_file_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="cannot read labels"):
        read_labels(tmp_path / "absent.txt")
    with pytest.raises(ExportError, match="no class folders"):
        read_labels(tmp_path)


def test_count_mismatch_is_refused() -> None:
    check_count(["a", "b"], 2, "x.txt")
    with pytest.raises(ExportError, match="x.txt has 2 labels but the model has 10 classes"):
        check_count(["a", "b"], 10, "x.txt")
