"""`make chaos`: the compose topology as processes under random faults, for a few minutes.

    python -m tests.chaos.runner [--repository DIR] [--models lite0,b0] [--replicas 3]
                                 [--duration 240] [--seed N] [--report docs/simulations/chaos-report.json]

Runs inside a network namespace it creates (root; iproute2), so everything is on that namespace's
own loopback: three replicas (each on its own 127.0.0.1x address), nginx with the repository's
config, and a load generator mixing HTTP and gRPC over several models. Faults, one at a time in a
random order: SIGKILL and restart of a replica; SIGSTOP, then SIGCONT (a frozen replica); a replica
restarted on a repository with a corrupt model file (it must stay not ready and serve nothing of
that model); delay and loss on one replica's link. The report (JSON, and a markdown table on
stdout) counts requests sent, answered right, answered with a clean error and why, and lost (no
answer at all: must be 0), p99 latency during faults, and the time to recover after each fault.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.chaos.load import LoadGenerator, Record
from tests.chaos.network import LinkFault
from tests.deploy import nginx_setup
from tests.deploy.test_topology import Process

ROOT = Path(__file__).resolve().parents[2]
REAL_WEIGHT_MODELS = frozenset({"lite0", "lite1", "lite2"})
KINDS = ("kill", "freeze", "corrupt", "network")
NGINX_HTTP_PORT, NGINX_GRPC_PORT = 8000, 8001


@dataclass
class Replica(Process):
    index: int
    host: str
    http_port: int
    grpc_port: int
    repository: Path

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def answered(self, model: str) -> Counter[str]:
        """effnet_requests_total for `model` by code, from the replica's own /metrics."""
        counts: Counter[str] = Counter()
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith("effnet_requests_total{") and f'model="{model}"' in line:
                code = line.split('code="')[1].split('"')[0]
                counts[code] += int(float(line.rsplit(" ", 1)[1]))
        return counts


@dataclass
class Fault:
    kind: str
    replica: int
    started: float
    restored: float = 0.0
    back: float = 0.0  # the replica ready (and, for a network fault, the link clean) again
    notes: dict[str, Any] = field(default_factory=dict)


class Topology:
    def __init__(self, repository: Path, models: str, replicas: int, work: Path) -> None:
        self.repository = repository
        self.models = models
        self.work = work
        self.launches = 0
        self.replicas = [self._launch(i, repository) for i in range(replicas)]
        self.nginx: Process | None = None

    def _launch(self, index: int, repository: Path) -> Replica:
        self.launches += 1
        host, http_port, grpc_port = f"127.0.0.{11 + index}", 8100 + index, 8200 + index
        log_path = self.work / f"replica-{index}-{self.launches}.log"
        command = [
            sys.executable, "-m", "service", "serve",
            "--repository", str(repository), "--models", self.models,
            "--host", host, "--http-port", str(http_port), "--grpc-port", str(grpc_port),
            "--intra-op-threads", "1", "--preprocess-workers", "1",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "EFFNET_DRAIN_TIMEOUT_S": "5"}
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        return Replica(process, log_path, index, host, http_port, grpc_port, repository)

    def relaunch(self, index: int, repository: Path | None = None) -> Replica:
        replica = self._launch(index, repository or self.repository)
        self.replicas[index] = replica
        return replica

    def wait_ready(self, replica: Replica, timeout: float = 240) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if replica.process.poll() is not None:
                raise RuntimeError(f"replica {replica.index} exited:\n{replica.log()[-3000:]}")
            if replica.ready():
                return time.monotonic()
            time.sleep(0.2)
        raise RuntimeError(f"replica {replica.index} not ready in {timeout}s:\n{replica.log()[-3000:]}")

    def start_nginx(self) -> None:
        nginx = nginx_setup.nginx_binary()
        if nginx is None:
            raise SystemExit("nginx is not installed (make chaos installs it)")
        prefix = self.work / "nginx"
        conf = nginx_setup.write_prefix(
            prefix, NGINX_HTTP_PORT, NGINX_GRPC_PORT,
            [r.http_port for r in self.replicas], [r.grpc_port for r in self.replicas],
        )  # fmt: skip
        upstreams = (prefix / "upstreams.conf").read_text()
        for r in self.replicas:  # each replica on its own loopback address
            upstreams = upstreams.replace(f"127.0.0.1:{r.http_port}", f"{r.host}:{r.http_port}")
            upstreams = upstreams.replace(f"127.0.0.1:{r.grpc_port}", f"{r.host}:{r.grpc_port}")
        (prefix / "upstreams.conf").write_text(upstreams)
        checked = nginx_setup.check_config(nginx, prefix, conf)
        if checked.returncode != 0:
            raise RuntimeError(checked.stderr)
        log_path = prefix / "logs" / "access.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [nginx, "-p", str(prefix), "-c", str(conf), "-g", nginx_setup.globals_for(prefix)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.nginx = Process(process, log_path)

    def stop(self) -> None:
        for process in [*self.replicas, *([self.nginx] if self.nginx else [])]:
            if process.process.poll() is None:  # a frozen replica cannot stop
                os.kill(process.process.pid, signal.SIGCONT)
            process.stop(timeout=15)


