"""System shared memory regions that clients register (Triton's system shared memory extension): a
POSIX shared memory object (`/dev/shm/<key>`) mapped once at registration; requests then name a region
instead of carrying tensor data, and inputs are read as views on the mapping, without a copy.

The server shares the regions of every protocol; they are unmapped on unregister and when the engine
stops. A region still read by a request in flight is unmapped when that request lets go of it.
"""

from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

from service.errors import BadRequest, InvalidArgument, UnknownRegion

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class Region:
    name: str
    key: str
    offset: int  # where the region starts in the shared memory object
    byte_size: int
    mapping: mmap.mmap  # the object from its start to offset + byte_size


class SharedMemoryRegions:
    def __init__(self, directory: Path = SHM_DIR) -> None:
        self._directory = directory
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not name:
            raise InvalidArgument("a shared memory region needs a name")
        if name in self._regions:
            raise InvalidArgument(
                f"shared memory region '{name[:64]}' is already registered; unregister it first"
            )
        if offset < 0 or byte_size <= 0:
            raise InvalidArgument(f"region '{name[:64]}': offset must be >= 0 and byte_size > 0")
        base = key[1:] if key.startswith("/") else key
        if not base or "/" in base or base in (".", ".."):
            raise BadRequest(
                f"shared memory key '{key[:64]}' is not the name of a POSIX shared memory object"
            )
        try:
            fd = os.open(self._directory / base, os.O_RDWR)
        except OSError as exc:
            raise BadRequest(
                f"shared memory key '{key[:64]}' cannot be opened: {exc.strerror or exc}"
            ) from exc
        try:
            size = os.fstat(fd).st_size
            if offset + byte_size > size:
                raise InvalidArgument(
                    f"shared memory key '{key[:64]}' holds {size} bytes; region '{name[:64]}' needs "
                    f"{offset + byte_size} (offset {offset} + byte_size {byte_size})"
                )
            mapping = mmap.mmap(fd, offset + byte_size, access=mmap.ACCESS_WRITE)
        finally:
            os.close(fd)  # the mapping holds its own reference
        self._regions[name] = Region(name, key, offset, byte_size, mapping)
        log.info("event=shm_registered region=%s key=%s offset=%d byte_size=%d", name, key, offset, byte_size)

    def unregister(self, name: str = "") -> None:
        """Unregister `name` (every region when empty); an unknown name is refused."""
        if name and name not in self._regions:
            raise UnknownRegion(f"shared memory region '{name[:64]}' is not registered")
        for region_name in [name] if name else list(self._regions):
            _unmap(self._regions.pop(region_name))

    def status(self, name: str = "") -> list[Region]:
        if not name:
            return list(self._regions.values())
        return [self._region(name)]

    def view(self, name: str, offset: int, byte_size: int) -> memoryview:
        """`byte_size` bytes at `offset` in region `name`, read in place."""
        region = self._region(name)
        self._check_fits(region, offset, byte_size)
        start = region.offset + offset
        return memoryview(region.mapping)[start : start + byte_size]

    def write(self, name: str, offset: int, byte_size: int, data: bytes) -> None:
        """Write `data` at `offset` of region `name`, where the caller reserved `byte_size` bytes."""
        region = self._region(name)
        self._check_fits(region, offset, byte_size)
        if len(data) > byte_size:
            raise InvalidArgument(
                f"shared memory region '{name[:64]}': the output takes {len(data)} bytes, "
                f"shared_memory_byte_size is {byte_size}"
            )
        start = region.offset + offset
        region.mapping[start : start + len(data)] = data

    def close_all(self) -> None:
        for region in self._regions.values():
            _unmap(region)
        self._regions.clear()

    def _region(self, name: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            raise UnknownRegion(f"shared memory region '{name[:64]}' is not registered")
        return region

    @staticmethod
    def _check_fits(region: Region, offset: int, byte_size: int) -> None:
        if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
            raise InvalidArgument(
                f"shared memory region '{region.name[:64]}' holds {region.byte_size} bytes; "
                f"offset {offset} + byte_size {byte_size} does not fit"
            )


def _unmap(region: Region) -> None:
    try:
        region.mapping.close()
    except BufferError:  # a request in flight still reads it: unmapped when its views are gone
        pass
