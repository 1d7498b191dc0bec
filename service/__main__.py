"""effnet-serve (also `python -m service`): `serve` runs HTTP and gRPC in one event loop; `classify
IMAGE...` is a small client; `eval DIR --model NAME` measures served models on labelled photos; the model
tools (export, import, cascade, upgrade, measure, speed) write and check the model repository."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import uvicorn
from pydantic import ValidationError

from service.api.grpc.server import create_grpc_server
from service.api.http.app import create_app
from service.api.http.limits import (
    AbsorbClientDisconnect,
    EdgeLimits,
    EdgeMetrics,
    ensure_file_descriptors,
    limited_protocol,
)
from service.api.ports import PortInUse, check_grpc, claim_http
from service.core.client import EngineClient
from service.core.engine import Engine
from service.lifecycle.files import ModelLoadError
from service.logs import setup_logging
from service.metrics import Metrics
from service.runtime.session import RuntimeUnavailable
from service.settings import Settings

log = logging.getLogger("service")


def _serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the model repository over HTTP and gRPC")
    p.add_argument("--repository", type=Path, help="model repository directory [EFFNET_REPOSITORY]")
    p.add_argument("--models", help="comma-separated model names to load (default: all) [EFFNET_MODELS]")
    p.add_argument("--host", help="bind address (default 0.0.0.0) [EFFNET_HOST]")
    p.add_argument("--http-port", type=int, help="HTTP port (default 8000) [EFFNET_HTTP_PORT]")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 8001) [EFFNET_GRPC_PORT]")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="execution provider [EFFNET_DEVICE]")
    p.add_argument("--default-model", help="model for requests that name none [EFFNET_DEFAULT_MODEL]")
    p.add_argument(
        "--strict",
        action="store_true",
        default=None,
        help="fail start-up if a model cannot load [EFFNET_STRICT]",
    )
    p.add_argument(
        "--model-control",
        choices=["none", "poll", "explicit"],
        help="none: load the repository at start; poll: rescan it; explicit: load through the API "
        "[EFFNET_MODEL_CONTROL]",
    )
    p.add_argument("--poll-interval-s", type=float, help="poll mode: seconds between scans (default 5)")
    p.add_argument(
        "--memory-budget-mb", type=int, help="memory all models may take; load lazily, evict LRU (0: none)"
    )
    p.add_argument(
        "--max-batch-size", type=int, help="per model; 0: by provider and GMACs (CPU 4 or 1, CUDA 32-256)"
    )
    p.add_argument("--max-queue-delay-ms", type=float, help="hold a non-full batch this long (default 0)")
    p.add_argument("--max-queue-size", type=int, help="queued images per model before 503")
    p.add_argument(
        "--intra-op-threads", type=int, help="ONNX Runtime threads per session; 0: EFFNET_CPUS (all cores)"
    )
    p.add_argument("--preprocess-workers", type=int, help="decode threads; 0: EFFNET_CPUS (all cores)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ... [EFFNET_LOG_LEVEL]")
    p.add_argument("--log-json", action="store_true", default=None, help="JSON log lines [EFFNET_LOG_JSON]")
    p.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a line per request (default on; --no-access-log) [EFFNET_ACCESS_LOG]",
    )
    p.add_argument(
        "--front-processes",
        help="split mode: front processes feeding one engine process; 0: one process; auto (default): "
        "0 on the CPU or below 4 cores [EFFNET_FRONT_PROCESSES]",
    )
    # Set by split mode's supervisor for the processes it starts (service/split/supervisor.py).
    p.add_argument("--split-role", choices=["engine", "front"], help=argparse.SUPPRESS)
    p.add_argument("--split-socket", help=argparse.SUPPRESS)
    p.add_argument("--split-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--split-fronts", type=int, help=argparse.SUPPRESS)


def build_settings(args: argparse.Namespace) -> Settings:
    """Flags given on the command line win over EFFNET_* variables, which win over defaults."""
    overrides: dict[str, Any] = {
        key: value
        for key, value in vars(args).items()
        if key != "command" and not key.startswith("split_") and value is not None
    }
    return Settings(**overrides)


def page_url(host: str, port: int) -> str:
    """The page's address for a person: a wildcard bind is reached as localhost."""
    shown = "localhost" if host in ("", "0.0.0.0", "::") else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service stops HTTP and gRPC together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _start_grpc(
    engine: EngineClient, settings: Settings, metrics: Metrics, reuse_port: bool
) -> grpc.aio.Server | None:
    try:
        server = create_grpc_server(engine, settings, metrics, reuse_port)
        await server.start()
    except (RuntimeError, OSError) as exc:  # a port grpc cannot bind; unreadable TLS files
        log.error("event=startup_failed reason=%r", f"gRPC on {settings.host}:{settings.grpc_port}: {exc}")
        return None
    return server


