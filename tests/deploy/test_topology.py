"""The compose topology as plain processes: two replicas behind nginx running the repo's own config,
sharing a real Redis as their response cache (compose's `redis` service; lite0 opts in).

Load goes through nginx over HTTP (/classify with a real photo) and gRPC (Classify, with the published
retry policy of service/client/retry_policy.py); it must spread over both replicas. Replicas are SIGKILLed
mid-load and restarted, several times: every request must still get the correct answer, none fails,
none hangs, none is wrong. Redis is killed mid-load and restarted: nothing fails either, and the
replicas share answers again once it is back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc
from service._generated.inference import grpc_service_pb2 as v2_pb2
from service._generated.inference import grpc_service_pb2_grpc as v2_pb2_grpc
from service.client.retry_policy import channel_options
from tests.e2e.conftest import free_ports
from tests.redis_process import RedisProcess
from tests.waiting import until_sync

from . import nginx_setup
from .test_observability import PROMETHEUS_SERIES, SERVICE_SERIES, dashboard, metric_names, queries
from .tooling import ROOT, unavailable

pytestmark = pytest.mark.slow

MODEL = "lite0"
DRAIN_S = 5.0
HTTP_TIMEOUT_S = 20.0
GRPC_TIMEOUT_S = 10.0


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout}s:\n{log()[-4000:]}")


@dataclass
class Process:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@dataclass
class Replica(Process):
    http_port: int
    grpc_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"replica exited with {self.process.returncode}:\n{self.log()[-4000:]}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def http_requests(self) -> float:
        """Successful HTTP requests for MODEL this replica has counted (its own /metrics)."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "effnet_requests_total" and labels.get("protocol") == "http":
                    if labels.get("model") == MODEL and labels.get("code") == "200":
                        total += sample.value
        return total


@dataclass
class Topology:
    replicas: list[Replica]
    nginx: Process
    http_port: int
    grpc_port: int
    repository: Path
    log_dir: Path
    redis: RedisProcess
    restarts: int = 0

    def restart(self, index: int) -> Replica:
        """A new replica process on the same ports (as compose's `restart: unless-stopped` does)."""
        old = self.replicas[index]
        self.restarts += 1
        ports = (old.http_port, old.grpc_port)
        replica = start_replica(
            self.repository, self.log_dir, index, ports, attempt=self.restarts, cache_url=self.redis.url
        )
        self.replicas[index] = replica
        return replica

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def upstreams(self, path_prefix: str) -> Counter[str]:
        """Upstream address per access-log line whose request starts with `path_prefix`."""
        found: Counter[str] = Counter()
        for line in self.nginx.log().splitlines():
            match = re.search(r'"\S+ (\S+) [^"]*" \d+ .* upstream=(\S+)', line)
            if match and match[1].startswith(path_prefix):
                found.update(addr for addr in match[2].split(", ") if addr.startswith("127."))
        return found


def start_replica(
    repository: Path,
    log_dir: Path,
    index: int,
    ports: tuple[int, int] | None = None,
    attempt: int = 0,
    cache_url: str | None = None,
) -> Replica:
    http_port, grpc_port = ports or tuple(free_ports(2))
    log_path = log_dir / f"replica-{index}-{attempt}.log"
    command = [
        sys.executable, "-m", "service", "serve",
        "--repository", str(repository), "--models", MODEL,
        "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        # Two replicas share this machine's cores: one inference thread and one decoder each.
        "--intra-op-threads", "1", "--preprocess-workers", "1",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "EFFNET_HOST": "127.0.0.1",
        "EFFNET_DRAIN_TIMEOUT_S": str(DRAIN_S),
        **({"EFFNET_CACHE_URL": cache_url} if cache_url else {}),
    }
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    return Replica(process, log_path, http_port, grpc_port)


def start_nginx(nginx: str, prefix: Path, replicas: list[Replica]) -> tuple[Process, int, int]:
    http_port, grpc_port = free_ports(2)
    conf = nginx_setup.write_prefix(
        prefix, http_port, grpc_port, [r.http_port for r in replicas], [r.grpc_port for r in replicas]
    )
    checked = nginx_setup.check_config(nginx, prefix, conf)
    assert checked.returncode == 0, checked.stderr
    log_path = prefix / "logs" / "access.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [nginx, "-p", str(prefix), "-c", str(conf), "-g", nginx_setup.globals_for(prefix)],
            stdout=log_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return Process(process, log_path), http_port, grpc_port


