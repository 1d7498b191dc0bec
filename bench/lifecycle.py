"""Model management costs: load time and resident memory per model, unload time, RSS after unload.

    python -m bench.lifecycle --repository DIR [--models b0,b3,lite0] [--out bench/results]

Starts our server in explicit mode with nothing loaded, then for each model: load it through the
repository API (timed by the client, and the server's own load_seconds), read the memory the server
measured for it and the server process's RSS, unload it (timed) and read RSS again. Evicting a model
under a memory budget costs one unload plus, when it is next wanted, one load.
Writes bench/results/lifecycle.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import psutil

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: Sequence[str] | None = None) -> int:
    from bench.servers import ServerProcess, free_port

    parser = argparse.ArgumentParser(prog="python -m bench.lifecycle", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument(
        "--models", default="", help="comma-separated; default: every model in the repository"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    names = [n for n in args.models.split(",") if n] or sorted(
        p.name for p in args.repository.iterdir() if p.is_dir() and any(c.name.isdigit() for c in p.iterdir())
    )
    http_port, grpc_port = free_port(), free_port()
    argv_ = [
        sys.executable, "-m", "service", "serve", "--repository", str(args.repository),
        "--model-control", "explicit", "--http-port", str(http_port), "--grpc-port", str(grpc_port),
        "--host", "127.0.0.1", "--log-level", "WARNING",
    ]  # fmt: skip
    rows = []
    with ServerProcess(
        argv_, {}, http_port, "/readyz", Path("/tmp/effnet-bench-logs/lifecycle.log")
    ) as server:
        process = psutil.Process(server.pid)
        base = process.memory_info().rss
        for name in names:
            started = time.perf_counter()
            loaded = httpx.post(f"{server.base_url}/v2/repository/models/{name}/load", timeout=600)
            load_s = time.perf_counter() - started
            loaded.raise_for_status()
            info = httpx.get(f"{server.base_url}/v1/models/{name}", timeout=10).json()
            version = info["versions"][-1]
            rss_loaded = process.memory_info().rss
            started = time.perf_counter()
            httpx.post(
                f"{server.base_url}/v2/repository/models/{name}/unload", timeout=600
            ).raise_for_status()
            unload_s = time.perf_counter() - started
            rss_after = process.memory_info().rss
            row = {
                "model": name,
                "load_s_client": round(load_s, 3),
                "load_s_server": version["load_seconds"],
                "memory_mb": round((version["memory_bytes"] or 0) / 2**20, 1),
                "rss_loaded_mb": round(rss_loaded / 2**20, 1),
                "unload_s": round(unload_s, 3),
                "rss_after_unload_mb": round(rss_after / 2**20, 1),
            }
            rows.append(row)
            print(json.dumps(row))
    document = {"base_rss_mb": round(base / 2**20, 1), "models": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lifecycle.json").write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
