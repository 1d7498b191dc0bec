"""The simulated Deployment: real server processes as pods, each in its own CPU slice (slices.py),
behind the real nginx of `make chaos` (the repository's nginx.conf and upstreams.conf, loopback
addresses). A pod joins nginx's upstreams only once /readyz answers 200 (the Endpoints controller);
a pod scaled away leaves the upstreams first, then gets the preStop pause and SIGTERM, and the server
drains what it holds (the kubelet's termination sequence). nginx is reloaded with SIGHUP: old workers
finish their requests, new ones use the new list."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy import nginx_setup
from tests.deploy.test_topology import Process
from tests.scale.slices import CpuSlice, Hierarchy

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"


@dataclass
class Sample:
    at: float
    cpu_s: float
    load_integral: dict[str, float]  # effnet_load_ratio_seconds_total by model


@dataclass
class Pod:
    index: int
    http_port: int
    grpc_port: int
    slice: CpuSlice
    process: subprocess.Popen[bytes]
    log_path: Path
    created: float
    ready_at: float | None = None
    leaving_at: float | None = None
    gone_at: float | None = None
    samples: list[Sample] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    def scrape(self, client: httpx.Client) -> Sample:
        cpu = self.slice.usage_s()
        text = client.get(f"{self.url}/metrics", timeout=5).text
        integral: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "effnet_load_ratio_seconds_total":
                    integral[sample.labels["model"]] = sample.value
        found = Sample(time.monotonic(), cpu, integral)
        self.samples.append(found)
        return found

    def window(self, seconds: float) -> tuple[Sample, Sample] | None:
        """The newest sample and the newest one at least `seconds` older (what rate() spans)."""
        if len(self.samples) < 2:
            return None
        last = self.samples[-1]
        older = [s for s in self.samples[:-1] if last.at - s.at >= seconds * 0.9]
        return (older[-1], last) if older else None


class Cluster:
    def __init__(
        self,
        hierarchy: Hierarchy,
        repository: Path,
        models: str,
        millicores: int,
        period_us: int,
        work: Path,
        nginx_http: int,
        nginx_grpc: int,
        pre_stop_s: float,
        startup_millicores: int = 0,
    ) -> None:
        self.hierarchy = hierarchy
        self.repository = repository
        self.models = models
        self.millicores = millicores
        self.period_us = period_us
        self.work = work
        self.nginx_http = nginx_http
        self.nginx_grpc = nginx_grpc
        self.pre_stop_s = pre_stop_s
        self.startup_millicores = startup_millicores or millicores
        self.pods: list[Pod] = []
        self._next = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.nginx: Process | None = None
        self.prefix = work / "nginx"

    # ------------------------------------------------------------------------------------- pods
    def create_pod(self) -> Pod:
        index = self._next
        self._next += 1
        http_port, grpc_port = 8300 + index, 8600 + index
        # A startup CPU boost (as GKE's kube-startup-cpu-boost does, with in-place resize): the pod loads
        # its models on `startup_millicores` and gets its limit when ready. Without it, loading at 200m
        # takes longer than the compressed ramp allows for. Its weight stays its request's: on a node
        # with room for the boost, a starting pod takes nothing from its neighbours; on this machine,
        # which has none, it gets what they leave, instead of slowing the pods that serve.
        cpu_slice = CpuSlice(
            self.hierarchy, f"pod-{index}", self.startup_millicores, self.period_us, self.millicores
        )
        log_path = self.work / f"pod-{index}.log"
        server = [
            sys.executable,
            "-m",
            "service",
            "serve",
            "--repository",
            str(self.repository),
            "--models",
            self.models,
            "--host",
            HOST,
            "--http-port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
            "--intra-op-threads",
            "1",
            "--preprocess-workers",
            "1",
        ]
        procs = [cpu_slice.cpu_dir / "cgroup.procs", cpu_slice.usage_dir / "cgroup.procs"]
        # The shell joins the slice, then becomes the server: everything it runs, loading included, is inside.
        joins = " && ".join(f"echo $$ > {p}" for p in dict.fromkeys(procs))
        command = ["sh", "-c", f'{joins} && exec "$@"', "pod", *server]
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            # A pod of a fraction of a core runs one batch at a time; drain within the grace period.
            "EFFNET_INSTANCES": "1",
            "EFFNET_DRAIN_TIMEOUT_S": "20",
        }
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        pod = Pod(index, http_port, grpc_port, cpu_slice, process, log_path, time.monotonic())
        with self._lock:
            self.pods.append(pod)
        self._spawn(self._become_ready, pod)
        return pod

    def _become_ready(self, pod: Pod) -> None:
        with httpx.Client() as client:
            while pod.leaving_at is None and pod.process.poll() is None:
                try:
                    if client.get(f"{pod.url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
            else:
                return
        with self._lock:
            if pod.leaving_at is not None:
                return
            pod.slice.set_limit(self.millicores)
            pod.ready_at = time.monotonic()
            self._reload_nginx()

    def remove_pod(self, pod: Pod) -> None:
        with self._lock:
            pod.leaving_at = time.monotonic()
            if pod.ready_at is not None:
                self._reload_nginx()
        self._spawn(self._terminate, pod)

    def _terminate(self, pod: Pod) -> None:
        if pod.ready_at is not None:
            time.sleep(self.pre_stop_s)  # preStop: endpoints and proxies forget the pod first
        if pod.process.poll() is None:
            pod.process.send_signal(signal.SIGTERM)
            try:
                pod.process.wait(45)
            except subprocess.TimeoutExpired:
                pod.process.kill()
                pod.process.wait()
        pod.gone_at = time.monotonic()
        pod.slice.remove()

    def _spawn(self, target: object, pod: Pod) -> None:
        thread = threading.Thread(target=target, args=(pod,), daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def serving(self) -> list[Pod]:
        with self._lock:
            return [p for p in self.pods if p.ready_at is not None and p.leaving_at is None]

    def members(self) -> list[Pod]:
        """The Deployment's pods: created and not being removed (ready or not)."""
        with self._lock:
            return [p for p in self.pods if p.leaving_at is None]

    def scale_to(self, replicas: int) -> None:
        members = self.members()
        for _ in range(replicas - len(members)):
            self.create_pod()
        if replicas < len(members):
            # A ReplicaSet deletes pods that are not ready first, then the newest.
            order = sorted(members, key=lambda p: (p.ready_at is not None, -p.created))
            for pod in order[: len(members) - replicas]:
                self.remove_pod(pod)

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while any(p.ready_at is None for p in self.members()):
            for pod in self.members():
                if pod.process.poll() is not None:
                    raise RuntimeError(f"pod {pod.index} exited:\n{pod.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("pods not ready in time")
            time.sleep(0.2)

    # ------------------------------------------------------------------------------------ nginx
    def _upstreams(self) -> tuple[list[int], list[int]]:
        pods = [p for p in self.pods if p.ready_at is not None and p.leaving_at is None]
        return [p.http_port for p in pods], [p.grpc_port for p in pods]

    def start_nginx(self) -> None:
        nginx = nginx_setup.nginx_binary()
        if nginx is None:
            raise SystemExit("nginx is not installed (make scale-sim installs it)")
        with self._lock:
            http, grpc = self._upstreams()
            conf = nginx_setup.write_prefix(self.prefix, self.nginx_http, self.nginx_grpc, http, grpc)
        checked = nginx_setup.check_config(nginx, self.prefix, conf)
        if checked.returncode != 0:
            raise RuntimeError(checked.stderr)
        log_path = self.prefix / "logs" / "access.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [nginx, "-p", str(self.prefix), "-c", str(conf), "-g", nginx_setup.globals_for(self.prefix)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.nginx = Process(process, log_path)

    def _reload_nginx(self) -> None:
        """Rewrite the upstream groups from the serving pods and reload (lock held)."""
        if self.nginx is None:
            return
        http, grpc = self._upstreams()
        text = (nginx_setup.NGINX_DIR / "upstreams.conf").read_text()
        upstreams = nginx_setup.loopback_upstreams(
            text, {nginx_setup.HTTP_PORT: http, nginx_setup.GRPC_PORT: grpc}
        )
        (self.prefix / "upstreams.conf").write_text(upstreams)
        self.nginx.process.send_signal(signal.SIGHUP)

    def upstream_503s(self) -> int:
        """Answers of 503 from a pod that nginx passed on to another (its access log's upstream statuses)."""
        if self.nginx is None:
            return 0
        count = 0
        for line in self.nginx.log().splitlines():
            found = re.search(r"ustatus=(.*?) urt=", line)
            if found:
                count += sum(s.strip() == "503" for s in re.split(r"[,:]", found[1]))
        return count

    def stop(self) -> None:
        for pod in self.pods:
            if pod.process.poll() is None:
                pod.process.send_signal(signal.SIGTERM)
        for pod in self.pods:
            try:
                pod.process.wait(30)
            except subprocess.TimeoutExpired:
                pod.process.kill()
            pod.gone_at = pod.gone_at or time.monotonic()
            pod.slice.remove()
        if self.nginx is not None:
            self.nginx.stop(timeout=10)
