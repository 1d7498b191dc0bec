"""The chaos run's load generator: HTTP /classify and gRPC Classify (with the published retry policy)
through nginx, over several models, each answer checked against a reference."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import grpc
import httpx

from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc
from service.client.retry_policy import channel_options

CLIENT_TIMEOUT_S = 60.0
Answer = list[tuple[int, float]]


@dataclass(frozen=True)
class Record:
    started: float
    finished: float
    protocol: str
    model: str
    outcome: str  # right | wrong | clean_error | lost
    detail: str = ""

    @property
    def latency_s(self) -> float:
        return self.finished - self.started


def answer_matches(model: str, got: Answer, want: Answer, exact_models: frozenset[str]) -> bool:
    """Real-weight models: the same top-5 classes and scores. Random-weight ones have a near-uniform
    softmax whose order among ties can change with the batch, so only the top score is compared."""
    if model in exact_models:
        return [c for c, _ in got] == [c for c, _ in want] and all(
            abs(a - b) < 1e-3 for (_, a), (_, b) in zip(got, want, strict=True)
        )
    return bool(got) and abs(got[0][1] - want[0][1]) < 1e-3


@dataclass
class LoadGenerator:
    http_url: str
    grpc_target: str
    image: bytes
    references: dict[str, Answer]
    exact_models: frozenset[str]
    http_workers: int = 4
    grpc_workers: int = 2
    seed: int = 0
    records: list[Record] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _record(self, record: Record) -> None:
        with self._lock:
            self.records.append(record)

    def _judge(self, model: str, got: Answer) -> str:
        return "right" if answer_matches(model, got, self.references[model], self.exact_models) else "wrong"

    def _http(self, worker: int) -> None:
        rng = random.Random(self.seed * 1000 + worker)
        models = sorted(self.references)
        with httpx.Client(timeout=CLIENT_TIMEOUT_S) as client:
            while not self._stop.is_set():
                model = rng.choice(models)
                started = time.monotonic()
                try:
                    response = client.post(
                        f"{self.http_url}/classify",
                        params={"variant": model, "top_k": 5},
                        content=self.image,
                        headers={"Content-Type": "image/jpeg"},
                    )
                except httpx.HTTPError as error:  # no answer: timed out, reset, refused
                    self._record(
                        Record(started, time.monotonic(), "http", model, "lost", type(error).__name__)
                    )
                    continue
                finished = time.monotonic()
                if response.status_code == 200:
                    (result,) = response.json()["results"]
                    got = [(p["class_id"], p["score"]) for p in result["predictions"]]
                    self._record(Record(started, finished, "http", model, self._judge(model, got)))
                else:
                    try:
                        code = response.json()["error"]["code"]
                    except (ValueError, KeyError, TypeError):
                        code = "nginx"
                    detail = f"http {response.status_code} {code}"
                    self._record(Record(started, finished, "http", model, "clean_error", detail))

    def _grpc(self, worker: int) -> None:
        rng = random.Random(self.seed * 1000 + 500 + worker)
        models = sorted(self.references)
        with grpc.insecure_channel(self.grpc_target, options=channel_options()) as channel:
            stub = classifier_pb2_grpc.ClassifierStub(channel)
            while not self._stop.is_set():
                model = rng.choice(models)
                request = classifier_pb2.ClassifyRequest(model=model, top_k=5, images=[self.image])
                started = time.monotonic()
                try:
                    reply = stub.Classify(request, timeout=CLIENT_TIMEOUT_S)
                except grpc.RpcError as error:
                    code = error.code()  # type: ignore[attr-defined]
                    outcome = "lost" if code == grpc.StatusCode.DEADLINE_EXCEEDED else "clean_error"
                    detail = f"grpc {code.name}: {error.details()}"  # type: ignore[attr-defined]
                    self._record(Record(started, time.monotonic(), "grpc", model, outcome, detail[:120]))
                    continue
                (result,) = reply.results
                got = [(p.class_id, p.score) for p in result.predictions]
                self._record(Record(started, time.monotonic(), "grpc", model, self._judge(model, got)))

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._http, args=(i,), daemon=True) for i in range(self.http_workers)
        ]
        self._threads += [
            threading.Thread(target=self._grpc, args=(i,), daemon=True) for i in range(self.grpc_workers)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self) -> bool:
        """Stop and wait for the requests in flight; False if some never came back."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=CLIENT_TIMEOUT_S + 10)
        return not any(thread.is_alive() for thread in self._threads)
