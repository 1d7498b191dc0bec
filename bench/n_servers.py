"""Split mode against the simpler design: N complete servers sharing one GPU (issue 36).

Both run on the emulated device (`EFFNET_EMULATE_DEVICE`), and the N servers' devices share one lock
file (`EFFNET_EMULATE_DEVICE_LOCK`), so their batches take turns as processes' batches do on one GPU. The
model costs nothing (tests/tiny_model.py); one-image V2 gRPC pixel requests arrive open loop at fixed
rates, spread over several connections (split mode's fronts share a port per connection; the N servers
get the same number each). Per design and rate: requests/s answered, p50 and p99 latency, the device's
batches per second and their mean size (from the servers' /metrics), and how many copies of each
model's sessions the design holds in GPU memory.

  python -m bench.n_servers --servers 2 --fronts 2 --emulate b0-fp16:20 --rates 150,300,450 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from bench.loadgen import LoadSpec, run_load
from bench.split_cost import start_server
from bench.targets import V2Infer
from service._generated.inference import grpc_service_pb2 as pb
from tests.tiny_model import SIZE, write_model

CHANNELS = 8


@dataclass
class Figures:
    design: str
    rate: float
    answered_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    failed: int
    device_batches_per_s: float
    mean_batch: float
    session_copies: int  # each model's sessions held in GPU memory: one engine, or one per server


class Spread:
    """One target over several connections (and servers): request i goes to connection i mod n."""

    def __init__(self, addresses: list[str]) -> None:
        request = pb.ModelInferRequest(model_name="tiny")  # every output (the tiny model has 4 classes)
        request.inputs.add(name="pixels", datatype="UINT8", shape=[1, 3, SIZE, SIZE])
        request.raw_input_contents.append(bytes(3 * SIZE * SIZE))
        self.name = "v2-pixels"
        self._targets = [V2Infer(address, [request], self.name) for address in addresses]

    async def open(self, concurrency: int) -> None:
        await asyncio.gather(*(target.open(concurrency) for target in self._targets))

    async def send(self, index: int) -> str:
        return await self._targets[index % len(self._targets)].send(index)

    async def close(self) -> None:
        await asyncio.gather(*(target.close() for target in self._targets))


def batches(http_ports: list[int]) -> tuple[float, float]:
    """(batches, images) the device ran so far, summed over the servers (split: the engine's series)."""
    count = images = 0.0
    for port in http_ports:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        count += sum(
            float(v)
            for v in re.findall(r'^effnet_batch_size_count\{[^}]*model="tiny"[^}]*\} (\S+)$', text, re.M)
        )
        images += sum(
            float(v)
            for v in re.findall(r'^effnet_batch_size_sum\{[^}]*model="tiny"[^}]*\} (\S+)$', text, re.M)
        )
    return count, images


def measure(
    design: str, grpc_ports: list[int], http_ports: list[int], rate: float, seconds: float
) -> Figures:
    per_server = max(1, CHANNELS // len(grpc_ports))
    target = Spread([f"127.0.0.1:{port}" for port in grpc_ports for _ in range(per_server)])
    spec = LoadSpec("open", duration_s=seconds, warmup_s=2.0, rate=rate)
    before = batches(http_ports)
    result = asyncio.run(run_load(target, spec))
    after = batches(http_ports)
    ran, images = after[0] - before[0], after[1] - before[1]
    summary = result.summary
    elapsed = seconds + spec.warmup_s
    return Figures(
        design,
        rate,
        round(summary["throughput"], 1),
        None if summary["p50_ms"] is None else round(summary["p50_ms"], 1),
        None if summary["p99_ms"] is None else round(summary["p99_ms"], 1),
        summary["requests"] - summary["ok"],
        round(ran / elapsed, 1),
        round(images / ran, 2) if ran else 0.0,
        len(http_ports) if design.startswith("servers") else 1,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", type=int, default=2, help="complete servers sharing the device")
    parser.add_argument("--fronts", type=int, default=2, help="split mode's front processes")
    parser.add_argument("--emulate", default="b0-fp16:20", help="the device curve and its time scale")
    parser.add_argument("--rates", default="150,300,450", help="offered one-image requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="n-servers-"))
    write_model(folder / "models", "tiny")
    lock = {"EFFNET_EMULATE_DEVICE_LOCK": str(folder / "gpu.lock")}
    rates = [float(r) for r in args.rates.split(",")]
    results: list[Figures] = []
    designs = {
        f"split, {args.fronts} fronts": [start_server(folder / "models", args.fronts, args.emulate)],
        f"servers x{args.servers}": [
            start_server(folder / "models", 0, args.emulate, extra_env=lock) for _ in range(args.servers)
        ],
        # As many batches at the device as split mode's one engine holds (2), not 2 per server.
        f"servers x{args.servers}, 1 instance each": [
            start_server(folder / "models", 0, args.emulate, extra_env={**lock, "EFFNET_INSTANCES": "1"})
            for _ in range(args.servers)
        ],
    }
    try:
        for rate in rates:  # designs alternate at each rate: a drift of the machine touches both
            for design, servers in designs.items():
                grpc_ports = [grpc for _, _, grpc in servers]
                http_ports = [http for _, http, _ in servers]
                results.append(measure(design, grpc_ports, http_ports, rate, args.seconds))
                print(json.dumps(asdict(results[-1])), flush=True)
    finally:
        for servers in designs.values():
            for process, _, _ in servers:
                process.terminate()
                process.wait(30)
    report = {"emulate": args.emulate, "load": os.getloadavg(), "results": [asdict(r) for r in results]}
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
