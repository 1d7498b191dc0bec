"""What `make bench-quick` and `make bench` measure. Durations are seconds of measured window."""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_VARIANTS = ("b0", "b1", "b2", "b3", "b4", "b5", "b6", "b7")


@dataclass(frozen=True)
class Profile:
    name: str
    duration_s: float
    warmup_s: float
    ref_budget_s: float  # per measured reference point
    batch_sizes: tuple[int, ...]
    concurrency: tuple[int, ...]  # b0 HTTP sweep on our service
    grpc_concurrency: tuple[int, ...]
    naive_concurrency: tuple[int, ...]
    open_loop_fractions: tuple[float, ...]  # offered load as fractions of the closed-loop peak
    tuning: tuple[dict[str, str], ...]  # one-at-a-time changes to the defaults (b0, 1080p, saturated)
    saturation_concurrency: int = 16
    # Before each measured run, wait up to this long for other jobs on a shared machine to go quiet.
    quiet_wait_s: float = 10.0
    # Other variants: (name, concurrencies, naive concurrency or 0, duration); all run on one server.
    variants: tuple[tuple[str, tuple[int, ...], int, float], ...] = ()
    paper_chart: bool = False
    combine_best: bool = False
    extra: dict[str, str] = field(default_factory=dict)


QUICK = Profile(
    name="quick",
    duration_s=4.0,
    warmup_s=1.0,
    ref_budget_s=0.4,
    batch_sizes=(1, 2, 4, 8),
    concurrency=(1, 4, 16),
    grpc_concurrency=(1, 16),
    naive_concurrency=(1, 16),
    open_loop_fractions=(0.3, 0.6, 0.9),
    # Whole batches of 4 on the one-thread session: the default before 2026-12-04 (pieces of one).
    tuning=({"preprocess_in_batch": "false"}, {"intra_op_threads": "1"}, {"overlap_run_size": "4"}),
    quiet_wait_s=5.0,
)

FULL = Profile(
    name="full",
    duration_s=8.0,
    warmup_s=2.0,
    ref_budget_s=1.0,
    batch_sizes=(1, 2, 4, 8, 16),
    concurrency=(1, 2, 4, 8, 16, 32),
    grpc_concurrency=(1, 16),
    naive_concurrency=(1, 4, 16, 32),
    open_loop_fractions=(0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1),
    tuning=(
        {"preprocess_in_batch": "false"},
        {"intra_op_threads": "1"},
        {"preprocess_workers": "1"},
        {"preprocess_workers": "3"},
        {"allow_spinning": "true"},
        {"allow_spinning": "true", "spin_between_runs": "true"},
        {"max_batch_size": "1"},
        {"max_batch_size": "2"},
        {"max_batch_size": "8"},
        {"max_queue_delay_ms": "2"},
    ),
    variants=(("b3", (1, 16), 16, 8.0), ("b7", (1, 4), 4, 10.0)),
    paper_chart=True,
    combine_best=True,
)

PROFILES = {"quick": QUICK, "full": FULL}
