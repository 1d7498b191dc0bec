"""`python -m service classify PATH... [--model b3] [--grpc|--http] [--url URL] [--concurrency N]
[--output results.jsonl|results.csv]`: classify image files and folders (recursively) with a running
server, N requests at once, with a progress bar on a terminal and a summary at the end.

One request per image, so one bad file fails alone: the run goes on, and the summary lists every
failure with the server's reason. Exit status: 0 when every image was classified, 1 when any failed,
2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Protocol

import grpc
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc
from service.client.report import Outcome, Writer, render, summarise
from service.client.retry_policy import channel_options

DEFAULT_HTTP_URL = "http://127.0.0.1:8000"
DEFAULT_GRPC_URL = "127.0.0.1:8001"
# The server's levels (service/runtime/priorities.py); a bulk job yields to interactive requests.
PRIORITIES = ("high", "normal", "low")
BULK_PRIORITY = "low"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
TABLE_LIMIT = 50  # without --output, print a table of results for at most this many images
OVERLOAD_RETRIES = 3  # an overloaded server says when to come back; a bulk client should listen
MAX_RETRY_WAIT_S = 5.0


class Failure(Exception):
    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


class Transport(Protocol):
    async def classify(self, data: bytes, name: str) -> Outcome: ...

    async def close(self) -> None: ...


class HttpTransport:
    def __init__(
        self,
        url: str,
        model: str | None,
        top_k: int,
        timeout: float,
        headers: dict[str, str],
        priority: str = BULK_PRIORITY,
    ):
        self._url = f"{url.rstrip('/')}/classify"
        self._params: dict[str, str | int] = {"top_k": top_k, **({"variant": model} if model else {})}
        self._params["priority"] = priority
        self._client = httpx.AsyncClient(
            timeout=timeout, headers={**headers, "Content-Type": "application/octet-stream"}
        )

    async def classify(self, data: bytes, name: str) -> Outcome:
        response = await self._client.post(self._url, params=self._params, content=data)
        if response.status_code != 200:
            try:
                error = response.json()["error"]
                code, message = error["code"], error["message"]
            except (ValueError, KeyError, TypeError):
                code, message = "http_error", response.text[:200]
            retry = response.headers.get("retry-after")
            wait = float(retry) if response.status_code == 503 and retry is not None else None
            raise Failure(code, f"HTTP {response.status_code}: {message}", wait)
        body = response.json()
        return Outcome(
            path=name, ok=True, model=body["model"], version=body.get("version"), weights=body.get("weights"),
            predictions=body["results"][0]["predictions"], timings=body.get("timings", {}),
            route=body.get("route"),
        )  # fmt: skip

    async def close(self) -> None:
        await self._client.aclose()


class GrpcTransport:
    def __init__(
        self,
        address: str,
        model: str | None,
        top_k: int,
        timeout: float,
        headers: dict[str, str],
        priority: str = BULK_PRIORITY,
    ):
        self._channel = grpc.aio.insecure_channel(address, options=channel_options())
        self._stub = classifier_pb2_grpc.ClassifierStub(self._channel)
        self._model, self._top_k, self._timeout = model or "", top_k, timeout
        self._priority = priority
        self._metadata = tuple((key.lower(), value) for key, value in headers.items())

    async def classify(self, data: bytes, name: str) -> Outcome:
        request = classifier_pb2.ClassifyRequest(
            model=self._model, top_k=self._top_k, images=[data], priority=self._priority
        )
        try:
            reply = await self._stub.Classify(request, timeout=self._timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            trailing = dict(exc.trailing_metadata() or ())
            retry = trailing.get("retry-after")
            code = exc.code()
            wait = float(retry) if retry and code is grpc.StatusCode.RESOURCE_EXHAUSTED else None
            raise Failure(code.name.lower(), f"gRPC {code.name}: {exc.details()}", wait) from exc
        timings = reply.timings
        return Outcome(
            path=name, ok=True, model=reply.model, version=reply.version, weights=reply.weights,
            predictions=[
                {"class_id": p.class_id, "label": p.label, "score": p.score}
                for p in reply.results[0].predictions
            ],
            timings={
                "preprocess_ms": timings.preprocess_ms, "queue_ms": timings.queue_ms,
                "inference_ms": timings.inference_ms, "total_ms": timings.total_ms,
            },
        )  # fmt: skip

    async def close(self) -> None:
        await self._channel.close()


def find_images(paths: list[Path]) -> tuple[list[Path], list[str]]:
    """Files as given (whatever their suffix: the server judges them), and the image files under each
    folder, recursively, sorted. Returns (images, paths that do not exist)."""
    images: list[Path] = []
    missing: list[str] = []
    for path in paths:
        if path.is_dir():
            images.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            )
        elif path.is_file():
            images.append(path)
        else:
            missing.append(str(path))
    return list(dict.fromkeys(images)), missing  # a file named twice is classified once


async def classify_one(transport: Transport, path: Path) -> Outcome:
    """Never raises for a problem with this image or its request: the outcome records it."""
    start = time.monotonic()
    name = str(path)
    try:
        data = await asyncio.to_thread(path.read_bytes)
    except OSError as exc:
        return Outcome(name, ok=False, error_code="unreadable", error=f"cannot read the file: {exc}")
    outcome: Outcome | None = None
    for attempt in range(OVERLOAD_RETRIES + 1):
        try:
            outcome = await transport.classify(data, name)
        except Failure as exc:
            if exc.retry_after is not None and attempt < OVERLOAD_RETRIES:
                await asyncio.sleep(min(exc.retry_after, MAX_RETRY_WAIT_S))
                continue
            outcome = Outcome(name, ok=False, error_code=exc.code, error=exc.message)
        except httpx.HTTPError as exc:
            outcome = Outcome(name, ok=False, error_code="network", error=f"{type(exc).__name__}: {exc}")
        except (ValueError, KeyError, IndexError, TypeError) as exc:  # a 200 that is not our answer
            outcome = Outcome(name, ok=False, error_code="bad_response", error=f"unexpected answer: {exc!r}")
        break
    assert outcome is not None
    outcome.seconds = round(time.monotonic() - start, 4)
    return outcome


async def classify_all(
    connect: Callable[[], Transport], images: list[Path], concurrency: int, done: Callable[[Outcome], None]
) -> list[Outcome]:
    """`concurrency` workers take the images in order; `done` sees each outcome as it arrives."""
    transport = connect()  # inside the event loop: gRPC channels belong to the loop they are made in
    pending: Iterator[Path] = iter(images)
    outcomes: list[Outcome] = []

    async def worker() -> None:
        for path in pending:  # one shared iterator: each image goes to exactly one worker
            outcome = await classify_one(transport, path)
            outcomes.append(outcome)
            done(outcome)

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(images))))))
    finally:
        await transport.close()
    return outcomes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="effnet-serve classify",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files, or folders (recursive)")
    p.add_argument("--model", default=None, help="model name (default: the server's default model)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--grpc", action="store_true", help="use the gRPC API (effnet.v1.Classifier)")
    how.add_argument("--http", action="store_true", help="use the HTTP API (default)")
    p.add_argument(
        "--url", help=f"server address (default {DEFAULT_HTTP_URL}, or {DEFAULT_GRPC_URL} with --grpc)"
    )
    p.add_argument("--top-k", type=int, default=5, help="predictions per image (default 5)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each answer (default 30)")
    p.add_argument("-c", "--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    p.add_argument(
        "--priority",
        choices=PRIORITIES,
        default=BULK_PRIORITY,
        help="queue priority of these requests (default low: a person on the page goes first)",
    )
    p.add_argument("-o", "--output", type=Path, help="write one result per image here ('-': stdout)")
    p.add_argument("--format", choices=["jsonl", "csv"], help="output format (default: from the extension)")
    p.add_argument("--api-key", default=os.environ.get("EFFNET_API_KEY"), help="[EFFNET_API_KEY]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    err = Console(stderr=True, soft_wrap=True)
    images, missing = find_images(args.paths)
    if missing:
        print(f"error: no such file or folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    if not images:
        looked_for = ", ".join(sorted(IMAGE_SUFFIXES))
        print(f"error: no image files found (looked for {looked_for})", file=sys.stderr)
        return 2
    if args.top_k < 1 or args.concurrency < 1:
        print("error: --top-k and --concurrency must be at least 1", file=sys.stderr)
        return 2
    fmt = args.format or ("csv" if args.output and args.output.suffix.lower() == ".csv" else "jsonl")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    def connect() -> Transport:
        if args.grpc:
            address = (args.url or DEFAULT_GRPC_URL).removeprefix("grpc://")
            return GrpcTransport(address, args.model, args.top_k, args.timeout, headers, args.priority)
        url = args.url or DEFAULT_HTTP_URL
        return HttpTransport(url, args.model, args.top_k, args.timeout, headers, args.priority)

    to_stdout = args.output is not None and str(args.output) == "-"
    stream: IO[str] | None = None
    if args.output is not None:
        stream = sys.stdout if to_stdout else args.output.open("w", encoding="utf-8", newline="")
    writer = Writer(stream, fmt, args.top_k) if stream is not None else None
    progress = Progress(
        TextColumn("classifying"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"), TimeRemainingColumn(),
        console=err, disable=args.no_progress or not err.is_terminal, transient=True,
    )  # fmt: skip
    task = progress.add_task("classify", total=len(images), failed=0)
    failures = 0

    def done(outcome: Outcome) -> None:
        nonlocal failures, writer
        failures += not outcome.ok
        if writer is not None:
            try:
                writer.write(outcome)
            except OSError as exc:  # disk full, a closed pipe: say so, but finish the run
                err.print(f"error: cannot write {args.output}: {exc}; results from here on are not saved")
                writer = None
        progress.update(task, advance=1, failed=failures)

    start = time.monotonic()
    try:
        with progress:
            outcomes = asyncio.run(classify_all(connect, images, args.concurrency, done))
    finally:
        if stream is not None and not to_stdout:
            stream.close()
    elapsed = time.monotonic() - start
    if args.output is None:
        if len(outcomes) <= TABLE_LIMIT:
            order = {str(path): index for index, path in enumerate(images)}
            render(sorted(outcomes, key=lambda o: order.get(o.path, 0)), Console())
        else:
            err.print(f"{len(outcomes)} results not printed: use --output FILE (.jsonl or .csv) to keep them")
    summarise(outcomes, elapsed, err)
    return 0 if failures == 0 else 1
