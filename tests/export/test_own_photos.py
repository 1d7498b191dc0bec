"""The export-time tools on your own labelled photos: `models.cascade --tune` choosing an exit confidence,
`models.measure` refusing bad sets, and `models.export --calibration` calibrating int8 on the photos with
its gate on a held-out part, recorded in model.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.cascade import TUNING_FILE
from models.cascade import main as cascade_main
from models.measure import main as measure_main
from service.client.dataset import held_out, read_dataset
from tests.labelled_photos import STRONG_WEIGHTS, WEAK_WEIGHTS, labelled_folder
from tests.tiny_model import write_model


@pytest.fixture
def stages(tmp_path: Path) -> Path:
    repository = tmp_path / "repository"
    write_model(repository, "weak", weights_rows=WEAK_WEIGHTS)
    write_model(repository, "strong", weights_rows=STRONG_WEIGHTS)
    return repository


def _tune(repository: Path, photos: Path, max_drop: str) -> int:
    args = ["--repository", str(repository), "--name", "mine", "--stage", "weak", "--stage", "strong"]
    return cascade_main([*args, "--tune", str(photos), "--max-drop", max_drop])


def test_tune_picks_the_cheapest_exit_within_the_drop(stages: Path, tmp_path: Path, capsys) -> None:
    photos = labelled_folder(tmp_path / "tints")
    assert _tune(stages, photos, "0") == 0
    cascade = json.loads((stages / "mine" / "cascade.json").read_text())
    curve = json.loads((stages / "mine" / TUNING_FILE).read_text())
    threshold = cascade["stages"][0]["exit_confidence"]
    assert cascade["stages"][1] == {"model": "strong"} and curve["chosen"]["threshold"] == threshold
    assert curve["singles"]["strong"]["top1"] == 100.0 and curve["singles"]["weak"]["top1"] == 62.5
    # weak is unsure (p < 0.6) exactly where it is wrong: a threshold above that sends those on to
    # strong and keeps its 100 %, while half the photos (the strong tints) leave at the first stage.
    assert 0.5 < threshold < 1.0
    assert curve["chosen"]["top1"] == 100.0 and curve["chosen"]["reached"] == [1.0, 0.5]
    lower = [p for p in curve["points"] if p["threshold"] < threshold]
    assert lower and all(
        p["top1"] < 100.0 or p["ms_per_image"] >= curve["chosen"]["ms_per_image"] for p in lower
    )
    assert "exit confidence" in capsys.readouterr().out
    # Allowing a 40-point drop, weak alone (62.5 %) is enough: everything exits at stage 1.
    assert _tune(stages, photos, "40") == 0
    relaxed = json.loads((stages / "mine" / TUNING_FILE).read_text())["chosen"]
    assert relaxed["reached"] == [1.0, 0.0] and relaxed["top1"] == 62.5


def test_tune_refuses_unknown_labels_and_writes_nothing(stages: Path, tmp_path: Path, capsys) -> None:
    photos = labelled_folder(tmp_path / "tints", weak=False)
    (photos / "blue").rename(photos / "navy")
    assert _tune(stages, photos, "0.5") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 1 labels match none") and "'navy'" in err and err.count("\n") == 1
    assert not (stages / "mine").exists()


def test_measure_refuses_an_empty_folder(stages: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty"), "--repository", str(stages), "--model", "weak", "--dataset", "x"]
    assert measure_main(args) == 2
    assert "has no labelled photos" in capsys.readouterr().err
    assert "measured" not in (stages / "weak" / "1" / "model.json").read_text()


@pytest.mark.slow
def test_int8_calibrated_on_own_photos_gated_on_the_held_out_part(
    model_repository: Path, tmp_path: Path
) -> None:
    from models.export import main as export_main

    repository = tmp_path / "repository"
    shutil.copytree(model_repository / "lite0", repository / "lite0")
    photos = labelled_folder(tmp_path / "tints")
    samples = read_dataset(photos)
    held = [s.key for s in samples if held_out(s)]
    args = ["--variant", "lite0", "--repository", str(repository), "--precision", "int8"]
    assert export_main([*args, "--calibration", str(photos)]) == 0
    spec = json.loads((repository / "lite0-int8" / "1" / "model.json").read_text())
    agreement = spec["agreement"]
    assert agreement["images"] == len(held) >= 4
    assert agreement["image_set"].startswith(f"{len(held)} held-out photos of {photos}")
    assert "sha256(relative path)" in agreement["image_set"]
    quantizer = spec["exporter"]["quantizer"]
    assert f"{len(samples) - len(held)} photos of {photos} (not held out)" in quantizer
    assert spec["derived_from"]["name"] == "lite0"


def test_calibration_needs_a_derived_precision(tmp_path: Path, capsys) -> None:
    from models.export import main as export_main

    args = ["--variant", "lite0", "--repository", str(tmp_path), "--calibration", str(tmp_path)]
    assert export_main(args) == 2
    assert "--calibration is for derived precisions" in capsys.readouterr().err


def test_targets_accept_every_class_of_a_shared_name() -> None:
    import numpy as np

    from models.labelled import hits, targets, top_k_accuracy
    from service.client.dataset import Sample

    samples = [Sample(Path(f"/{i}"), label, str(i)) for i, label in enumerate(["crane", "1", "Crane"])]
    accepted = targets(samples, ["crane", "goldfish", "crane"])
    assert accepted.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    assert hits(np.array([2, 1, 1]), accepted).tolist() == [True, True, False]
    probs = np.array([[0.1, 0.2, 0.7], [0.4, 0.5, 0.1], [0.3, 0.6, 0.1]])
    assert (
        top_k_accuracy(probs, accepted, 1) == pytest.approx(200 / 3)
        and top_k_accuracy(probs, accepted, 2) == 100.0
    )
