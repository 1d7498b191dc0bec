"""What one message costs to frame (encode + decode) between a front and the engine (issue 36):
one loop turn's 32 descriptors (front -> engine) and 32 results (engine -> front, two 1000-class rows
each), with pickle 5 (what service/split/wire.py uses), marshal and json (stdlib) and msgpack (when
installed; it is no dependency of the service). Microseconds per message, medians of 7 runs.

  python -m bench.split_framing
"""

from __future__ import annotations

import json
import marshal
import pickle
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

N = 32


def per_message_us(work: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(reps):
            work()
        times.append((time.perf_counter() - start) / reps / N * 1e6)
    return round(statistics.median(times), 3)


def main() -> int:
    pixels = (1, 3, 224, 224)
    descriptors = [
        (
            "infer",
            i,
            "b0",
            None,
            5,
            None,
            1,
            12345.678 + i,
            f"{i:016x}",
            None,
            ("pixels", 64 * i, pixels, False),
        )
        for i in range(N)
    ]
    rows = np.random.default_rng(0).random((N, 2, 1000), dtype=np.float32)
    as_arrays = [
        ("done", i, "b0", 1, {"logits": rows[i, 0:1], "probabilities": rows[i, 1:2]}) for i in range(N)
    ]
    as_bytes = [
        ("done", i, "b0", 1, {"logits": rows[i, 0:1].tobytes(), "probabilities": rows[i, 1:2].tobytes()})
        for i in range(N)
    ]
    codecs: list[tuple[str, Callable[[Any], bytes], Callable[[bytes], Any]]] = [
        ("pickle5", lambda m: pickle.dumps(m, protocol=5), pickle.loads),
        ("marshal", marshal.dumps, marshal.loads),
        ("json", lambda m: json.dumps(m).encode(), json.loads),
    ]
    try:
        import msgpack  # type: ignore[import-not-found]

        codecs.append(("msgpack", msgpack.packb, msgpack.unpackb))
    except ImportError:
        pass
    found: dict[str, dict[str, float]] = {}
    for name, encode, decode in codecs:

        def both(
            messages: object, encode: Callable[[Any], bytes] = encode, decode: Callable[[bytes], Any] = decode
        ) -> object:
            return decode(encode(messages))

        found[name] = {"descriptor_us": per_message_us(lambda: both(descriptors), 2000)}
        if name != "json":
            found[name]["result_bytes_us"] = per_message_us(lambda: both(as_bytes), 300)
    found["pickle5"]["result_arrays_us"] = per_message_us(
        lambda: pickle.loads(pickle.dumps(as_arrays, 5)), 300
    )
    print(json.dumps(found, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
