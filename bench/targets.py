"""What the load generator sends to: one class per protocol, each with `send(i) -> status`.

`send` takes an index into the target's payloads (requests cycle through them) and returns "ok" or
the failure's status (HTTP status number, gRPC code name). Transport errors become "error:<Type>".
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import aiohttp
import grpc
import numpy as np

from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc
from service._generated.inference import grpc_service_pb2 as v2_pb2
from service._generated.inference import grpc_service_pb2_grpc as v2_pb2_grpc

_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
REQUEST_TIMEOUT_S = 30.0


class Target(Protocol):
    name: str

    async def open(self, concurrency: int) -> None: ...

    async def send(self, index: int) -> str: ...

    async def close(self) -> None: ...


class HttpClassify:
    """`POST /classify?variant=M` with a raw JPEG body (both our service and the naive server)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        bodies: Sequence[bytes],
        name: str = "http",
        timings: bool = False,
        *,
        path: str = "/classify",
        params: dict[str, str] | None = None,
    ) -> None:
        """`timings`: keep each answer's own `timings.inference_ms` (our service's answers have them).
        `path` and `params`: another endpoint of the same shape (/embed) or more query parameters."""
        self.name = name
        self._url = f"{base_url}{path}"
        self._params = {"variant": model, **(params or {})}
        self._bodies = list(bodies)
        self._session: aiohttp.ClientSession | None = None
        self._timings = timings
        self.inference_ms: list[float] = []

    async def open(self, concurrency: int) -> None:
        connector = aiohttp.TCPConnector(limit=max(concurrency, 1), force_close=False)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)

    async def send(self, index: int) -> str:
        assert self._session is not None
        body = self._bodies[index % len(self._bodies)]
        try:
            async with self._session.post(
                self._url, params=self._params, data=body, headers={"Content-Type": "image/jpeg"}
            ) as response:
                body = await response.read()
                if response.status != 200:
                    return str(response.status)
                if self._timings:
                    self.inference_ms.append(float(json.loads(body)["timings"]["inference_ms"]))
                return "ok"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"error:{type(exc).__name__}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class _GrpcTarget:
    def __init__(self, address: str, name: str) -> None:
        self.name = name
        self._address = address
        self.channel: grpc.aio.Channel | None = None

    async def open(self, concurrency: int) -> None:
        self.channel = grpc.aio.insecure_channel(self._address, options=_GRPC_OPTIONS)
        await self.channel.channel_ready()

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    @staticmethod
    def _status(exc: grpc.aio.AioRpcError) -> str:
        return exc.code().name


class GrpcClassify(_GrpcTarget):
    """Our `effnet.v1.Classifier/Classify` with one encoded image per request."""

    def __init__(self, address: str, model: str, bodies: Sequence[bytes], name: str = "grpc") -> None:
        super().__init__(address, name)
        self._requests = [classifier_pb2.ClassifyRequest(model=model, images=[b], top_k=5) for b in bodies]
        self._stub: classifier_pb2_grpc.ClassifierStub | None = None

    async def open(self, concurrency: int) -> None:
        await super().open(concurrency)
        self._stub = classifier_pb2_grpc.ClassifierStub(self.channel)

    async def send(self, index: int) -> str:
        assert self._stub is not None
        try:
            await self._stub.Classify(self._requests[index % len(self._requests)], timeout=REQUEST_TIMEOUT_S)
            return "ok"
        except grpc.aio.AioRpcError as exc:
            return self._status(exc)


def v2_pixels_request(model: str, pixels: np.ndarray) -> v2_pb2.ModelInferRequest:
    """V2 ModelInfer with ready uint8 pixels [1, 3, S, S] and the top-5 classification output."""
    batch = np.ascontiguousarray(pixels[np.newaxis] if pixels.ndim == 3 else pixels, dtype=np.uint8)
    request = v2_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="pixels", datatype="UINT8", shape=list(batch.shape))
    del tensor
    _classification_output(request)
    request.raw_input_contents.append(batch.tobytes())
    return request


def v2_image_request(model: str, body: bytes) -> v2_pb2.ModelInferRequest:
    """V2 ModelInfer with one encoded image as a BYTES [1] tensor (the server preprocesses it)."""
    request = v2_pb2.ModelInferRequest(model_name=model)
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    _classification_output(request)
    request.raw_input_contents.append(struct.pack("<I", len(body)) + body)
    return request


