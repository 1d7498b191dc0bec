"""Features and class activation maps on top of a run: what a request asks the graph for, whether
the model that will answer offers it, and how the rows become answers (vectors, per-prediction grids).

The outputs themselves come from the graph (models/heads.py) in the same batch as everyone else's
classifications (runtime/outputs.py merges the asks)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from service.core.outcomes import ClassifyOutcome, InferOutcome
from service.errors import InvalidArgument
from service.lifecycle.records import ModelEntry
from service.runtime.outputs import CAM, CAM_CLASSES, EXTRA_OUTPUTS, FEATURES, NOTHING, Wanted
from service.schemas import Prediction

GRID_DECIMALS = 4
EMBED = Wanted.of([FEATURES])


def top_maps(k: int) -> Wanted:
    """The maps of the k best classes (what `explain=true` adds to each prediction)."""
    return Wanted.of([CAM], (-1,) * k)


def class_map(class_id: int | None) -> Wanted:
    """The map of one class (None: the best one)."""
    return Wanted.of([CAM], (-1 if class_id is None else class_id,))


def parse_outputs(names: Sequence[str], k: int = 1) -> Wanted:
    """V2: requested output names -> the extras among them (`cam` with its top `k`)."""
    extras = [n for n in names if n in EXTRA_OUTPUTS]
    return Wanted.of(extras, (-1,) * k) if extras else NOTHING


def check_offers(entry: ModelEntry, wanted: Wanted) -> None:
    """Raise InvalidArgument when the model about to run lacks an output the request asks for, or a
    class to map is not one of its classes. Called where the model is known: for `auto` and cascades
    that is the model chosen or the stage, so the answer names the model that lacked it."""
    if not wanted.any:
        return
    spec = entry.spec
    assert spec is not None
    offered = spec.output_names
    missing = sorted(wanted.outputs - set(offered))
    if missing:
        raise InvalidArgument(
            f"model '{entry.name}' (version {entry.version}) has no output {', '.join(missing)}; "
            f"it offers {', '.join(offered)} (exported before features and maps existed: re-export it "
            "with `make models`, or add them with `python -m models.upgrade`)"
        )
    if entry.runner is not None and not entry.runner.serves_extra_outputs:
        # Refused here, per request, rather than in the run, where it would fail the whole batch.
        raise InvalidArgument(
            f"model '{entry.name}' serves no features or maps while CUDA graphs are on "
            "(EFFNET_CUDA_GRAPHS=false serves them)"
        )
    classes = spec.num_classes
    if len(wanted.cam_classes) > classes:
        raise InvalidArgument(
            f"model '{entry.name}' has {classes} classes; cannot map {len(wanted.cam_classes)}"
        )
    wrong = [c for c in wanted.cam_classes if c >= classes or c < -1]
    if wrong:
        raise InvalidArgument(
            f"class_id must be between 0 and {classes - 1} for model '{entry.name}', got {wrong[0]}"
        )


def vectors(outcome: InferOutcome, normalize: bool) -> np.ndarray:
    """float32 (N, C) pooled features, each scaled to unit length when `normalize`."""
    features = np.asarray(outcome.outputs[FEATURES], dtype=np.float32)
    if normalize:
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        features = features / np.maximum(norms, np.finfo(np.float32).tiny)
    return np.ascontiguousarray(features, dtype=np.float32)


def grid(cam: np.ndarray) -> list[list[float]]:
    return np.round(cam.astype(np.float64), GRID_DECIMALS).tolist()


def with_maps(classify: ClassifyOutcome, outcome: InferOutcome) -> ClassifyOutcome:
    """Each prediction gets the map of its class (found by class id among the maps the run made)."""
    maps, ids = outcome.outputs[CAM], outcome.outputs[CAM_CLASSES]
    results: list[list[Prediction]] = []
    for image, predictions in enumerate(classify.predictions):
        where = {int(c): j for j, c in reversed(list(enumerate(ids[image])))}
        results.append(
            [
                p.model_copy(update={"cam": grid(maps[image][where[p.class_id]])})
                if p.class_id in where
                else p
                for p in predictions
            ]
        )
    classify.predictions = results
    return classify


def one_map(outcome: InferOutcome, image: int = 0) -> tuple[int, np.ndarray]:
    """The first map of image `image` and its class id."""
    return int(outcome.outputs[CAM_CLASSES][image][0]), np.asarray(outcome.outputs[CAM][image][0])
