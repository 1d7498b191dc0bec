"""The engine's state as a front sees it: records rebuilt for the one Admission, and where photos
are decoded (in the front only where the engine would decode them with Pillow too)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from service.core.admission import Admission
from service.errors import UnknownModel
from service.split.state import FrontCatalogue, capture
from tests.unit.conftest import EngineStarter


async def test_a_front_admits_from_the_published_records(
    tiny_repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(tiny_repository)
    catalogue = FrontCatalogue(capture(engine))
    admission = Admission(catalogue, engine.settings)
    target = admission.admit("TINY", top_k=2)
    assert (target.name, target.kind, target.top_k) == ("tiny", "model", 2)
    assert target.spec == engine.lifecycle.records["tiny"].serving().spec  # type: ignore[union-attr]
    assert catalogue.records["tiny"].serving() is not None
    with pytest.raises(UnknownModel):
        admission.admit("nope")


async def test_photos_cross_as_bytes_where_the_engine_decodes_on_the_gpu(
    tiny_repository: Path, start_engine: EngineStarter
) -> None:
    engine = await start_engine(tiny_repository)
    state = capture(engine)
    assert FrontCatalogue(state).decodes_here("tiny", None)  # the engine's backend is Pillow
    gpu = tuple(
        dataclasses.replace(
            r, versions=tuple(dataclasses.replace(v, backend="nvimgcodec+graph(cuda)") for v in r.versions)
        )
        for r in state.records
    )
    assert not FrontCatalogue(dataclasses.replace(state, records=gpu)).decodes_here("tiny", None)
