"""System shared memory regions: registration refusals, reads in place, unmapping."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest

from service.api.v2 import shared_memory as shm
from service.core.shared_memory import SharedMemoryRegions
from service.errors import BadRequest, InvalidArgument, UnknownRegion


@pytest.fixture
def regions(tmp_path: Path) -> SharedMemoryRegions:
    (tmp_path / "data").write_bytes(bytes(range(64)))
    return SharedMemoryRegions(tmp_path)


def test_inputs_are_views_on_the_region_without_a_copy(regions: SharedMemoryRegions, tmp_path: Path) -> None:
    regions.register("r", "/data", 16, 32)
    parameters = {shm.REGION: "r", shm.BYTE_SIZE: 12, shm.OFFSET: 4}
    tensor = shm.input_from_region(regions, "pixels", "UINT8", [1, 3, 2, 2], parameters)
    assert isinstance(tensor, np.ndarray) and tensor.shape == (1, 3, 2, 2)
    assert tensor.ravel().tolist() == list(range(20, 32))
    with (tmp_path / "data").open("r+b") as handle:  # the client writes new data in place
        handle.seek(20)
        handle.write(b"\xff")
    assert tensor.ravel()[0] == 255


def test_refusals(regions: SharedMemoryRegions) -> None:
    with pytest.raises(BadRequest, match="cannot be opened"):
        regions.register("r", "/missing", 0, 8)
    with pytest.raises(BadRequest, match="not the name"):
        regions.register("r", "/../etc", 0, 8)
    with pytest.raises(InvalidArgument, match="holds 64 bytes"):
        regions.register("r", "/data", 32, 64)
    regions.register("r", "/data", 0, 16)
    with pytest.raises(InvalidArgument, match="already registered"):
        regions.register("r", "/data", 0, 16)
    with pytest.raises(UnknownRegion):
        regions.view("other", 0, 4)
    with pytest.raises(InvalidArgument, match="does not fit"):
        regions.view("r", 8, 16)
    with pytest.raises(InvalidArgument, match="needs 12"):
        shm.input_from_region(regions, "pixels", "UINT8", [1, 3, 2, 2], {shm.REGION: "r", shm.BYTE_SIZE: 8})
    with pytest.raises(InvalidArgument, match="takes 16 bytes"):
        regions.write("r", 0, 8, bytes(16))
    with pytest.raises(UnknownRegion):
        regions.unregister("other")


def test_unregister_and_close_unmap(regions: SharedMemoryRegions) -> None:
    regions.register("a", "/data", 0, 8)
    regions.register("b", "/data", 8, 8)
    mapping_a = regions.status("a")[0].mapping
    held = regions.view("b", 0, 8)  # a request in flight still reads b
    regions.unregister("a")
    assert mapping_a.closed and [r.name for r in regions.status()] == ["b"]
    regions.close_all()
    assert regions.status() == [] and bytes(held) == bytes(range(8, 16))
    held.release()


def test_outputs_are_written_into_the_region(regions: SharedMemoryRegions, tmp_path: Path) -> None:
    regions.register("out", "/data", 0, 64)
    regions.write("out", 4, 8, np.array([1.5, 2.5], dtype="<f4").tobytes())
    with (
        (tmp_path / "data").open("rb") as handle,
        mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as m,
    ):
        assert np.frombuffer(m[4:12], dtype="<f4").tolist() == [1.5, 2.5]
