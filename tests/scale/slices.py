"""A pod-sized share of this machine's CPU for one replica, the way a Kubernetes CPU limit makes one:
a cgroup with a CFS quota (cgroup v1 `cpu.cfs_quota_us`, or v2 `cpu.max`), and the CPU time it used
(v1 `cpuacct.usage`, v2 `cpu.stat` usage_usec), which is what the kubelet reports to metrics-server.

`ip netns exec` gives its command a fresh /sys without the cgroup mounts, so inside the run's network
namespace the hierarchies are mounted again under a private folder (same hierarchies, same groups).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT_NAME = "effnet-scale-sim"


@dataclass(frozen=True)
class Hierarchy:
    version: int
    cpu: Path  # where quota files live
    usage: Path  # where usage files live (v1: the cpuacct hierarchy; v2: the same as cpu)


def _mounted(kind: str, options: str, target: Path) -> bool:
    target.mkdir(parents=True, exist_ok=True)
    args = ["mount", "-t", kind, *(["-o", options] if options else []), kind, str(target)]
    return subprocess.run(args, capture_output=True, check=False).returncode == 0


def find_hierarchy() -> Hierarchy:
    """The CPU controller, from /sys/fs/cgroup if visible, else mounted privately (root)."""
    sys_root = Path("/sys/fs/cgroup")
    if (sys_root / "cpu" / "cpu.cfs_quota_us").exists() and (sys_root / "cpuacct" / "cpuacct.usage").exists():
        return Hierarchy(1, sys_root / "cpu", sys_root / "cpuacct")
    controllers = sys_root / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return Hierarchy(2, sys_root, sys_root)
    private = Path(tempfile.mkdtemp(prefix="effnet-cgroups-"))
    if _mounted("cgroup", "cpu", private / "cpu") and _mounted("cgroup", "cpuacct", private / "cpuacct"):
        return Hierarchy(1, private / "cpu", private / "cpuacct")
    if _mounted("cgroup2", "", private / "unified"):
        unified = private / "unified"
        if "cpu" in (unified / "cgroup.controllers").read_text().split():
            return Hierarchy(2, unified, unified)
    raise SystemExit("no writable CPU cgroup controller (v1 cpu+cpuacct or v2 cpu): cannot size replicas")


def remove_groups() -> list[Path]:
    """After a run, from outside its namespace: remove the simulation's cgroups that are empty (the
    harness group the runner moved itself into, pods that are gone, then the parent). A group with a
    process still in it stays. Returns what was removed."""
    removed: list[Path] = []
    sys_root = Path("/sys/fs/cgroup")
    for top in (sys_root / "cpu", sys_root / "cpuacct", sys_root):
        parent = top / ROOT_NAME
        if not parent.is_dir():
            continue
        for group in sorted((p for p in parent.iterdir() if p.is_dir()), reverse=True):
            try:
                group.rmdir()
                removed.append(group)
            except OSError:
                pass
        try:
            parent.rmdir()
            removed.append(parent)
        except OSError:
            pass
    return removed


def reserve(hierarchy: Hierarchy, weight: int) -> Path:
    """Give the simulation's parent group `weight` (v1 cpu.shares) and move this process (and so
    nginx and the load generator it starts) into a child of it without a quota. A kubelet does the same
    for its pods (cpu.shares from requests, under a kubepods group sized to the node), so a pod gets its
    request even when other processes of this shared machine are busy; each pod's quota still caps it."""
    parent = hierarchy.cpu / ROOT_NAME
    parent.mkdir(exist_ok=True)
    harness = parent / "harness"
    harness.mkdir(exist_ok=True)
    if hierarchy.version == 2:
        (parent / "cpu.weight").write_text(str(min(10000, max(1, weight * 100 // 1024))))
    else:
        (parent / "cpu.shares").write_text(str(weight))
        (harness / "cpu.shares").write_text("1024")
    (harness / "cgroup.procs").write_text(str(os.getpid()))
    return harness


class CpuSlice:
    """One replica's cgroup: `millicores` of CPU per `period_us` (Kubernetes' 1000m = one core)."""

    def __init__(
        self, hierarchy: Hierarchy, name: str, millicores: int, period_us: int, request_millicores: int = 0
    ) -> None:
        self.hierarchy = hierarchy
        self.millicores = millicores
        self.period_us = period_us
        quota = period_us * millicores // 1000
        parent_cpu = hierarchy.cpu / ROOT_NAME
        if hierarchy.version == 2:
            parent_cpu.mkdir(exist_ok=True)
            (hierarchy.cpu / "cgroup.subtree_control").write_text("+cpu")
            (parent_cpu / "cgroup.subtree_control").write_text("+cpu")
            self.cpu_dir = parent_cpu / name
            self.cpu_dir.mkdir(exist_ok=True)
            (self.cpu_dir / "cpu.max").write_text(f"{quota} {period_us}")
            self.usage_dir = self.cpu_dir
        else:
            self.cpu_dir = parent_cpu / name
            self.usage_dir = hierarchy.usage / ROOT_NAME / name
            self.cpu_dir.mkdir(parents=True, exist_ok=True)
            self.usage_dir.mkdir(parents=True, exist_ok=True)
            (self.cpu_dir / "cpu.cfs_period_us").write_text(str(period_us))
            (self.cpu_dir / "cpu.cfs_quota_us").write_text(str(quota))
        # The request's CPU weight, as the kubelet sets it: shares = millicores x 1024 / 1000 (at least 2),
        # on cgroup v2 the weight it converts those shares to. It stays for the pod's life: see set_limit.
        shares = max(2, (request_millicores or millicores) * 1024 // 1000)
        if hierarchy.version == 2:
            (self.cpu_dir / "cpu.weight").write_text(str(1 + (shares - 2) * 9999 // 262142))
        else:
            (self.cpu_dir / "cpu.shares").write_text(str(shares))

    def set_limit(self, millicores: int) -> None:
        """Change the quota in place (Kubernetes' in-place pod resize). The weight stays the request's."""
        quota = self.period_us * millicores // 1000
        if self.hierarchy.version == 2:
            (self.cpu_dir / "cpu.max").write_text(f"{quota} {self.period_us}")
        else:
            (self.cpu_dir / "cpu.cfs_quota_us").write_text(str(quota))
        self.millicores = millicores

    def add(self, pid: int) -> None:
        """Move `pid` in; the threads and children it makes afterwards stay in."""
        (self.cpu_dir / "cgroup.procs").write_text(str(pid))
        if self.usage_dir != self.cpu_dir:
            (self.usage_dir / "cgroup.procs").write_text(str(pid))

    def usage_s(self) -> float:
        """CPU seconds used by everything in the slice so far."""
        if self.hierarchy.version == 2:
            for line in (self.usage_dir / "cpu.stat").read_text().splitlines():
                key, value = line.split()
                if key == "usage_usec":
                    return int(value) / 1e6
            raise RuntimeError("cpu.stat has no usage_usec")
        return int((self.usage_dir / "cpuacct.usage").read_text()) / 1e9

    def throttled_s(self) -> float:
        """Time the slice spent throttled at its quota (v1 throttled_time ns, v2 throttled_usec)."""
        for line in (self.cpu_dir / "cpu.stat").read_text().splitlines():
            key, value = line.split()
            if key == "throttled_time":
                return int(value) / 1e9
            if key == "throttled_usec":
                return int(value) / 1e6
        return 0.0

    def remove(self) -> None:
        """Remove the (empty) groups; a process still inside keeps them."""
        for folder in {self.cpu_dir, self.usage_dir}:
            try:
                folder.rmdir()
            except OSError:
                pass
