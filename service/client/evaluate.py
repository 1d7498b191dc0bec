"""`python -m service eval DIR|CSV --model NAME [--model OTHER] [--grpc] [--json FILE]`: measure models
served by a running server on your own labelled photos.

DIR is a folder of class folders (CLASS/photo.jpg); CSV is file,label (or a header naming a file and a
label/class_id column, e.g. file,class_id,wnid). Labels are the model's class names or class indices.
Every photo goes through the server as a client would send it (the classify client's concurrency,
overload retries and progress bar), one model after the other. Prints top-1/top-5, the classes with
the most errors and, for two or more models, their top-1 agreement; `--json FILE` keeps everything.
Exit status: 0 when every photo was answered, 1 when any failed, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from service._generated.effnet.v1 import classifier_pb2, classifier_pb2_grpc
from service.client.cli import (
    DEFAULT_GRPC_URL,
    DEFAULT_HTTP_URL,
    GrpcTransport,
    HttpTransport,
    Transport,
    classify_all,
)
from service.client.dataset import DatasetError, Sample, read_dataset, resolve_labels
from service.client.report import Outcome
from service.client.retry_policy import channel_options
from service.client.scoring import agreement, render, score_model, truths

TOP_K = 5


class EvalError(Exception):
    """A problem with the request as a whole (unknown model, server unreachable): one line, exit 2."""


def model_classes(
    args: argparse.Namespace, model: str, headers: dict[str, str], first_photo: Path | None = None
) -> tuple[str, list[str] | int]:
    """(the server's name for `model`, its class names) over HTTP; over gRPC, (name, class count)."""
    if args.grpc:
        address = (args.url or DEFAULT_GRPC_URL).removeprefix("grpc://")
        metadata = tuple((key.lower(), value) for key, value in headers.items())
        with grpc.insecure_channel(address, options=channel_options()) as channel:
            try:
                reply = classifier_pb2_grpc.ClassifierStub(channel).ListModels(
                    classifier_pb2.ListModelsRequest(), timeout=args.timeout, metadata=metadata
                )
            except grpc.RpcError as exc:
                raise EvalError(
                    f"cannot list the models at {address}: {exc.code().name}: {exc.details()}"
                ) from None
        for info in reply.models:
            if info.name.casefold() == model.casefold():
                if not info.HasField("num_classes"):
                    raise EvalError(
                        f"model '{info.name}' has no class count yet: {info.reason or info.state}"
                    )
                return info.name, info.num_classes
        raise EvalError(f"unknown model '{model}'; the server has {', '.join(m.name for m in reply.models)}")
    base = (args.url or DEFAULT_HTTP_URL).rstrip("/")
    url = f"{base}/v1/models/{model}/labels"
    try:
        response = httpx.get(url, headers=headers, timeout=args.timeout)
        if response.status_code == 503 and first_photo is not None:
            # Not loaded yet (a server with a memory budget loads on first use): one request loads it.
            httpx.post(
                f"{base}/classify",
                params={"variant": model, "top_k": 1},
                content=first_photo.read_bytes(),
                headers={**headers, "Content-Type": "application/octet-stream"},
                timeout=args.timeout,
            )
            response = httpx.get(url, headers=headers, timeout=args.timeout)
    except (httpx.HTTPError, OSError) as exc:
        raise EvalError(f"cannot reach {url}: {type(exc).__name__}: {exc}") from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise EvalError(f"{model}: HTTP {response.status_code}: {message}")
    body = response.json()
    return str(body["model"]), [str(label) for label in body["labels"]]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="effnet-serve eval",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", type=Path, metavar="DIR|CSV", help="a folder of class folders, or a CSV")
    p.add_argument("--model", action="append", required=True, help="a served model; repeat to compare")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--grpc", action="store_true", help="use the gRPC API (effnet.v1.Classifier)")
    how.add_argument("--http", action="store_true", help="use the HTTP API (default)")
    p.add_argument(
        "--url", help=f"server address (default {DEFAULT_HTTP_URL}, or {DEFAULT_GRPC_URL} with --grpc)"
    )
    p.add_argument("-c", "--concurrency", type=int, default=4, help="requests in flight at once (default 4)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each answer (default 30)")
    p.add_argument("--json", type=Path, help="write the whole measurement here as JSON")
    p.add_argument("--api-key", default=os.environ.get("EFFNET_API_KEY"), help="[EFFNET_API_KEY]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    err = Console(stderr=True, soft_wrap=True)
    if args.concurrency < 1:
        print("error: --concurrency must be at least 1", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        samples = read_dataset(args.source)
        models = [model_classes(args, model, headers, samples[0].path) for model in dict.fromkeys(args.model)]
        mappings = [resolve_labels([s.label for s in samples], classes) for _, classes in models]
    except (DatasetError, EvalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs: list[dict[str, Any]] = []
    outcomes_of: list[list[Outcome]] = []
    for (name, classes), mapping in zip(models, mappings, strict=True):
        count = classes if isinstance(classes, int) else len(classes)
        outcomes, seconds = _run(args, name, min(TOP_K, count), headers, samples, err)
        outcomes_of.append(outcomes)
        names = None if isinstance(classes, int) else classes
        runs.append(score_model(name, samples, outcomes, truths(samples, mapping, names), seconds, names))
        _warn_unchecked(name, samples, mapping, outcomes, err)
    first_names = None if isinstance(models[0][1], int) else models[0][1]
    pairs = [
        {
            "models": [models[0][0], models[i][0]],
            **agreement(outcomes_of[0], outcomes_of[i], truths(samples, mappings[0], first_names)),
        }
        for i in range(1, len(models))
    ]
    result = {
        "dataset": str(args.source),
        "images": len(samples),
        "classes": len({s.label for s in samples}),
        "transport": "grpc" if args.grpc else "http",
        "concurrency": args.concurrency,
        "models": runs,
        "agreement": pairs,
    }
    render(result, Console())
    if args.json is not None:
        try:
            args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write {args.json}: {exc}", file=sys.stderr)
            return 2
    return 0 if all(run["failed"] == 0 for run in runs) else 1


def _warn_unchecked(
    model: str, samples: list[Sample], mapping: dict[str, int], outcomes: list[Outcome], err: Console
) -> None:
    """Over gRPC the label names cannot be checked up front (ListModels has no labels): a name that no
    answer ever carried is likely misspelt, and every photo of it counts as wrong."""
    seen = {str(p["label"]).casefold() for o in outcomes for p in o.predictions}
    never = sorted({s.label for s in samples if s.label not in mapping and s.label.casefold() not in seen})
    if never:
        shown = ", ".join(repr(label) for label in never[:5])
        err.print(
            f"warning: {model}: {len(never)} labels never appeared in any answer ({shown}); if they are not "
            "among the model's class names, their photos count as errors (HTTP checks them up front)",
            highlight=False,
        )


def _run(
    args: argparse.Namespace,
    model: str,
    top_k: int,
    headers: dict[str, str],
    samples: list[Sample],
    err: Console,
) -> tuple[list[Outcome], float]:
    def connect() -> Transport:
        if args.grpc:
            address = (args.url or DEFAULT_GRPC_URL).removeprefix("grpc://")
            return GrpcTransport(address, model, top_k, args.timeout, headers)
        return HttpTransport(args.url or DEFAULT_HTTP_URL, model, top_k, args.timeout, headers)

    progress = Progress(
        TextColumn(f"{model}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"), TimeRemainingColumn(),
        console=err, disable=args.no_progress or not err.is_terminal, transient=True,
    )  # fmt: skip
    task = progress.add_task(model, total=len(samples), failed=0)
    failures = 0

    def done(outcome: Outcome) -> None:
        nonlocal failures
        failures += not outcome.ok
        progress.update(task, advance=1, failed=failures)

    paths = list(dict.fromkeys(s.path for s in samples))
    start = time.monotonic()
    with progress:
        outcomes = asyncio.run(classify_all(connect, paths, args.concurrency, done))
    return outcomes, time.monotonic() - start
