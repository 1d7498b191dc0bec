"""Before any measurement on the device: is the CUDA provider really in use?

Creates an ONNX Runtime session for a tiny convolution graph (a convolution, so cuDNN is loaded, not
only the CUDA runtime) asking for CUDA, runs it once, and records in gpu.json (`preflight`) the provider
the session really got, the library folders on LD_LIBRARY_PATH and where each library the CUDA provider
needs was found. On `--device cuda` anything but the CUDA provider stops the check there (exit status
2, `stopped` saying why): every figure after it would be a CPU figure.

    python3 -m bench.gpu.preflight --out DIR [--device cuda|cpu]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.gpu import record
from bench.gpu.loader import REQUIRED, locate

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def conv_graph() -> bytes:
    import numpy as np
    from onnx import TensorProto, helper

    weights = np.ones((4, 3, 3, 3), np.float32) / 27
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "preflight",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.flatten().tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return bytes(model.SerializeToString())


def libraries(dirs: list[str]) -> dict[str, Any]:
    """Each required library: the file found in `dirs` and whether the loader opens it by name."""
    found: dict[str, Any] = {}
    for lib, path in locate(REQUIRED, dirs).items():
        try:
            ctypes.CDLL(lib)
            opens: Any = True
        except OSError as exc:
            opens = str(exc)[:200]
        found[lib] = {"found": path, "loads": opens}
    return found


def preflight(device: str) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort

    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    info: dict[str, Any] = {
        "device": device,
        "LD_LIBRARY_PATH": dirs,
        "libraries": libraries(dirs),
        "onnxruntime": ort.__version__,
        "onnxruntime_file": ort.__file__,
        "available_providers": ort.get_available_providers(),
    }
    providers: list[Any] = [CPU]
    if device == "cuda":
        providers.insert(0, (CUDA, {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}))
    started = time.monotonic()
    try:
        session = ort.InferenceSession(conv_graph(), providers=providers)
        out = session.run(None, {"x": np.ones((1, 3, 8, 8), np.float32)})[0]
        info["provider"] = session.get_providers()[0]
        info["provider_options"] = session.get_provider_options().get(info["provider"], {})
        info["output_ok"] = bool(abs(float(out[0, 0, 4, 4]) - 1.0) < 1e-3)
    except Exception as exc:  # recorded: the reason the check stops
        info["provider"] = None
        info["error"] = f"{type(exc).__name__}: {str(exc)[:500]}"
    info["seconds"] = round(time.monotonic() - started, 2)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args(argv)
    info = preflight(args.device)
    record.phase(args.out, "preflight", "done", preflight=info)
    print(f"preflight: provider {info['provider']} ({info['seconds']} s)")
    if args.device == "cuda" and info["provider"] != CUDA:
        missing = [lib for lib, state in info["libraries"].items() if state["loads"] is not True]
        reason = f"the provider in use is {info['provider']}, not {CUDA}"
        reason += f"; libraries that do not load: {', '.join(missing)}" if missing else ""
        reason += f"; {info['error']}" if "error" in info else ""
        record.stop(args.out, "preflight", reason)
        print(f"preflight: {reason}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
