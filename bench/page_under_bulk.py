"""A person's request under a bulk job (issue 40): the page-like client's latency, idle and under bulk.

    python -m bench.page_under_bulk --repository models/repository [--model lite2] [--seconds 15]

A page-like client sends one photo at a time at `priority=high`, a request every 200 ms (a person
clicking), while a bulk job of 8, then 32 clients sends photos back to back at `priority=low`. Measured
per server variant, in one run: the page client's p50/p99 idle and under each load, and the bulk job's
images/s with and without the page client (without: the two halves around the page run, averaged, so
drift cancels). The variants are the batcher's rules for high-priority images (service/runtime/batcher.py):
- `before`: a high image joins the next batch, filled with low ones (the rule before issue 40);
- `fill`: a batch holding high images carries only as many others as keep its measured cost near theirs;
- `lane`: one more runner (and decoding thread) takes high images alone when all others are busy;
- `lane+fill`: both (the defaults).

The bulk job runs in its own process, so the page client's latency is not the load generator's event
loop. Photos: the 500 ImageNet validation photos in /work/shared/imagenet-sample (benchmark use only).
Writes bench/results/page-under-bulk.json with the machine's load average at each step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import httpx

from bench.cache_priority import LOGS, RESULTS, load, photos, quantiles
from bench.servers import service

VARIANTS: dict[str, dict[str, str]] = {
    "before": {"high_priority_lane": "false", "high_fill_slack": "10", "high_fill_unmeasured": "64"},
    "fill": {"high_priority_lane": "false"},
    "lane": {"high_fill_slack": "10", "high_fill_unmeasured": "64"},
    "lane+fill": {},
}
THINK_S = 0.2
WARM_S = 3.0


def bulk_process(url: str, model: str, clients: int, done: Synchronized[int], stop: Event) -> None:
    """Child process: `clients` senders at priority low, back to back, counting answered images."""
    bodies = photos()

    async def main() -> None:
        counter = iter(range(1 << 40))
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def sender() -> None:
                while not stop.is_set():
                    body = bodies[next(counter) % len(bodies)]
                    answer = await client.post(
                        f"{url}/classify",
                        params={"variant": model, "top_k": 5, "priority": "low"},
                        content=body,
                        headers={"content-type": "image/jpeg"},
                    )
                    if answer.status_code == 200:
                        with done.get_lock():
                            done.value += 1

            await asyncio.gather(*(sender() for _ in range(clients)))

    asyncio.run(main())


def page_client(
    url: str, model: str, bodies: list[bytes], seconds: float, start: int, keep: bool = False
) -> dict[str, Any]:
    """One photo at a time at priority high, THINK_S apart, for `seconds`: latencies and server timings
    (`keep`: the latencies themselves too, as `samples`)."""
    latencies: list[float] = []
    inside: dict[str, list[float]] = {"preprocess_ms": [], "queue_ms": [], "inference_ms": []}
    failures = 0
    end = time.perf_counter() + seconds
    i = start
    with httpx.Client(timeout=60) as client:
        while time.perf_counter() < end:
            body = bodies[(7 * i) % len(bodies)]
            i += 1
            began = time.perf_counter()
            answer = client.post(
                f"{url}/classify",
                params={"variant": model, "top_k": 5, "priority": "high"},
                content=body,
                headers={"content-type": "image/jpeg"},
            )
            elapsed = time.perf_counter() - began
            if answer.status_code != 200:
                failures += 1
            else:
                latencies.append(elapsed)
                timings = answer.json()["timings"]
                for key, values in inside.items():
                    values.append(timings.get(key, 0.0) / 1000)
            time.sleep(THINK_S)
    return {
        "page": quantiles(latencies),
        "failures": failures,
        "page_server_timings": {key: quantiles(values) for key, values in inside.items()},
        **({"samples": latencies} if keep else {}),
    }


def under_load(url: str, model: str, bodies: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    """Bulk alone (two halves around the page run), then with the page client."""
    context = multiprocessing.get_context("spawn")
    done = context.Value("q", 0)
    stop = context.Event()
    child = context.Process(target=bulk_process, args=(url, model, clients, done, stop), daemon=True)
    child.start()
    try:
        time.sleep(WARM_S)

        def rate(span: float) -> float:
            before, began = done.value, time.perf_counter()
            time.sleep(span)
            return (done.value - before) / (time.perf_counter() - began)

        alone_first = rate(seconds / 2)
        before, began = done.value, time.perf_counter()
        page = page_client(url, model, bodies, seconds, start=clients)
        with_page = (done.value - before) / (time.perf_counter() - began)
        alone_second = rate(seconds / 2)
    finally:
        stop.set()
        child.join(30)
        if child.is_alive():
            child.kill()
    alone = (alone_first + alone_second) / 2
    return {
        **page,
        "bulk_images_per_s_alone": round(alone, 1),
        "bulk_images_per_s_with_page": round(with_page, 1),
        "bulk_with_page_over_alone": round(with_page / alone, 3) if alone else None,
        "load": load(),
    }


def measure_variant(
    repository: Path, model: str, settings: dict[str, str], bodies: list[bytes], args: argparse.Namespace
) -> dict[str, Any]:
    server, _ = service(repository, [model], settings, LOGS / "page-under-bulk.log")
    with server:
        url = server.base_url
        page_client(url, model, bodies, 2.0, start=10_000)  # warm: first requests allocate
        # Idle before and after the loads, pooled: the machine's own drift falls on both sides.
        first = page_client(url, model, bodies, args.seconds / 2, 0, keep=True)
        result: dict[str, Any] = {"settings": settings}
        for clients in args.loads:
            result[f"bulk_{clients}"] = under_load(url, model, bodies, clients, args.seconds)
        second = page_client(url, model, bodies, args.seconds / 2, 5_000, keep=True)
    idle = first.pop("samples") + second.pop("samples")
    result["idle"] = {
        "page": quantiles(idle),
        "p50_before_and_after_ms": [first["page"]["p50_ms"], second["page"]["p50_ms"]],
        "load": load(),
    }
    idle_p50 = result["idle"]["page"]["p50_ms"]
    for clients in args.loads:
        run = result[f"bulk_{clients}"]
        run["p50_over_idle"] = round(run["page"]["p50_ms"] / idle_p50, 2)
        run["p99_over_idle"] = round(run["page"]["p99_ms"] / idle_p50, 2)
    return result


def summary(result: dict[str, Any], loads: list[int]) -> str:
    lines = ["variant     load  page p50 (x idle)  page p99   bulk img/s alone -> with page"]
    for name, variant in result["variants"].items():
        idle = variant["idle"]["page"]
        lines.append(f"{name:<10}  idle  {idle['p50_ms']:7.1f} ms         {idle['p99_ms']:7.1f} ms")
        for clients in loads:
            run = variant[f"bulk_{clients}"]
            lines.append(
                f"{name:<10}  {clients:>4}  {run['page']['p50_ms']:7.1f} ms ({run['p50_over_idle']:.2f}x)"
                f"  {run['page']['p99_ms']:7.1f} ms  {run['bulk_images_per_s_alone']:6.1f} -> "
                f"{run['bulk_images_per_s_with_page']:6.1f} ({run['bulk_with_page_over_alone']:.3f})"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.page_under_bulk", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--repository", type=Path, default=Path("models/repository"))
    parser.add_argument("--model", default="lite2")
    parser.add_argument("--seconds", type=float, default=15.0, help="per measured phase")
    parser.add_argument("--loads", type=int, nargs="+", default=[8, 32], help="bulk clients")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--aging-ms",
        type=float,
        help="EFFNET_PRIORITY_AGING_MS for every variant (shorter than the bulk "
        "job's queue wait: every low image has aged, as under sustained saturation)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    bodies = photos()
    result: dict[str, Any] = {
        "model": args.model,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_before": load(),
        "think_s": THINK_S,
        "aging_ms": args.aging_ms,
        "variants": {},
    }
    aging = {} if args.aging_ms is None else {"priority_aging_ms": str(args.aging_ms)}
    for name in args.variants:
        settings = VARIANTS[name] | aging
        variant = measure_variant(args.repository.resolve(), args.model, settings, bodies, args)
        result["variants"][name] = variant
        print(f"{name}: idle p50 {variant['idle']['page']['p50_ms']} ms", flush=True)
    result["load_after"] = load()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "page-under-bulk.json").write_text(json.dumps(result, indent=1) + "\n")
    print(summary(result, args.loads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
