"""The servers under test on some cores, the load generator on others (`bench.run --server-cpus`).

On a machine where the load generator shares the server's cores, every figure of a saturated server
also pays for the client. With `--server-cpus 0-1` the bare ORT references, the pipeline limit and
every server this run starts get cores 0-1 only, and the load generator gets the rest (or
`--client-cpus`), so "16 clients / pipeline limit" compares a two-core server with a two-core limit.

Linux keeps an affinity mask per thread, and threads and child processes start with their creator's.
So the bench's main thread holds the server cores from the start (references, their ORT and worker
threads, and every server it spawns inherit them) and moves to the client cores only while it drives
load; the event loop, the gRPC and resolver threads made during a run start there.

A mask is inherited, not enforced: a thread may set its own. ONNX Runtime does, when a session is left
at its default thread count: it pins one thread to each physical core of the machine. Our server and
the references set their thread counts; the naive server is given one in a pinned run
(`EFFNET_NAIVE_THREADS`). A run's `cpu.server` shows whether a server kept to its cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def parse_cpus(text: str) -> frozenset[int]:
    """A cpu list as taskset and cgroups write it: "0-1", "2,5", "0-3,8"."""
    cpus: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"not a cpu list: {text!r} (write it like 0-1 or 0,2)") from None
        if low < 0 or high < low:
            raise ValueError(f"not a cpu range: {part!r} in {text!r}")
        cpus.update(range(low, high + 1))
    if not cpus:
        raise ValueError(f"no cpus in {text!r}")
    return frozenset(cpus)


def format_cpus(cpus: frozenset[int]) -> str:
    """The shortest cpu list for `cpus` ("0-1,4")."""
    ordered = sorted(cpus)
    ranges: list[str] = []
    start = previous = ordered[0]
    for cpu in [*ordered[1:], None]:
        if cpu is not None and cpu == previous + 1:
            previous = cpu
            continue
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
        if cpu is not None:
            start = previous = cpu
    return ",".join(ranges)


@dataclass(frozen=True)
class Pinning:
    server: frozenset[int]
    client: frozenset[int]

    @classmethod
    def split(cls, server: str, client: str = "", available: frozenset[int] | None = None) -> Pinning:
        """Server cores as asked; client cores as asked, else every other core this process may use."""
        usable = available if available is not None else frozenset(os.sched_getaffinity(0))
        server_cpus = parse_cpus(server)
        client_cpus = parse_cpus(client) if client else usable - server_cpus
        for role, cpus in (("server", server_cpus), ("client", client_cpus)):
            if not cpus <= usable:
                raise ValueError(
                    f"{role} cpus {format_cpus(cpus)} are not all usable here "
                    f"(this process may run on {format_cpus(usable)})"
                )
        if not client_cpus:
            raise ValueError(f"no cpus left for the load generator beside {format_cpus(server_cpus)}")
        if server_cpus & client_cpus:
            raise ValueError(
                f"server and client cpus overlap on {format_cpus(server_cpus & client_cpus)}: "
                "the point is to keep them apart"
            )
        return cls(server_cpus, client_cpus)

    def hold_server_cores(self) -> None:
        """Put the calling thread on the server cores: what it starts from now on starts there."""
        os.sched_setaffinity(0, self.server)

    @contextmanager
    def on_client_cores(self) -> Iterator[None]:
        """The calling thread on the client cores for the block, then back on the server cores."""
        os.sched_setaffinity(0, self.client)
        try:
            yield
        finally:
            os.sched_setaffinity(0, self.server)

    def describe(self) -> dict[str, str]:
        return {"server_cpus": format_cpus(self.server), "client_cpus": format_cpus(self.client)}