def corrupt_copy(repository: Path, model: str, into: Path) -> Path:
    """A copy of the repository whose `model`'s ONNX file is garbage of the same size."""
    target = into / "corrupt-repository"
    if not target.exists():
        shutil.copytree(repository, target)
        for onnx in (target / model).glob("*/model.onnx"):
            size = onnx.stat().st_size
            onnx.write_bytes(random.Random(0).randbytes(size))
    return target


def run_fault(kind: str, topology: Topology, rng: random.Random, epoch: float, long_freeze: bool) -> Fault:
    index = rng.randrange(len(topology.replicas))
    replica = topology.replicas[index]
    fault = Fault(kind, index, time.monotonic() - epoch)
    print(f"[{fault.started:6.1f}s] fault {kind} on replica {index}", flush=True)
    if kind == "kill":
        replica.process.send_signal(signal.SIGKILL)
        replica.process.wait(10)
        fault.restored = time.monotonic() - epoch
        fresh = topology.relaunch(index)
        fault.back = topology.wait_ready(fresh) - epoch
    elif kind == "freeze":
        # 25 s: past nginx's longest bound (20 s, for calls with a deadline of 30 s or more), so even
        # those are resent; HTTP requests without a deadline are resent after 1 s either way.
        hold = 25.0 if long_freeze else 6.0
        fault.notes["frozen_s"] = hold
        replica.process.send_signal(signal.SIGSTOP)
        time.sleep(hold)
        replica.process.send_signal(signal.SIGCONT)
        fault.restored = time.monotonic() - epoch
        fault.back = topology.wait_ready(replica) - epoch
    elif kind == "corrupt":
        model = sorted(topology.models.split(","))[0]
        broken = corrupt_copy(topology.repository, model, topology.work)
        replica.stop(signal.SIGTERM, timeout=20)
        sick = topology.relaunch(index, broken)
        time.sleep(3)  # it loads what it can
        checks, not_ready = 0, 0
        for _ in range(15):
            checks += 1
            not_ready += 0 if sick.ready() else 1
            time.sleep(1)
        answered = sick.answered(model)
        fault.notes.update(
            model=model,
            readiness_checks=checks,
            not_ready_checks=not_ready,
            alive=sick.process.poll() is None,
            broken_model_answered_200=answered.get("200", 0),
            broken_model_requests_reaching_it=sum(answered.values()),
            other_models_served_200={
                m: sick.answered(m).get("200", 0) for m in topology.models.split(",") if m != model
            },
        )
        sick.stop(signal.SIGTERM, timeout=20)
        fault.restored = time.monotonic() - epoch
        fresh = topology.relaunch(index)
        fault.back = topology.wait_ready(fresh) - epoch
    elif kind == "network":
        link = LinkFault(replica.host)
        fault.notes["method"] = link.apply()
        try:
            time.sleep(15)
        finally:
            link.remove()
        fault.restored = time.monotonic() - epoch
        fault.back = fault.restored
    return fault


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency_recovered(records: list[Record], start: float, limit_s: float, until: float) -> float | None:
    """Seconds from `start` to the first 2 s window whose requests all finished within `limit_s`."""
    t = start
    while t < until:
        window = [r for r in records if t <= r.started < t + 2.0]
        if window and max(r.latency_s for r in window) <= limit_s:
            return round(t - start, 1)
        t += 0.5
    return None


