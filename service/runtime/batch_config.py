"""A batcher's settings (batcher.py), checked when made."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatcherConfig:
    max_batch_size: int = 4
    max_queue_delay_s: float = 0.0
    max_queue_size: int = 64
    instances: int = 1  # batches that may run at once, each on its own worker thread
    priority_aging_s: float = 1.0  # an item this old may pass higher levels, in a share (priorities.py)
    high_fill_slack: float = 1.25  # a batch with high items: others while its cost is within this factor
    high_fill_unmeasured: int = 0  # ... and this many others while that cost is not measured yet
    high_lane: bool = True  # one more runner, for high items alone, when all `instances` are busy

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ValueError("instances must be at least 1")
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_queue_delay_s < 0:
            raise ValueError("max_queue_delay_s must not be negative")
        if self.max_queue_size < 1:
            raise ValueError("max_queue_size must be at least 1")
        if self.priority_aging_s <= 0:
            raise ValueError("priority_aging_s must be positive")
        if self.high_fill_slack < 1:
            raise ValueError("high_fill_slack must be at least 1")
        if self.high_fill_unmeasured < 0:
            raise ValueError("high_fill_unmeasured must not be negative")
