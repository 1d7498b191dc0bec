"""Features and class activation maps through the engine, on the tiny real graph with the explain
outputs added (models/heads.py): its features are the mean colour, its maps W[k] . pixels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.core.explain import vectors
from service.errors import InvalidArgument
from service.runtime.session import OrtRunner
from tests.tiny_model import SIZE, TINY_WEIGHTS, png, write_model
from tests.unit.conftest import EngineStarter

RED, BLUE = (250, 5, 5), (5, 5, 250)


@pytest.fixture
def explain_repository(tmp_path: Path) -> Path:
    """`tiny` with the explain outputs, `old` without them (a model exported before they existed)."""
    write_model(tmp_path, "tiny", explain=True)
    write_model(tmp_path, "old")
    return tmp_path


async def test_embed_gives_the_pooled_vector(explain_repository: Path, start_engine: EngineStarter) -> None:
    engine = await start_engine(explain_repository)
    outcome = await engine.embed(engine.admit("tiny"), [png(RED), png(BLUE)])
    np.testing.assert_allclose(vectors(outcome, normalize=False), [RED, BLUE], atol=1e-3)
    unit = vectors(outcome, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    assert set(outcome.outputs) == {"logits", "probabilities", "features"}


async def test_classify_explain_maps_each_prediction(
    explain_repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(explain_repository)
    outcome = await engine.classify(engine.admit("tiny", top_k=3), [png(RED)], explain=True)
    for prediction in outcome.predictions[0]:
        grid = np.array(prediction.cam)
        assert grid.shape == (SIZE, SIZE)
        # A solid image: every cell is the class's weights times the colour.
        np.testing.assert_allclose(grid, TINY_WEIGHTS[:, prediction.class_id] @ np.array(RED), atol=1e-2)
    plain = await engine.classify(engine.admit("tiny", top_k=3), [png(RED)])
    assert all(p.cam is None for p in plain.predictions[0])
    assert [p.class_id for p in plain.predictions[0]] == [p.class_id for p in outcome.predictions[0]]


async def test_a_model_without_the_outputs_says_what_it_offers(
    explain_repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(explain_repository)
    with pytest.raises(
        InvalidArgument, match=r"'old' .* has no output features; it offers logits, probabilities"
    ):
        await engine.embed(engine.admit("old"), [png(RED)])
    with pytest.raises(InvalidArgument, match="has no output cam"):
        await engine.classify(engine.admit("old", top_k=1), [png(RED)], explain=True)
    # It still classifies: old models keep serving.
    outcome = await engine.classify(engine.admit("old", top_k=1), [png(RED)])
    assert outcome.predictions[0][0].label == "red"
    with pytest.raises(InvalidArgument, match="class_id must be between 0 and 3"):
        await engine.explain(engine.admit("tiny"), png(RED), class_id=4)


async def test_with_cuda_graphs_extra_outputs_are_refused_per_request(
    explain_repository: Path, start_engine: EngineStarter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CUDA graphs replay fixed outputs (a GPU-only setting): stand in for a runner that has them on.
    monkeypatch.setattr(OrtRunner, "serves_extra_outputs", property(lambda self: False))
    engine = await start_engine(explain_repository)
    with pytest.raises(InvalidArgument, match="no features or maps while CUDA graphs are on"):
        await engine.embed(engine.admit("tiny"), [png(RED)])
    # Refused before it joined a batch: plain classification of the same model still answers.
    outcome = await engine.classify(engine.admit("tiny", top_k=1), [png(RED)])
    assert outcome.predictions[0][0].label == "red"


def _jpeg_rotated(size: tuple[int, int]) -> bytes:
    """A JPEG stored `size` (w, h) whose EXIF says: rotate 90 degrees to view (orientation 6)."""
    image = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


async def test_explain_png_has_the_photos_size_and_orientation(
    explain_repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(explain_repository)
    outcome, class_id, data = await engine.explain(engine.admit("tiny"), _jpeg_rotated((60, 40)), None)
    assert class_id == 0 and outcome.model.name == "tiny"
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG" and image.size == (40, 60)  # as viewed, not as stored
    _, class_id, _ = await engine.explain(engine.admit("tiny"), png(BLUE), 3)
    assert class_id == 3


async def test_a_model_json_listing_outputs_its_graph_lacks_fails_to_load(
    tmp_path: Path, start_engine: EngineStarter
) -> None:
    """Its requests would fail whole batches (other callers' too): the load refuses it instead."""
    from service.errors import LoadFailed
    from service.model_spec import ModelSpec

    write_model(tmp_path, "tiny", explain=True)
    folder = write_model(tmp_path, "liar")
    spec = ModelSpec.from_file(folder / "model.json")
    claimed = ModelSpec.from_file(tmp_path / "tiny" / "1" / "model.json").outputs
    (folder / "model.json").write_text(spec.model_copy(update={"outputs": claimed}).to_json())
    engine = await start_engine(tmp_path, model_control="explicit", models="tiny")
    with pytest.raises(LoadFailed, match="lacks output cam, cam_classes, features that model.json lists"):
        await engine.load_model("liar")