def report(records: list[Record], faults: list[Fault], epoch: float, meta: dict[str, Any]) -> dict[str, Any]:
    relative = [
        Record(r.started - epoch, r.finished - epoch, r.protocol, r.model, r.outcome, r.detail)
        for r in records
    ]
    first_fault = faults[0].started if faults else float("inf")
    baseline = [r.latency_s for r in relative if r.started < first_fault and r.outcome == "right"]
    baseline_p99 = percentile(baseline, 0.99)
    limit = max(3 * baseline_p99, baseline_p99 + 0.1)
    end = max((r.finished for r in relative), default=0.0)
    during: list[Record] = []
    fault_rows = []
    for i, fault in enumerate(faults):
        window_end = max(fault.back, fault.restored)
        inside = [r for r in relative if fault.started <= r.started <= window_end]
        during += inside
        next_start = faults[i + 1].started if i + 1 < len(faults) else end
        fault_rows.append(
            {
                **asdict(fault),
                "requests": len(inside),
                "right": sum(r.outcome == "right" for r in inside),
                "clean_errors": dict(Counter(r.detail for r in inside if r.outcome == "clean_error")),
                "lost": sum(r.outcome == "lost" for r in inside),
                "p99_ms": round(1000 * percentile([r.latency_s for r in inside], 0.99)),
                "max_ms": round(1000 * max((r.latency_s for r in inside), default=0.0)),
                "over_5s": sum(r.latency_s > 5 for r in inside),
                "replica_back_s": round(fault.back - fault.started, 1),
                "latency_recovered_s": latency_recovered(relative, fault.restored, limit, next_start),
            }
        )
    outcomes = Counter(r.outcome for r in relative)
    return {
        **meta,
        "sent": len(relative),
        "answered_right": outcomes["right"],
        "answered_wrong": outcomes["wrong"],
        "clean_errors": dict(Counter(r.detail for r in relative if r.outcome == "clean_error")),
        "lost": outcomes["lost"],
        "lost_detail": dict(Counter(r.detail for r in relative if r.outcome == "lost")),
        "by_protocol": {
            p: dict(Counter(r.outcome for r in relative if r.protocol == p)) for p in ("http", "grpc")
        },
        "baseline_p50_ms": round(1000 * percentile(baseline, 0.5)),
        "baseline_p99_ms": round(1000 * baseline_p99),
        "p99_during_faults_ms": round(1000 * percentile([r.latency_s for r in during], 0.99)),
        "latency_recovered_means": f"first 2 s window after the fault with every request under {limit:.2f} s",
        "faults": fault_rows,
    }


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"sent {result['sent']}, right {result['answered_right']}, wrong {result['answered_wrong']}, "
        f"clean errors {sum(result['clean_errors'].values())} {result['clean_errors'] or ''}, "
        f"lost {result['lost']}; p99 {result['baseline_p99_ms']} ms before faults, "
        f"{result['p99_during_faults_ms']} ms during them",
        "",
        "| fault | replica | requests | clean errors | lost | p99 ms | max ms | > 5 s | replica back s "
        "| latency back s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in result["faults"]:
        kind = f["kind"] + (f" {f['notes']['frozen_s']:g} s" if f["kind"] == "freeze" else "")
        errors = sum(f["clean_errors"].values())
        lines.append(
            f"| {kind} | {f['replica']} | {f['requests']} | {errors} | {f['lost']} | {f['p99_ms']} | "
            f"{f['max_ms']} | {f['over_5s']} | {f['replica_back_s']} | {f['latency_recovered_s']} |"
        )
    return "\n".join(lines)


