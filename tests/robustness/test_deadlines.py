"""Deadlines and cancellation, in process: a request that waited past its deadline never runs; a
client that disconnects (HTTP) or cancels (gRPC) frees its queue slot at once."""

from __future__ import annotations

import asyncio

import grpc
import httpx

from service._generated.effnet.v1 import classifier_pb2 as pb
from service._generated.effnet.v1 import classifier_pb2_grpc as pb_grpc
from tests.robustness.conftest import TINY, InProcess
from tests.tiny_model import png
from tests.waiting import until


async def _hold_runner(inprocess: InProcess, client: httpx.AsyncClient) -> asyncio.Task[httpx.Response]:
    """Start a request whose batch blocks in the runner until the gate opens."""
    inprocess.runner.gate.clear()
    inprocess.runner.entered.clear()
    task = asyncio.create_task(
        client.post(f"{inprocess.http_url}/classify?variant={TINY}&top_k=1", content=png())
    )
    await until(inprocess.runner.entered.is_set, what="the first batch to reach the runner")
    return task


async def test_expired_request_is_never_run(inprocess: InProcess) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        holder = await _hold_runner(inprocess, client)
        late = await client.post(
            f"{inprocess.http_url}/classify",
            params={"variant": TINY, "top_k": 1, "timeout_ms": 200},
            content=png((10, 200, 10)),
        )
        assert late.status_code == 504, late.text
        assert late.json()["error"]["code"] == "deadline_exceeded"
        assert inprocess.batcher.queue_depth == 0
        inprocess.runner.gate.set()
        assert (await holder).status_code == 200
    # One batch of one image ran: the expired one never reached the runner.
    assert inprocess.runner.batch_sizes == [1]
    assert inprocess.metric("effnet_batch_size_sum", model=TINY) == 1
    assert inprocess.metric("effnet_batch_size_count", model=TINY) == 1
    assert inprocess.metric("effnet_expired_total", model=TINY) == 1
    assert inprocess.batcher.items_expired == 1


async def test_http_disconnect_frees_the_slot(inprocess: InProcess) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        holder = await _hold_runner(inprocess, client)
        async with httpx.AsyncClient(timeout=0.5) as impatient:
            try:
                await impatient.post(f"{inprocess.http_url}/classify?variant={TINY}&top_k=1", content=png())
            except httpx.ReadTimeout:
                pass
            else:
                raise AssertionError("the request should still be queued behind the held batch")
        # The client is gone (connection closed): its queued item must go while the runner is still held.
        await until(lambda: inprocess.batcher.queue_depth == 0, within_s=5, what="the slot to be freed")
        assert inprocess.batcher.items_cancelled == 1
        inprocess.runner.gate.set()
        assert (await holder).status_code == 200
        after = await client.post(f"{inprocess.http_url}/classify?variant={TINY}&top_k=1", content=png())
        assert after.status_code == 200
    assert inprocess.runner.batch_sizes == [1, 1]


async def test_grpc_cancel_frees_the_slot(inprocess: InProcess) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        holder = await _hold_runner(inprocess, client)
        async with grpc.aio.insecure_channel(inprocess.grpc_address) as channel:
            stub = pb_grpc.ClassifierStub(channel)
            call = stub.Classify(pb.ClassifyRequest(model=TINY, top_k=1, images=[png(), png()]), timeout=30)
            await until(lambda: inprocess.batcher.queue_depth == 2, what="the gRPC request to queue")
            call.cancel()
            await until(lambda: inprocess.batcher.queue_depth == 0, within_s=5, what="the slots to free")
            assert inprocess.batcher.items_cancelled == 2
            # A deadline shorter than the wait: DEADLINE_EXCEEDED, slot freed, never run.
            try:
                await stub.Classify(pb.ClassifyRequest(model=TINY, top_k=1, images=[png()]), timeout=0.3)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            else:
                raise AssertionError("expected DEADLINE_EXCEEDED")
            await until(lambda: inprocess.batcher.queue_depth == 0, within_s=5, what="the slot to free")
            inprocess.runner.gate.set()
            assert (await holder).status_code == 200
            response = await stub.Classify(
                pb.ClassifyRequest(model=TINY, top_k=1, images=[png()]), timeout=30
            )
            assert len(response.results) == 1
    assert inprocess.runner.batch_sizes == [1, 1]
