"""`python -m service classify IMAGE... [--model b3] [--grpc|--http] [--url URL] [--top-k K]`:
classify local images with a running server and print the top-k as a table."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import grpc
import httpx
from rich.console import Console
from rich.table import Table

from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc
from service.retry_policy import channel_options

DEFAULT_HTTP_URL = "http://127.0.0.1:8000"
DEFAULT_GRPC_URL = "127.0.0.1:8001"

# (image path, [(class_id, label, score)]) per image
Results = list[tuple[str, list[tuple[int, str, float]]]]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m service classify", description=__doc__)
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files (JPEG, PNG, ...)")
    p.add_argument("--model", default=None, help="model name (default: the server's default model)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--grpc", action="store_true", help="use the gRPC API (effnet.v1.Classifier)")
    how.add_argument("--http", action="store_true", help="use the HTTP API (default)")
    p.add_argument(
        "--url", help=f"server address (default {DEFAULT_HTTP_URL}, or {DEFAULT_GRPC_URL} with --grpc)"
    )
    p.add_argument("--top-k", type=int, default=5, help="predictions per image (default 5)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)")
    return p


def classify_http(url: str, model: str | None, paths: list[Path], top_k: int, timeout: float) -> Results:
    params: dict[str, str | int] = {"top_k": top_k}
    if model:
        params["variant"] = model
    files = [("files", (path.name, path.read_bytes(), "application/octet-stream")) for path in paths]
    response = httpx.post(f"{url.rstrip('/')}/classify", params=params, files=files, timeout=timeout)
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise RuntimeError(f"HTTP {response.status_code}: {message}")
    results = response.json()["results"]
    return [
        (path.name, [(p["class_id"], p["label"], p["score"]) for p in result["predictions"]])
        for path, result in zip(paths, results, strict=True)
    ]


async def classify_grpc(
    address: str, model: str | None, paths: list[Path], top_k: int, seconds: float
) -> Results:
    request = classifier_pb2.ClassifyRequest(
        model=model or "", top_k=top_k, images=[path.read_bytes() for path in paths]
    )
    async with grpc.aio.insecure_channel(address, options=channel_options()) as channel:
        try:
            response = await classifier_pb2_grpc.ClassifierStub(channel).Classify(request, timeout=seconds)
        except grpc.aio.AioRpcError as exc:
            raise RuntimeError(f"gRPC {exc.code().name}: {exc.details()}") from exc
    return [
        (path.name, [(p.class_id, p.label, p.score) for p in result.predictions])
        for path, result in zip(paths, response.results, strict=True)
    ]


def render(results: Results, console: Console) -> None:
    table = Table(title="top-k predictions")
    for column, justify in (("image", "left"), ("rank", "right"), ("class", "right"), ("label", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    table.add_column("score", justify="right")
    for path, predictions in results:
        for rank, (class_id, label, score) in enumerate(predictions, start=1):
            table.add_row(path if rank == 1 else "", str(rank), str(class_id), label, f"{score:.4f}")
        table.add_section()
    console.print(table)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        print(f"error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        if args.grpc:
            address = (args.url or DEFAULT_GRPC_URL).removeprefix("grpc://")
            results = asyncio.run(classify_grpc(address, args.model, args.images, args.top_k, args.timeout))
        else:
            results = classify_http(
                args.url or DEFAULT_HTTP_URL, args.model, args.images, args.top_k, args.timeout
            )
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    render(results, Console())
    return 0