async def serve(settings: Settings, remote: EngineClient | None = None, say_url: bool = True) -> int:
    """One process (`remote` None), or a split-mode front that feeds the engine process `remote`.
    `say_url`: log the page's address once ready (split mode: the first front only, not every one)."""
    reuse_port = remote is not None
    try:
        http_socket = claim_http(settings.host, settings.http_port, reuse_port)
        check_grpc(settings.host, settings.grpc_port, reuse_port)
    except PortInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    engine: EngineClient = Engine(settings, Metrics()) if remote is None else remote
    metrics = engine.metrics
    await engine.start()
    app = create_app(engine, settings, metrics)
    edge_limits = EdgeLimits.from_settings(settings)
    ensure_file_descriptors(edge_limits)
    http_server = _Server(
        uvicorn.Config(
            AbsorbClientDisconnect(app),
            host=settings.host,
            port=settings.http_port,
            # httptools with header/body deadlines and the connection cap (service/api/http/limits.py)
            http=limited_protocol(edge_limits, EdgeMetrics(metrics.registry)),
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=int(settings.drain_timeout_s),
            timeout_keep_alive=int(settings.http_keep_alive_timeout_s),
            limit_concurrency=None,
            backlog=2048,
        )
    )
    try:
        grpc_server = create_grpc_server(engine, settings, metrics, reuse_port)
    except (RuntimeError, OSError) as exc:  # a port grpc cannot bind; unreadable TLS files
        log.error("event=startup_failed reason=%r", f"gRPC on {settings.host}:{settings.grpc_port}: {exc}")
        await engine.stop()
        return 1
    # Checked (port, TLS files), then released until the models are loaded: a proxy cannot see a gRPC
    # status, so a replica answering UNAVAILABLE while loading would draw calls and their retries;
    # a refused connection it sends elsewhere (docs/limits.md, "Replicas that die").
    await grpc_server.start()  # grpc releases a bound port only once started and stopped
    await grpc_server.stop(None)
    await engine.wait_connected()  # a split-mode front: not before it can reach the engine
    http_task = asyncio.create_task(http_server.serve(sockets=[http_socket]), name="http")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info(
        "event=listening http=%s:%d grpc=%s:%d repository=%s",
        settings.host, settings.http_port, settings.host, settings.grpc_port, settings.repository,
    )  # fmt: skip

    exit_code = 0
    load_task = asyncio.create_task(engine.wait_loaded(), name="wait-loaded")
    stop_task = asyncio.create_task(stop.wait(), name="stop")
    await asyncio.wait({load_task, stop_task, http_task}, return_when=asyncio.FIRST_COMPLETED)
    if load_task.done() and load_task.exception() is not None:
        log.error("event=startup_failed reason=%r", str(load_task.exception()))
        exit_code = 1
    elif http_task.done():
        log.error("event=http_server_exited")  # e.g. the port is taken
        exit_code = 1
    elif load_task.done():
        started = await _start_grpc(engine, settings, metrics, reuse_port)
        if started is None:
            exit_code = 1
        else:
            grpc_server = started
            log.info("event=ready models=%s", ",".join(engine.readiness()))
            if say_url:
                log.info("open %s", page_url(settings.host, settings.http_port))
            await asyncio.wait({stop_task, http_task}, return_when=asyncio.FIRST_COMPLETED)
            if http_task.done() and not stop_task.done():
                exit_code = 1

    log.info("event=stopping drain_timeout_s=%s", settings.drain_timeout_s)
    engine.begin_drain()
    http_server.should_exit = True
    await asyncio.gather(grpc_server.stop(settings.drain_timeout_s), http_task, return_exceptions=True)
    await engine.stop()
    for task in (load_task, stop_task):
        task.cancel()
    log.info("event=stopped exit_code=%d", exit_code)
    return exit_code


