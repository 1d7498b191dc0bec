"""The shared memory and a front's allocator in its part of it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.split.slab import ALIGN, Region, Slab


def test_a_front_sees_what_it_wrote_where_the_engine_reads() -> None:
    slab = Slab.create(1 << 16)
    try:
        front = Slab.attach(slab.name)
        start, size = front.part(1, 2)
        assert (start, size) == (1 << 15, 1 << 15)
        region = Region(start, size)
        offset = region.alloc(300)
        assert offset is not None and start <= offset < start + size
        front.view(offset, 300)[:] = np.arange(300) % 256
        assert slab.view(offset, 300).tolist() == [i % 256 for i in range(300)]
        front.close()
        again = Slab.attach(slab.name)  # the front's leaving did not remove it
        assert again.size == slab.size
        again.close()
    finally:
        slab.close()


def test_closing_while_a_view_is_held_still_removes_the_name() -> None:
    slab = Slab.create(1 << 12)
    held = slab.view(0, 64)  # a batch still reading its rows
    assert slab.close() is False
    with pytest.raises(FileNotFoundError):
        Slab.attach(slab.name)  # nothing left in /dev/shm for anyone to attach, or to leak
    held[:] = 7  # the mapping itself lives while the view does
    del held
    assert slab.close() is True


def test_a_full_part_says_so_and_freed_blocks_merge() -> None:
    region = Region(0, 4 * ALIGN)
    blocks = [region.alloc(ALIGN) for _ in range(4)]
    assert None not in blocks and region.alloc(1) is None
    for offset in blocks[1:3]:
        assert offset is not None
        region.free(offset, ALIGN)
    assert region.alloc(2 * ALIGN) == blocks[1]  # the two freed neighbours became one block
    assert region.used == 4 * ALIGN


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 5000), st.booleans()), min_size=1, max_size=60))
def test_blocks_never_overlap_and_all_return(steps: list[tuple[int, bool]]) -> None:
    region = Region(1024, 64 * 1024)
    held: list[tuple[int, int]] = []
    for length, release in steps:
        if release and held:
            region.free(*held.pop(0))
        offset = region.alloc(length)
        if offset is not None:
            assert 1024 <= offset and offset + length <= 1024 + 64 * 1024
            for other, other_length in held:
                assert offset + length <= other or other + other_length <= offset
            held.append((offset, length))
    for block in held:
        region.free(*block)
    assert region.used == 0 and region.alloc(64 * 1024) == 1024


@pytest.mark.parametrize("length", [1, ALIGN, ALIGN + 1])
def test_lengths_round_up_to_the_alignment(length: int) -> None:
    region = Region(0, 8 * ALIGN)
    first, second = region.alloc(length), region.alloc(length)
    assert first is not None and second is not None and (second - first) % ALIGN == 0
