"""The cgroup CPU quota (a pod's or container's CPU limit) and the spinning default it decides."""

from __future__ import annotations

from pathlib import Path

import pytest

import service.settings as settings_module
from service.runtime.cpu_quota import cpu_quota_cores
from service.settings import Settings


def _quota(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> float | None:
    """cpu_quota_cores over a made-up /proc/self/cgroup and cgroup filesystem."""
    proc, root = tmp_path / "proc_cgroup", tmp_path / "cgroup"
    proc.write_text(proc_cgroup)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return cpu_quota_cores(proc, root)


def test_v2_quota_of_the_process_cgroup_and_its_tightest_ancestor(tmp_path: Path) -> None:
    files = {
        "kubepods/pod1/ctr/cpu.max": "max 100000\n",
        "kubepods/pod1/cpu.max": "50000 100000\n",
        "kubepods/cpu.max": "800000 100000\n",
    }
    assert _quota(tmp_path, "0::/kubepods/pod1/ctr\n", files) == 0.5


def test_v2_without_a_limit_reads_none(tmp_path: Path) -> None:
    assert _quota(tmp_path, "0::/user.slice\n", {"user.slice/cpu.max": "max 100000\n"}) is None


def test_v1_quota_in_a_container_that_sees_its_own_cgroup_at_the_mount_root(tmp_path: Path) -> None:
    # The host's path in /proc, while the container's cgroup is mounted at the controller's root.
    files = {"cpu,cpuacct/cpu.cfs_quota_us": "20000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}
    assert _quota(tmp_path, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n", files) == pytest.approx(0.2)


def test_v1_unlimited_and_unreadable_read_none(tmp_path: Path) -> None:
    files = {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert _quota(tmp_path, "1:cpu:/\n", files) is None
    assert cpu_quota_cores(tmp_path / "missing", tmp_path / "cgroup") is None


@pytest.mark.parametrize(
    ("setting", "quota", "cpus", "spins"),
    [
        (None, None, 0, True),  # no limit: spin while a batch runs
        (None, 0.2, 0, False),  # a 200m pod: spinning would spend its quota
        (None, 2.0, 0, False),  # 2 of the 4 cores: rationed
        (None, 4.0, 0, True),  # a quota of all the cores rations nothing
        (None, None, 2, False),  # a request of 2 of the 4 cores and no limit: shared
        (None, None, 4, True),  # told all the cores: not shared
        (False, None, 0, False),  # an explicit setting wins either way
        (True, 0.2, 2, True),
    ],
)
def test_spinning_default_follows_the_quota_and_the_cpus_setting(
    monkeypatch: pytest.MonkeyPatch, setting: bool | None, quota: float | None, cpus: int, spins: bool
) -> None:
    monkeypatch.setattr(settings_module.os, "sched_getaffinity", lambda _pid: set(range(4)))
    monkeypatch.setattr(settings_module, "cpu_quota_cores", lambda: quota)
    assert Settings(allow_spinning=setting, cpus=cpus).effective_allow_spinning is spins


@pytest.mark.parametrize(("quota", "cores"), [(None, 16), (2.0, 2), (0.2, 1), (2.5, 3), (32.0, 16)])
def test_thread_pools_are_sized_by_the_quota_rounded_up(
    monkeypatch: pytest.MonkeyPatch, quota: float | None, cores: int
) -> None:
    monkeypatch.setattr(settings_module.os, "sched_getaffinity", lambda _pid: set(range(16)))
    monkeypatch.setattr(settings_module, "cpu_quota_cores", lambda: quota)
    assert settings_module.cpu_count() == cores
    assert Settings().effective_intra_op_threads == cores == Settings().effective_preprocess_workers


def test_the_cpus_setting_sizes_the_pools_whatever_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod with a request and no limit sees every core of its node; EFFNET_CPUS (from the request)
    sizes it instead."""
    monkeypatch.setattr(settings_module.os, "sched_getaffinity", lambda _pid: set(range(64)))
    monkeypatch.setattr(settings_module, "cpu_quota_cores", lambda: None)
    assert Settings().cores == 64
    settings = Settings(cpus=2)
    assert settings.cores == settings.effective_intra_op_threads == settings.effective_preprocess_workers == 2
    assert Settings(cpus=2, intra_op_threads=4).effective_intra_op_threads == 4  # the explicit pool wins


@pytest.mark.parametrize(
    ("cores", "b0", "b3", "b7"),
    [(1, 1, 1, 1), (2, 3, 2, 1), (4, 5, 4, 1), (16, 17, 16, 1), (64, 64, 64, 1)],
)
def test_cpu_instances_grow_with_the_cores(cores: int, b0: int, b3: int, b7: int) -> None:
    """One overlapping batch per core keeps the cores busy, one more for the smallest models from two
    cores; the big ones run one batch at a time; at most what a model's config.json allows."""
    settings = Settings(cpus=cores)
    assert settings.instances_for("CPUExecutionProvider", gmacs=0.39) == b0
    assert settings.instances_for("CPUExecutionProvider", gmacs=1.83) == b3
    assert settings.instances_for("CPUExecutionProvider", gmacs=37.75) == b7
    assert settings.instances_for("CUDAExecutionProvider", gmacs=0.39) == 2
    assert Settings(cpus=cores, instances=5).instances_for("CPUExecutionProvider", gmacs=0.39) == 5