def reference_answers(
    replica: Replica, models: list[str], image: bytes
) -> dict[str, list[tuple[int, float]]]:
    answers = {}
    for model in models:
        response = httpx.post(
            f"{replica.url}/classify",
            params={"variant": model, "top_k": 5},
            content=image,
            headers={"Content-Type": "image/jpeg"},
            timeout=60,
        )
        response.raise_for_status()
        (result,) = response.json()["results"]
        answers[model] = [(p["class_id"], p["score"]) for p in result["predictions"]]
    return answers


def photo() -> bytes:
    import io

    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def run_inside(args: argparse.Namespace) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    rng = random.Random(args.seed)
    models = [m for m in args.models.split(",") if m]
    missing = [m for m in models if not (args.repository / m).is_dir()]
    if missing:
        raise SystemExit(f"models {missing} not in {args.repository}: run `make models`")
    work = Path(tempfile.mkdtemp(prefix="effnet-chaos-"))
    os.chmod(work, 0o755)  # nginx workers run unprivileged
    topology = Topology(args.repository, args.models, args.replicas, work)
    load: LoadGenerator | None = None
    try:
        for replica in topology.replicas:
            topology.wait_ready(replica)
        topology.start_nginx()
        image = photo()
        references = reference_answers(topology.replicas[0], models, image)
        exact = frozenset(m for m in models if m in REAL_WEIGHT_MODELS)
        load = LoadGenerator(
            f"http://127.0.0.1:{NGINX_HTTP_PORT}", f"127.0.0.1:{NGINX_GRPC_PORT}", image, references, exact,
            seed=args.seed,
        )  # fmt: skip
        epoch = time.monotonic()
        load.start()
        time.sleep(args.baseline)
        faults: list[Fault] = []
        order: list[str] = []
        freezes = 0
        while time.monotonic() - epoch < args.duration:
            if not order:
                order = list(KINDS)
                rng.shuffle(order)
            kind = order.pop()
            freezes += kind == "freeze"
            faults.append(run_fault(kind, topology, rng, epoch, long_freeze=freezes % 2 == 1))
            time.sleep(args.gap)
        time.sleep(args.gap)
        finished = load.stop()
        meta = {
            "replicas": args.replicas,
            "models": models,
            "seed": args.seed,
            "duration_s": round(time.monotonic() - epoch, 1),
            "load": f"{load.http_workers} HTTP + {load.grpc_workers} gRPC closed-loop workers through nginx",
            "all_requests_returned": finished,
        }
        result = report(load.records, faults, epoch, meta)
    finally:
        if load is not None:
            load.stop()
        topology.stop()
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"report: {args.report}; logs: {work}")
    return (
        0 if result["lost"] == 0 and result["answered_wrong"] == 0 and result["all_requests_returned"] else 1
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.runner", description=__doc__)
    parser.add_argument("--repository", type=Path, default=ROOT / "models" / "repository")
    parser.add_argument("--models", default="lite0,b0")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--duration", type=float, default=240, help="seconds of faults")
    parser.add_argument("--baseline", type=float, default=15, help="seconds of load before the first fault")
    parser.add_argument("--gap", type=float, default=5, help="seconds of quiet after each fault")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 10_000)
    parser.add_argument("--report", type=Path, default=ROOT / "docs" / "simulations" / "chaos-report.json")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.repository = args.repository.resolve()
    args.report = args.report.resolve()
    if args.inside:
        return run_inside(args)
    if os.geteuid() != 0 or shutil.which("ip") is None:
        raise SystemExit("the chaos run needs root and iproute2 (a network namespace of its own)")
    namespace = f"effnet-chaos-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
        command = ["ip", "netns", "exec", namespace, sys.executable, "-m", "tests.chaos.runner", "--inside"]
        pinned = [
            "--seed",
            str(args.seed),
            "--repository",
            str(args.repository),
            "--report",
            str(args.report),
        ]
        return subprocess.run([*command, *forwarded, *pinned], cwd=ROOT, check=False).returncode
    finally:
        subprocess.run(["ip", "netns", "del", namespace], check=False)


if __name__ == "__main__":
    raise SystemExit(main())
