"""Which CPUs get ORT's fused int8 kernels, and the session option that turns them off elsewhere."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from service.runtime import int8_kernels
from service.runtime.int8_kernels import DISABLE_QDQ_FUSION, faithful_int8, fused_int8_exact

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse4_2 avx f16c avx2 bmi2\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n"
ALDER_LAKE = "flags\t\t: fpu avx2 avx_vnni\n"


@pytest.mark.parametrize(
    ("machine", "cpuinfo", "exact"),
    [
        ("x86_64", AVX2_ONLY, False),
        ("x86_64", ZEN4, True),
        ("AMD64", ALDER_LAKE, True),
        ("aarch64", AVX2_ONLY, True),  # ARM's dot products do not saturate
        ("x86_64", "processor\t: 0\n", True),  # no flags line: nothing says otherwise
    ],
)
def test_exact_only_with_vnni_on_x86(machine: str, cpuinfo: str, exact: bool) -> None:
    assert fused_int8_exact(machine, cpuinfo) is exact


@pytest.mark.parametrize("exact", [True, False])
def test_the_fusions_are_off_only_where_the_kernels_saturate(
    monkeypatch: pytest.MonkeyPatch, exact: bool
) -> None:
    monkeypatch.setattr(int8_kernels, "_this_cpu_exact", lambda: exact)
    options = faithful_int8(ort.SessionOptions())
    try:
        entry: str | None = options.get_session_config_entry(DISABLE_QDQ_FUSION)
    except RuntimeError:  # ORT raises for a key never set
        entry = None
    assert entry == (None if exact else "1")
