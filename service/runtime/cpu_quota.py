"""The CPU quota of this process's cgroup (a container's or a pod's CPU limit), read from the cgroup
filesystem: cgroup v2's `cpu.max`, or v1's `cpu.cfs_quota_us` over `cpu.cfs_period_us`.

The scheduler's affinity mask (`os.sched_getaffinity`) does not show a quota: a pod limited to 200m on
a 16-core node still sees 16 cores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path, PurePosixPath

_PROC_CGROUP = Path("/proc/self/cgroup")
_CGROUP_ROOT = Path("/sys/fs/cgroup")


def cpu_quota_cores(proc_cgroup: Path = _PROC_CGROUP, cgroup_root: Path = _CGROUP_ROOT) -> float | None:
    """The tightest CPU quota on this process's cgroup and its ancestors, in cores; None: no quota
    (or no cgroup filesystem to tell)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas: list[float] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            quotas += _quotas(cgroup_root, PurePosixPath(path), _v2_quota)
        elif "cpu" in controllers.split(","):
            for mount in (cgroup_root / controllers, cgroup_root / "cpu"):
                if mount.is_dir():
                    quotas += _quotas(mount, PurePosixPath(path), _v1_quota)
                    break
    return min(quotas) if quotas else None


def _quotas(mount: Path, path: PurePosixPath, read: Callable[[Path], float | None]) -> list[float]:
    """Quotas along `path` and its ancestors under `mount`. In a container the mount is the
    container's own cgroup while /proc shows the host's path: its root is read too."""
    folders = {mount / str(p).lstrip("/") for p in (path, *path.parents)} | {mount}
    return [q for q in (read(folder) for folder in folders) if q is not None]


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, _, period = (folder / "cpu.max").read_text().strip().partition(" ")
    except OSError:
        return None
    if quota == "max" or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