@pytest.fixture(scope="module")
def topology(deploy_model_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    nginx = nginx_setup.nginx_binary()
    if nginx is None:
        unavailable("nginx is not installed")
    assert nginx is not None
    if not (ROOT / "service" / "__main__.py").exists():
        unavailable("the service has no entry point (service/__main__.py) yet")
    log_dir = tmp_path_factory.mktemp("topology")
    # As compose configures it: lite0 opts in to the response cache, which lives in Redis.
    repository = tmp_path_factory.mktemp("topology-models")
    shutil.copytree(deploy_model_repository / MODEL, repository / MODEL)
    (repository / MODEL / "config.json").write_text(json.dumps({"response_cache": True}))
    redis = RedisProcess(tmp_path_factory.mktemp("topology-redis")).start()
    # nginx workers run unprivileged when started as root: the prefix must be traversable by them.
    prefix = Path(tempfile.mkdtemp(prefix="effnet-nginx-"))
    os.chmod(prefix, 0o755)
    replicas = [start_replica(repository, log_dir, i, cache_url=redis.url) for i in range(2)]
    started: list[Process] = list(replicas)
    try:
        for replica in replicas:
            wait_until(replica.ready, 180, "replica ready", replica.log)
        lb, http_port, grpc_port = start_nginx(nginx, prefix, replicas)
        started.append(lb)
        topology = Topology(replicas, lb, http_port, grpc_port, repository, log_dir, redis)

        def lb_up() -> bool:
            try:
                return httpx.get(f"{topology.url}/lb/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(
            lb_up, 15, "nginx listening", lambda: lb.log() + (prefix / "logs" / "error.log").read_text()
        )
        yield topology
    finally:
        for process in reversed([*started, *(r for r in replicas if r not in started)]):
            process.stop(timeout=DRAIN_S + 15)
        subprocess.run(["rm", "-rf", str(prefix)], check=False)
        redis.kill()


@pytest.fixture(scope="module")
def photo(real_photos: dict[str, bytes]) -> bytes:
    return real_photos["chelsea"]


def classify(client: httpx.Client, base_url: str, image: bytes) -> httpx.Response:
    return client.post(
        f"{base_url}/classify",
        params={"variant": MODEL, "top_k": 5},
        content=image,
        headers={"Content-Type": "image/jpeg"},
        timeout=HTTP_TIMEOUT_S,
    )


def top_k(response: httpx.Response) -> list[tuple[int, float]]:
    body: dict[str, Any] = response.json()
    assert body["model"] == MODEL
    (result,) = body["results"]
    return [(p["class_id"], p["score"]) for p in result["predictions"]]


def same_answer(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> bool:
    return [c for c, _ in got] == [c for c, _ in want] and all(
        abs(a - b) < 1e-4 for (_, a), (_, b) in zip(got, want, strict=True)
    )


@pytest.fixture(scope="module")
def reference(topology: Topology, photo: bytes) -> list[tuple[int, float]]:
    """The answer each replica gives when asked directly; every answer through nginx must equal it."""
    with httpx.Client() as client:
        answers = []
        for replica in topology.replicas:
            response = classify(client, replica.url, photo)
            assert response.status_code == 200, response.text
            answers.append(top_k(response))
    assert same_answer(answers[0], answers[1]), answers
    assert 281 <= answers[0][0][0] <= 285, f"lite0 (ImageNet weights) should see a cat: {answers[0]}"
    return answers[0]


def test_http_load_spreads_over_both_replicas(
    topology: Topology, photo: bytes, reference: list[tuple[int, float]]
) -> None:
    before = [r.http_requests() for r in topology.replicas]
    n = 40
    with httpx.Client() as client:
        for _ in range(n):
            response = classify(client, topology.url, photo)
            assert response.status_code == 200, response.text
            assert same_answer(top_k(response), reference)
    served = [r.http_requests() - b for r, b in zip(topology.replicas, before, strict=True)]
    assert sum(served) == n, served
    assert min(served) >= n // 4, f"round robin should spread the load: {served}"
    by_addr = topology.upstreams("/classify")
    assert {f"127.0.0.1:{r.http_port}" for r in topology.replicas} <= set(by_addr), by_addr


def health_check(stub: health_pb2_grpc.HealthStub) -> grpc.StatusCode | str:
    try:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=GRPC_TIMEOUT_S)
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return "ok" if reply.status == health_pb2.HealthCheckResponse.SERVING else f"wrong: {reply.status}"


def test_grpc_load_spreads_over_both_replicas(topology: Topology) -> None:
    with grpc.insecure_channel(topology.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        outcomes = Counter(health_check(stub) for _ in range(40))
    assert outcomes == Counter({"ok": 40}), outcomes
    # nginx logs an HTTP/2 stream when it closes it, which can come after the client has its answer.
    path = "/grpc.health.v1.Health/Check"
    until_sync(lambda: sum(topology.upstreams(path).values()) >= 40, 5.0, "nginx's log of all 40 checks")
    by_addr = topology.upstreams(path)
    per_replica = [by_addr[f"127.0.0.1:{r.grpc_port}"] for r in topology.replicas]
    assert sum(per_replica) == 40 and min(per_replica) >= 10, by_addr


def test_a_v2_stream_passes_through_nginx(topology: Topology, photo: bytes) -> None:
    """ModelStreamInfer through the load balancer's stream location: every request on the stream is
    answered once, with its id, by the replica the stream reached."""

    def requests() -> Iterator[v2_pb2.ModelInferRequest]:
        for i in range(12):
            request = v2_pb2.ModelInferRequest(model_name=MODEL, id=f"n{i}")
            request.inputs.add(name="image", datatype="BYTES", shape=[1])
            request.raw_input_contents.append(struct.pack("<I", len(photo)) + photo)
            request.outputs.add(name="probabilities").parameters["classification"].int64_param = 1
            yield request

    with grpc.insecure_channel(topology.grpc_target) as channel:
        stub = v2_pb2_grpc.GRPCInferenceServiceStub(channel)
        answers = list(stub.ModelStreamInfer(requests(), timeout=60))
    assert sorted(a.infer_response.id for a in answers) == sorted(f"n{i}" for i in range(12))
    assert all(not a.error_message and a.infer_response.raw_output_contents for a in answers), answers[0]


SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}


def exported_series(metrics_text: str) -> set[str]:
    """Series names a /metrics page can carry, from its families (even those with no sample yet)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        names.update(f"{family.name}{suffix}" for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


def test_dashboard_metrics_exist_on_a_live_replica(topology: Topology) -> None:
    exported = exported_series(httpx.get(f"{topology.replicas[0].url}/metrics", timeout=5).text)
    assert SERVICE_SERIES <= exported, f"missing from /metrics: {sorted(SERVICE_SERIES - exported)}"
    used = set().union(*(metric_names(q) for q in queries(dashboard())))
    assert used - PROMETHEUS_SERIES <= exported, f"missing from /metrics: {sorted(used - exported)}"


def classify_grpc(
    stub: classifier_pb2_grpc.ClassifierStub, image: bytes, timeout_s: float = HTTP_TIMEOUT_S
) -> list[tuple[int, float]]:
    request = classifier_pb2.ClassifyRequest(model=MODEL, top_k=5, images=[image])
    reply = stub.Classify(request, timeout=timeout_s)
    (result,) = reply.results
    return [(p.class_id, p.score) for p in result.predictions]


@dataclass
class LoadResult:
    outcomes: dict[str, Counter[str]]
    kills: list[float]
    seconds: dict[str, list[float]]  # per protocol, each request's latency (retries included)

    def failed(self) -> dict[str, Counter[str]]:
        return {
            protocol: Counter({kind: n for kind, n in counts.items() if kind != "ok"})
            for protocol, counts in self.outcomes.items()
        }


def run_load(
    topology: Topology,
    photo: bytes,
    reference: list[tuple[int, float]],
    faults: Callable[[], list[float]],
    grpc_timeout_s: float = HTTP_TIMEOUT_S,
) -> LoadResult:
    """HTTP and gRPC workers through nginx, until `faults` (run meanwhile) has returned. The gRPC calls'
    deadline is `grpc_timeout_s` (nginx's bound for a replica follows it)."""
    http_workers, grpc_workers = 4, 2
    outcomes: dict[str, Counter[str]] = {"http": Counter(), "grpc": Counter()}
    seconds: dict[str, list[float]] = {"http": [], "grpc": []}
    lock = threading.Lock()
    stop = threading.Event()

    def record(protocol: str, outcome: str, started: float) -> None:
        with lock:
            outcomes[protocol][outcome] += 1
            seconds[protocol].append(time.monotonic() - started)

    def http_worker() -> None:
        with httpx.Client() as client:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = classify(client, topology.url, photo)
                except httpx.TimeoutException:
                    record("http", "hung", started)
                    continue
                except httpx.HTTPError as error:
                    record("http", f"failed: {type(error).__name__}", started)
                    continue
                if response.status_code == 200:
                    record("http", "ok" if same_answer(top_k(response), reference) else "wrong", started)
                else:
                    record("http", f"failed: {response.status_code} {response.text[:100]}", started)

    def grpc_worker() -> None:
        with grpc.insecure_channel(topology.grpc_target, options=channel_options()) as channel:
            stub = classifier_pb2_grpc.ClassifierStub(channel)
            while not stop.is_set():
                started = time.monotonic()
                try:
                    got = classify_grpc(stub, photo, grpc_timeout_s)
                except grpc.RpcError as error:
                    code = error.code()  # type: ignore[attr-defined]
                    details = error.details()  # type: ignore[attr-defined]
                    failed = f"failed: {code} {details}"
                    record("grpc", "hung" if code == grpc.StatusCode.DEADLINE_EXCEEDED else failed, started)
                    continue
                record("grpc", "ok" if same_answer(got, reference) else "wrong", started)

    threads = [threading.Thread(target=http_worker) for _ in range(http_workers)]
    threads += [threading.Thread(target=grpc_worker) for _ in range(grpc_workers)]
    for thread in threads:
        thread.start()
    try:
        kills = faults()
        time.sleep(2.0)  # load after the last restart, too
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=HTTP_TIMEOUT_S + 10)
    assert not any(t.is_alive() for t in threads), "load workers still running: a request hangs"
    return LoadResult(outcomes, kills, seconds)


KILLS = (0, 1, 0)


def test_killing_replicas_mid_load_fails_no_request(
    topology: Topology, photo: bytes, reference: list[tuple[int, float]]
) -> None:
    """SIGKILL a replica under load, restart it, wait until it is ready; then the other; three times.
    nginx resends HTTP requests that were on the dead replica; gRPC calls that fail at the proxy come
    back UNAVAILABLE and the client's retry policy sends them again: nothing fails."""

    def faults() -> list[float]:
        kills = []
        for index in KILLS:
            time.sleep(3.0)
            victim = topology.replicas[index]
            before = victim.http_requests()
            victim.process.send_signal(signal.SIGKILL)
            kills.append(time.monotonic())
            assert victim.process.wait(10) == -signal.SIGKILL
            assert before > 0, "the victim was serving when it was killed"
            replica = topology.restart(index)
            wait_until(replica.ready, 180, "restarted replica ready", replica.log)
        return kills

    result = run_load(topology, photo, reference, faults)
    print(f"replica kills: {len(result.kills)}; outcomes: {result.outcomes}")
    assert len(result.kills) == len(KILLS)
    for protocol in ("http", "grpc"):
        assert result.outcomes[protocol]["ok"] >= 40, result.outcomes
    assert result.failed() == {"http": Counter(), "grpc": Counter()}, result.outcomes
    # Both restarted replicas take traffic again.
    time.sleep(6)  # nginx's fail_timeout for a replica that failed
    before = [r.http_requests() for r in topology.replicas]
    with httpx.Client() as client:
        for _ in range(20):
            assert classify(client, topology.url, photo).status_code == 200
    served = [r.http_requests() - b for r, b in zip(topology.replicas, before, strict=True)]
    assert min(served) > 0, served


FREEZE_S = 6.0
FAILOVER_S = 2.0


def test_a_frozen_replica_holds_its_requests_about_a_second(
    topology: Topology, photo: bytes, reference: list[tuple[int, float]]
) -> None:
    """SIGSTOP a replica under load for several seconds, then SIGCONT: the requests it held move to the
    other replica when nginx's bound (1 s for a request without a deadline) passes, and it is marked
    down meanwhile; none fails and none takes more than 2 s, over HTTP and gRPC. A request with a long
    deadline goes through the longer bound's location unchanged (path and body)."""
    victim = topology.replicas[0]
    held_before = victim.http_requests()

    def faults() -> list[float]:
        time.sleep(2.0)
        victim.process.send_signal(signal.SIGSTOP)
        frozen = time.monotonic()
        try:
            time.sleep(FREEZE_S)
        finally:
            victim.process.send_signal(signal.SIGCONT)
        return [frozen]

    # gRPC calls with a deadline under 6 s, as HTTP requests without one, get nginx's 1 s bound.
    result = run_load(topology, photo, reference, faults, grpc_timeout_s=5.0)
    slowest = {protocol: max(values) for protocol, values in result.seconds.items()}
    over = {protocol: sum(s > 1.0 for s in values) for protocol, values in result.seconds.items()}
    print(f"freeze {FREEZE_S:g} s: outcomes {result.outcomes}; slowest {slowest}; over 1 s {over}")
    assert held_before > 0
    for protocol in ("http", "grpc"):
        assert result.outcomes[protocol]["ok"] >= 20, result.outcomes
    assert result.failed() == {"http": Counter(), "grpc": Counter()}, result.outcomes
    assert max(slowest.values()) < FAILOVER_S, slowest
    assert sum(over.values()) >= 1, "no request met the frozen replica: the test froze nothing in use"

    with httpx.Client() as client:
        long = client.post(
            f"{topology.url}/classify",
            params={"variant": MODEL, "top_k": 5, "timeout_ms": 20_000},
            content=photo,
            headers={"Content-Type": "image/jpeg"},
            timeout=HTTP_TIMEOUT_S,
        )
    assert long.status_code == 200 and same_answer(top_k(long), reference), long.text
    with grpc.insecure_channel(topology.grpc_target) as channel:
        stub = classifier_pb2_grpc.ClassifierStub(channel)
        request = classifier_pb2.ClassifyRequest(model=MODEL, top_k=5, images=[photo])
        for timeout in (8.0, 45.0):  # nginx's 5 s and 20 s locations
            reply = stub.Classify(request, timeout=timeout)
            assert same_answer([(p.class_id, p.score) for p in reply.results[0].predictions], reference)


def test_replicas_share_answers_through_redis(topology: Topology, real_photos: dict[str, bytes]) -> None:
    """An image one replica answered is a cache hit on the other: one Redis, shared."""
    image = real_photos["coffee"]
    with httpx.Client() as client:
        first = classify(client, topology.replicas[0].url, image)
        second = classify(client, topology.replicas[1].url, image)
    assert first.status_code == second.status_code == 200, first.text
    assert first.json()["cached"] is False and second.json()["cached"] is True
    assert same_answer(top_k(second), top_k(first))


def test_killing_redis_mid_load_fails_no_request(
    topology: Topology, photo: bytes, reference: list[tuple[int, float]]
) -> None:
    """Redis SIGKILLed under load and restarted: every request is answered, and correctly (without the
    cache while it is gone); afterwards the replicas answer from it again."""

    def faults() -> list[float]:
        time.sleep(2.0)
        topology.redis.kill()
        killed = time.monotonic()
        time.sleep(3.0)
        topology.redis.start()
        return [killed]

    result = run_load(topology, photo, reference, faults)
    print(f"redis killed once; outcomes: {result.outcomes}")
    assert result.failed() == {"http": Counter(), "grpc": Counter()}, result.outcomes
    assert sum(result.outcomes["http"].values()) >= 20
    logs = "".join(replica.log() for replica in topology.replicas)
    assert "cache_unavailable" in logs and "cache_available" in logs

    def cached_again() -> bool:
        with httpx.Client() as client:
            answers = [classify(client, replica.url, photo) for replica in topology.replicas]
        return all(a.status_code == 200 and a.json()["cached"] for a in answers)

    wait_until(cached_again, 30, "both replicas answering from Redis again", lambda: logs)


def test_surviving_replica_stops_gracefully(topology: Topology) -> None:
    survivor = topology.replicas[1]
    started = time.monotonic()
    assert survivor.stop(signal.SIGTERM, timeout=DRAIN_S + 15) == 0, survivor.log()[-4000:]
    assert time.monotonic() - started < DRAIN_S + 15
