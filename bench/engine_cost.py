"""The split-mode engine alone: its CPU per image when fronts feed it faster than this machine's fronts can.

bench/split_cost.py measures the whole server, but on two cores the load generator and the fronts use
most of the CPU, so the engine sees a few hundred requests per second and small batches. Here synthetic
fronts (in this process, speaking the real wire protocol over the engine's Unix socket, payloads in its
shared memory) keep `--in-flight` one-image pixel calls outstanding per front, as 8 real fronts of a
16-core host would. The engine process is the real one (`python -m service serve --split-role engine`)
on the model that costs nothing (tests/tiny_model.py) or on the emulated device:

  python -m bench.engine_cost --fronts 2 --in-flight 256 --seconds 10 --rounds 3 [--emulate b0-fp16:1]

Printed per round and as medians: images/s, the engine's busiest thread CPU per image (issue 36's goal:
at most 40 us), the engine's whole CPU per image, and the mean batch size the engine formed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil

from service.runtime.outputs import NOTHING
from service.runtime.priorities import DEFAULT
from service.split.slab import Slab
from service.split.wire import FrameWriter, read_frame
from tests.tiny_model import SIZE, write_model

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Round:
    images: int
    seconds: float
    rate: float
    engine_thread_us: float  # the busiest engine thread's CPU per image
    engine_cpu_us: float  # every engine thread's CPU per image
    mean_batch: float
    errors: int
    client_cpu_us: float  # this process (the synthetic fronts) per image: if near 1e6 / rate, it is the limit


class SyntheticFront:
    """One front's connection: `in_flight` one-image calls outstanding, each answer replaced at once."""

    def __init__(self, index: int, in_flight: int, model: str) -> None:
        self.index, self.in_flight, self.model = index, in_flight, model
        self.done = 0
        self.errors = 0
        self.running = True
        self._slab: Slab | None = None

    async def run(self, socket_path: str, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.open_unix_connection(socket_path)
        out = FrameWriter(writer)
        out.send(("hello", self.index))
        offset = -1
        shape = (1, 3, SIZE, SIZE)
        rids = iter(range(1, 1 << 62))

        def send() -> None:
            payload = ("pixels", offset, shape, False)
            call = ("infer", next(rids), self.model, None, 1, None, int(DEFAULT), None, "", NOTHING, payload)
            out.send(call)

        while (messages := await read_frame(reader)) is not None:
            for message in messages:
                kind = message[0]
                if kind == "welcome":
                    _, name, start, _ = message
                    self._slab = Slab.attach(name)
                    offset = start
                    self._slab.view(offset, int(np.prod(shape)))[:] = 7
                    for _ in range(self.in_flight):
                        send()
                elif kind in ("done", "error", "done_many"):
                    answered = len(message[3]) if kind == "done_many" else 1
                    if kind == "error":
                        self.errors += 1
                    else:
                        self.done += answered
                    if not stop.is_set():
                        for _ in range(answered):
                            send()
            if stop.is_set():
                break
        writer.close()
        if self._slab is not None:
            self._slab.close()


def _engine_threads(pid: int) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}


def _batches(metrics: str, model: str) -> tuple[float, float]:
    """(batches, images) run so far, from the engine's metrics text."""
    count = images = 0.0
    for line in metrics.splitlines():
        if line.startswith("effnet_batch_size_count") and f'model="{model}"' in line:
            count += float(line.rsplit(" ", 1)[1])
        elif line.startswith("effnet_batch_size_sum") and f'model="{model}"' in line:
            images += float(line.rsplit(" ", 1)[1])
    return count, images


async def _metrics(socket_path: str) -> str:
    """The engine's own series, asked for as a front would (index 99: outside the measured fronts)."""
    reader, writer = await asyncio.open_unix_connection(socket_path)
    out = FrameWriter(writer)
    out.send(("hello", 99))
    text = ""
    while (messages := await read_frame(reader)) is not None:
        for message in messages:
            if message[0] == "welcome":  # the hello must be a frame of its own
                out.send(("metrics", 1))
            elif message[0] == "collect":
                out.send(("collected", message[1], ""))
            elif message[0] == "metrics":
                text = message[2].decode() if isinstance(message[2], bytes) else message[2]
        if text:
            break
    writer.close()
    return text


