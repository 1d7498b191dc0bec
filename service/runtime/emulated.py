"""The device, emulated: a runner that replays a measured GPU batch-time curve instead of computing.

For benchmarks of everything around the device (fronts, the crossing, batch formation, p99) on a
machine without one. A batch of n images takes the curve's time at n (linear between the measured
sizes, per image beyond the largest), times a scale factor, spent in `time.sleep`: the GIL is released
and no CPU is used, as a GPU run leaves the host's cores free. Batches run one at a time, as on one
device. The outputs are the graph's own answer to a blank image, repeated per row: the right names,
shapes and types, not the image's scores. Extra outputs (features, maps) are computed for real.

Selected only explicitly (`EFFNET_EMULATE_DEVICE=<curve>[:<scale>]`): a curve is a variant measured in
bench/results/gpu/gpu.json (`b0`, `b0-fp16`, ...) or a JSON file of the same shape. Its provider name
says so in every model description.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.runtime.session import OrtRunner

EMULATED = "EmulatedDevice"
MEASURED_CURVES = Path("bench/results/gpu/gpu.json")


@dataclass(frozen=True)
class BatchCurve:
    """Milliseconds per batch at measured batch sizes."""

    name: str
    sizes: tuple[int, ...]
    ms: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.sizes or len(self.sizes) != len(self.ms) or list(self.sizes) != sorted(set(self.sizes)):
            raise ValueError(f"curve '{self.name}': batch sizes must be distinct, ascending, one per time")
        if self.sizes[0] < 1 or any(ms <= 0 for ms in self.ms):
            raise ValueError(f"curve '{self.name}': sizes must be >= 1 and times positive")

    def seconds(self, n: int) -> float:
        """The batch time at `n` images: the smallest size's below it, linear between measured sizes,
        the largest size's time per image beyond it."""
        sizes, ms = self.sizes, self.ms
        if n <= sizes[0]:
            return ms[0] / 1000
        if n >= sizes[-1]:
            return ms[-1] * n / sizes[-1] / 1000
        right = bisect.bisect_left(sizes, n)
        left = right - 1
        share = (n - sizes[left]) / (sizes[right] - sizes[left])
        return (ms[left] + share * (ms[right] - ms[left])) / 1000


@dataclass(frozen=True)
class Emulation:
    curve: BatchCurve
    scale: float

    @property
    def label(self) -> str:
        return f"{EMULATED}({self.curve.name}x{self.scale:g})"


def parse_emulation(value: str, measured: Path = MEASURED_CURVES) -> Emulation:
    """`<curve>[:<scale>]`: a variant of `measured` (bench/gpu's results) or a JSON file's path."""
    name, _, scale_text = value.partition(":")
    try:
        scale = float(scale_text) if scale_text else 1.0
    except ValueError:
        raise ValueError(f"emulate_device '{value}': the scale after ':' must be a number") from None
    if not scale > 0:
        raise ValueError(f"emulate_device '{value}': the scale must be positive")
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return Emulation(curve_from_document(path.stem, json.loads(path.read_text())), scale)
    if not measured.is_file():
        raise ValueError(f"emulate_device '{value}': no curve file {measured} (give a JSON file's path)")
    document = json.loads(measured.read_text())
    bare = document.get("bare", {})
    if name not in bare:
        raise ValueError(f"emulate_device '{value}': {measured} measured {', '.join(sorted(bare))}")
    return Emulation(curve_from_document(name, bare[name]), scale)


def curve_from_document(name: str, document: dict[str, object]) -> BatchCurve:
    """`{"batches": {"<size>": {"ms_per_batch": <ms>}, ...}}` (bench/gpu's form for each variant)."""
    batches = document.get("batches")
    if not isinstance(batches, dict) or not batches:
        raise ValueError(f"curve '{name}' has no 'batches'")
    points = sorted((int(size), float(row["ms_per_batch"])) for size, row in batches.items())
    return BatchCurve(name, tuple(s for s, _ in points), tuple(ms for _, ms in points))


class EmulatedRunner:
    """The Runner protocol over an emulated device; the real session answers only its blank row (and
    the extra outputs, which this emulation does not time)."""

    def __init__(
        self, inner: OrtRunner, emulation: Emulation, item_shape: tuple[int, ...], shared_lock: str = ""
    ) -> None:
        """`shared_lock`: a file whose lock other processes' emulated devices take too (one GPU)."""
        self.inner = inner
        self._shared = open(shared_lock, "a+b") if shared_lock else None  # noqa: SIM115 (lives as long as the runner)
        self.emulation = emulation
        self.provider = emulation.label
        self.output_names = inner.output_names
        self.session = inner.session  # what load validation reads (the graph's outputs)
        self.runs = 0
        blank = np.zeros((1, *item_shape), dtype=np.uint8)
        self._rows = {name: value[0].copy() for name, value in inner.run(blank).items()}
        self._device = threading.Lock()  # one device: its batches run one after another

    @property
    def serves_extra_outputs(self) -> bool:
        return self.inner.serves_extra_outputs

    def busy(self) -> AbstractContextManager[bool]:
        """The Runner contract whole (runner.as_runner), so extra outputs reach the real session."""
        return self.inner.busy()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self.run_items(batch)

    def run_items(
        self,
        items: Sequence[np.ndarray] | np.ndarray,
        extra: Sequence[str] = (),
        feeds: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        if extra:
            return self.inner.run_items(items, extra, feeds)
        n = len(items)
        with self._device:
            if self._shared is not None:  # threads share one open file: flock alone would not exclude them
                fcntl.flock(self._shared, fcntl.LOCK_EX)
            try:
                time.sleep(self.emulation.curve.seconds(n) * self.emulation.scale)
            finally:
                if self._shared is not None:
                    fcntl.flock(self._shared, fcntl.LOCK_UN)
            self.runs += 1
        # New arrays per batch: callers keep views into them.
        return {name: np.repeat(row[None], n, axis=0) for name, row in self._rows.items()}

    def warm_up(
        self, input_shape: tuple[int, ...], batch_sizes: list[int], runs: int, concurrent: int = 1
    ) -> float:
        return 0.0  # nothing to warm: the device is a curve

    def add_overlap_session(self) -> bool:
        return False

    @property
    def overlap_run_size(self) -> int | None:
        return None
