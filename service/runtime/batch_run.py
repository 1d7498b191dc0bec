"""One batch in its worker thread: prepare its Encoded images (decode, resize, crop), then stack and run
the rows, and check that every output has one row per row run. An image that fails to prepare fails only
its own caller, never the batch (batcher.py answers each item)."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from dataclasses import dataclass

import numpy as np

from service.errors import InferenceFailed, ServiceError
from service.runtime.batch_queue import Encoded, Payload
from service.runtime.outputs import RunPlan, Wanted, plan
from service.runtime.runner import Runner, Stacking

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Ran:
    """What a worker thread did with one batch: the outputs of the items that prepared (in order),
    and for each item either its preparation seconds or the error that failed it."""

    outputs: dict[str, np.ndarray]
    inference_s: float
    prepared: list[float | BaseException]


def run_batch(runner: Runner, name: str, payloads: list[Payload], wanted: list[Wanted]) -> Ran:
    """Worker thread: prepare the Encoded items, then run the rows. The extra outputs are planned for
    the rows that run: an item whose image failed to decode has no row, and must not have one in the
    maps' class ids either."""
    arrays, prepared = _prepare(runner, name, payloads)
    if not arrays:
        return Ran({}, 0.0, prepared)
    kept = [w for w, outcome in zip(wanted, prepared, strict=True) if not isinstance(outcome, BaseException)]
    outputs, inference_s = _run_rows(runner, name, arrays, plan(kept))
    return Ran(outputs, inference_s, prepared)


def _prepare(
    runner: Runner, name: str, payloads: list[Payload]
) -> tuple[list[np.ndarray], list[float | BaseException]]:
    """The rows to run, and per payload its preparation seconds or the error that failed it."""
    encoded = any(isinstance(payload, Encoded) for payload in payloads)
    with runner.busy() if encoded else contextlib.nullcontext():  # tells the runner this core is decoding
        done = [_prepare_one(name, payload) for payload in payloads]
    return [row for row, _ in done if row is not None], [outcome for _, outcome in done]


def _prepare_one(name: str, payload: Payload) -> tuple[np.ndarray | None, float | BaseException]:
    if not isinstance(payload, Encoded):
        return payload, 0.0
    start = time.perf_counter()
    try:
        row = payload.prepare(payload.data)
    except ServiceError as exc:  # a bad image: its caller's error, not the batch's
        return None, exc
    except Exception as exc:
        error_id = secrets.token_hex(4)
        log.error("preprocessing failed model=%s error_id=%s", name, error_id, exc_info=exc)
        return None, InferenceFailed(f"preprocessing failed on model {name!r} (error id {error_id})")
    return row, time.perf_counter() - start


def _run_rows(
    runner: Runner, name: str, arrays: list[np.ndarray], run_plan: RunPlan
) -> tuple[dict[str, np.ndarray], float]:
    if run_plan.extra and isinstance(runner, Stacking):
        raise ValueError(f"the runner of {name!r} cannot compute {list(run_plan.extra)}")
    t0 = time.perf_counter()
    if run_plan.extra:
        outputs = runner.run_items(arrays, run_plan.extra, run_plan.feeds)
    else:
        outputs = runner.run_items(arrays)
    inference_s = time.perf_counter() - t0
    for key, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != len(arrays):
            raise ValueError(f"output {key!r} has shape {value.shape}, expected {len(arrays)} rows")
    return outputs, inference_s