def _classification_output(request: v2_pb2.ModelInferRequest) -> None:
    output = request.outputs.add(name="probabilities")
    output.parameters["classification"].int64_param = 5


class V2Infer(_GrpcTarget):
    """Open Inference Protocol `ModelInfer` over gRPC, with prepared requests (pixels or image)."""

    def __init__(self, address: str, requests: Sequence[v2_pb2.ModelInferRequest], name: str) -> None:
        super().__init__(address, name)
        self._requests = list(requests)
        self._stub: v2_pb2_grpc.GRPCInferenceServiceStub | None = None

    async def open(self, concurrency: int) -> None:
        await super().open(concurrency)
        self._stub = v2_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    async def send(self, index: int) -> str:
        assert self._stub is not None
        try:
            await self._stub.ModelInfer(
                self._requests[index % len(self._requests)], timeout=REQUEST_TIMEOUT_S
            )
            return "ok"
        except grpc.aio.AioRpcError as exc:
            return self._status(exc)


class V2Stream(_GrpcTarget):
    """Open Inference Protocol `ModelStreamInfer` (Triton's streaming RPC): each client's request goes
    out on a shared stream, one stream per `clients_per_stream` clients, with an id of its own, and
    waits for the answer that carries it. A failed request's status is the first word of its
    `error_message`; a broken stream fails the requests waiting on it with its gRPC status."""

    def __init__(
        self,
        address: str,
        requests: Sequence[v2_pb2.ModelInferRequest],
        name: str,
        clients_per_stream: int = 32,
    ) -> None:
        super().__init__(address, name)
        self._requests = list(requests)
        self._clients_per_stream = clients_per_stream
        self._ids = itertools.count()
        self._outgoing: list[asyncio.Queue[v2_pb2.ModelInferRequest | None]] = []
        self._waiting: list[dict[str, asyncio.Future[str]]] = []
        self._readers: list[asyncio.Task[None]] = []

    async def open(self, concurrency: int) -> None:
        await super().open(concurrency)
        stub = v2_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        for _ in range(max(1, math.ceil(concurrency / self._clients_per_stream))):
            outgoing: asyncio.Queue[v2_pb2.ModelInferRequest | None] = asyncio.Queue()
            waiting: dict[str, asyncio.Future[str]] = {}
            call = stub.ModelStreamInfer(self._sent(outgoing))
            self._outgoing.append(outgoing)
            self._waiting.append(waiting)
            self._readers.append(asyncio.create_task(self._read(call, waiting)))

    @staticmethod
    async def _sent(
        outgoing: asyncio.Queue[v2_pb2.ModelInferRequest | None],
    ) -> AsyncIterator[v2_pb2.ModelInferRequest]:
        while (request := await outgoing.get()) is not None:
            yield request

    @staticmethod
    async def _read(call: grpc.aio.StreamStreamCall, waiting: dict[str, asyncio.Future[str]]) -> None:
        status = "error:stream ended"
        try:
            async for answer in call:
                future = waiting.pop(answer.infer_response.id, None)
                if future is not None and not future.done():
                    error = answer.error_message
                    future.set_result(error.split(":", 1)[0] if error else "ok")
        except grpc.aio.AioRpcError as exc:
            status = exc.code().name
        for future in waiting.values():
            if not future.done():
                future.set_result(status)
        waiting.clear()

    async def send(self, index: int) -> str:
        request_id = f"r{next(self._ids)}"
        request = v2_pb2.ModelInferRequest()
        request.CopyFrom(self._requests[index % len(self._requests)])
        request.id = request_id
        lane = index % len(self._outgoing)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[lane][request_id] = future
        await self._outgoing[lane].put(request)
        try:
            return await asyncio.wait_for(future, REQUEST_TIMEOUT_S)
        except TimeoutError:
            self._waiting[lane].pop(request_id, None)
            return "error:TimeoutError"

    async def close(self) -> None:
        for outgoing in self._outgoing:
            await outgoing.put(None)
        if self._readers:
            await asyncio.wait(self._readers, timeout=REQUEST_TIMEOUT_S)
        for reader in self._readers:
            reader.cancel()
        await super().close()
