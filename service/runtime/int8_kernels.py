"""Whether ONNX Runtime's fused int8 CPU kernels compute this machine's int8 graphs faithfully.

ORT fuses a QDQ graph's DequantizeLinear -> Conv -> QuantizeLinear into integer kernels (QLinearConv).
On x86 CPUs without VNNI they multiply uint8 by int8 with VPMADDUBSW, whose 16-bit sums saturate. On an
AVX2-only EPYC (2026-12-07) lite0-int8 then kept 26 of 36 answers of its fp32 model (72 %; 69 % with
reduce_range, 58 % with only the convolutions quantised) and failed its export gate, while the same graph
with the QDQ fusions off (weights folded to float, activations rounded to 8 bits as the graph says) kept
them as on a VNNI CPU and passed. So on such a CPU int8 graphs run with `session.disable_quant_qdq`:
the answers the graph means, at about 1.5x the fp32 time instead of 0.7x (serve fp32 there).
"""

from __future__ import annotations

import functools
import logging
import platform
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

# Any of these gives MLAS a non-saturating u8 x s8 dot product.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
DISABLE_QDQ_FUSION = "session.disable_quant_qdq"


def fused_int8_exact(machine: str | None = None, cpuinfo: str | None = None) -> bool:
    """True where the fused kernels are exact: any x86 CPU with VNNI, and every other architecture."""
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i686", "x86"):
        return True
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: nothing to read the flags from; trust the kernels
            return True
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return bool(VNNI_FLAGS & set(line.partition(":")[2].split()))
    return True


@functools.cache
def _this_cpu_exact() -> bool:
    exact = fused_int8_exact()
    if not exact:
        log.warning(
            "int8 graphs run without ONNX Runtime's fused int8 kernels: this CPU has no VNNI, where they "
            "saturate and change answers; the answers are right but slower than fp32 (serve fp32 here)"
        )
    return exact


def faithful_int8(options: ort.SessionOptions) -> ort.SessionOptions:
    """`options` for a CPU session, with the QDQ fusions off where this CPU's int8 kernels saturate (a
    no-op for graphs without QuantizeLinear/DequantizeLinear)."""
    if not _this_cpu_exact():
        options.add_session_config_entry(DISABLE_QDQ_FUSION, "1")
    return options
