"""Which graph a request's model name means: `b0` may mean `b0-fp16` (Settings.precision).

Lower-precision variants are ordinary models named `<name>-fp16` in the repository. A request that
names the bare model gets the fp16 graph where that pays: on CUDA (`auto`), or wherever it is loaded
(`fp16`). An explicit name (`b0-fp16`, `b0` under `fp32`) is always served as named, and the answer's
`model` says what ran. Only ready models are candidates, so a request never waits for, or fails on, a
variant still loading.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal, Protocol

from service.runtime.providers import CUDA

Precision = Literal["auto", "fp32", "fp16"]
FP16_SUFFIX: Final = "-fp16"


def choose_model(name: str, precision: Precision, ready_providers: Mapping[str, str | None]) -> str:
    """The model to run for a request naming `name`.

    `ready_providers` maps each ready model to the execution provider its session got.
    """
    if precision == "fp32" or name.endswith(FP16_SUFFIX):
        return name
    candidate = name + FP16_SUFFIX
    if candidate not in ready_providers:
        return name
    if precision == "fp16" or ready_providers[candidate] == CUDA:
        return candidate
    return name


class _Entry(Protocol):
    @property
    def provider(self) -> str | None: ...
    @property
    def state(self) -> object: ...


def resolve_precision(name: str, precision: Precision, entries: Mapping[str, _Entry]) -> str:
    """`choose_model` over the engine's model table (entries in state READY are the candidates)."""
    ready = {n: e.provider for n, e in entries.items() if str(e.state) == "ready"}
    return choose_model(name, precision, ready)