async def one_round(socket_path: str, pid: int, fronts: int, in_flight: int, seconds: float) -> Round:
    stop = asyncio.Event()
    batches_before = _batches(await _metrics(socket_path), "tiny")
    synthetic = [SyntheticFront(i, in_flight, "tiny") for i in range(fronts)]
    tasks = [asyncio.create_task(f.run(socket_path, stop)) for f in synthetic]
    await asyncio.sleep(1.0)  # warm: connections made, batches flowing
    done_before = sum(f.done for f in synthetic)
    cpu_before = _engine_threads(pid)
    started, client_before = time.monotonic(), time.process_time()
    await asyncio.sleep(seconds)
    cpu_after = _engine_threads(pid)
    client_cpu = time.process_time() - client_before
    elapsed = time.monotonic() - started
    images = sum(f.done for f in synthetic) - done_before
    stop.set()
    await asyncio.wait(tasks, timeout=30)
    batches_after = _batches(await _metrics(socket_path), "tiny")
    used = [cpu_after[t] - cpu_before.get(t, 0.0) for t in cpu_after]
    ran_batches = batches_after[0] - batches_before[0]
    ran_images = batches_after[1] - batches_before[1]
    return Round(
        images,
        round(elapsed, 3),
        round(images / elapsed, 1),
        round(max(used) / images * 1e6, 2),
        round(sum(used) / images * 1e6, 2),
        round(ran_images / ran_batches, 1) if ran_batches else 0.0,
        sum(f.errors for f in synthetic),
        round(client_cpu / images * 1e6, 2),
    )


def start_engine(
    repository: Path, socket_path: str, fronts: int, emulate: str, max_batch: int, queue: int
) -> subprocess.Popen[bytes]:
    # A GPU's batch sizes and a queue that holds every call in flight (no refusals to count).
    env = {**os.environ, "EFFNET_LOG_LEVEL": "WARNING", "EFFNET_MAX_BATCH_SIZE": str(max_batch),
           "EFFNET_MAX_QUEUE_SIZE": str(queue)}  # fmt: skip
    if emulate:
        env["EFFNET_EMULATE_DEVICE"] = emulate
    process = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--repository", str(repository), "--split-role", "engine",
         "--split-socket", socket_path, "--split-index", "0", "--split-fronts", str(fronts + 1)],
        cwd=ROOT, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not os.path.exists(socket_path):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            raise RuntimeError("the engine did not listen")
        time.sleep(0.1)
    time.sleep(1.0)  # its models loaded (they are tiny)
    return process


def main() -> int:
    described = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=described)
    parser.add_argument("--fronts", type=int, default=2)
    parser.add_argument("--in-flight", type=int, default=256, help="one-image calls outstanding per front")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--emulate", default="", help="EFFNET_EMULATE_DEVICE for the engine (default: none)")
    parser.add_argument("--max-batch", type=int, default=128, help="the model's batch size (a GPU's: 32-256)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="engine-cost-"))
    write_model(folder / "models", "tiny")
    socket_path = str(folder / "engine.sock")
    queue = args.fronts * args.in_flight
    process = start_engine(folder / "models", socket_path, args.fronts, args.emulate, args.max_batch, queue)
    rounds: list[Round] = []
    try:
        for _ in range(args.rounds):
            rounds.append(
                asyncio.run(one_round(socket_path, process.pid, args.fronts, args.in_flight, args.seconds))
            )
            print(json.dumps(asdict(rounds[-1])), flush=True)
    finally:
        process.terminate()
        process.wait(30)
    summary = {
        key: statistics.median(getattr(r, key) for r in rounds)
        for key in ("rate", "engine_thread_us", "engine_cpu_us", "mean_batch", "client_cpu_us")
    }
    summary["engine_ceiling_images_s"] = round(1e6 / summary["engine_thread_us"])
    report = {"fronts": args.fronts, "in_flight": args.in_flight, "emulate": args.emulate,
              "max_batch": args.max_batch, "load": os.getloadavg(), "summary": summary}  # fmt: skip
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps({**report, "rounds": [asdict(r) for r in rounds]}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