# Model tools: the modules under models/ (each with its own --help). export and import need the
# `export` extra (torch, onnxscript); a missing extra is named, not a traceback.
MODEL_TOOLS: dict[str, tuple[str, str]] = {
    "export": ("models.export", "export EfficientNet variants into the repository (the export extra)"),
    "import": ("models.import_onnx", "import any ONNX image classifier as a model"),
    "cascade": ("models.cascade", "write a cascade entry: a cheap model first, a stronger one when unsure"),
    "upgrade": ("models.upgrade", "give older exported models the features and cam outputs, in place"),
    "measure": ("models.measure", "measure models on your labelled photos; record it in their model.json"),
    "speed": ("models.speed", "bare ONNX Runtime CPU latency of exported models, side by side"),
}


def _run_model_tool(name: str, argv: list[str]) -> int:
    module_name, _ = MODEL_TOOLS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(
            f"error: effnet-serve {name} needs {exc.name}, which is not installed: "
            "pip install 'effnet-serve[export]' (or `make serve`)",
            file=sys.stderr,
        )
        return 2
    code: int = module.main(argv)
    return code


def run_role(settings: Settings, role: str, socket_path: str, index: int | None, fronts: int | None) -> int:
    """Split mode: the engine process or a front, as the supervisor (service/split/) started it."""
    if role == "engine":
        from service.split.engine_side import run_engine
        from service.split.supervisor import MB

        count = fronts or 1
        return asyncio.run(
            run_engine(settings, socket_path, count, count * settings.front_shared_memory_mb * MB)
        )
    from service.split.remote import RemoteEngine

    front = index or 0
    return asyncio.run(serve(settings, RemoteEngine(settings, socket_path, front), say_url=front == 0))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["classify"]:
        from service.client.cli import main as client_main

        return client_main(argv[1:])
    if argv[:1] == ["eval"]:
        from service.client.evaluate import main as eval_main

        return eval_main(argv[1:])
    if argv[:1] and argv[0] in MODEL_TOOLS:
        return _run_model_tool(argv[0], argv[1:])
    parser = argparse.ArgumentParser(prog="effnet-serve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _serve_parser(sub)
    sub.add_parser("classify", help="classify images with a running server (see classify --help)")
    sub.add_parser("eval", help="measure served models on your labelled photos (see eval --help)")
    for tool, (_, help_text) in MODEL_TOOLS.items():
        sub.add_parser(tool, help=help_text, add_help=False)
    args = parser.parse_args(argv)
    try:
        settings = build_settings(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"error: invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_json, settings.access_log)
    from service.split.supervisor import front_count, supervise

    try:
        if args.split_role is not None:
            return run_role(settings, args.split_role, args.split_socket, args.split_index, args.split_fronts)
        fronts = front_count(settings)
        if fronts > 0:
            return supervise(settings, fronts, argv)
        return asyncio.run(serve(settings))
    except (ModelLoadError, RuntimeUnavailable) as exc:
        log.error("event=startup_failed reason=%r", str(exc))
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
