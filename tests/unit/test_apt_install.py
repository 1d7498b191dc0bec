"""tools/apt-install.sh, which the make targets use for Debian packages, waits for another package
manager's lock instead of failing; a fake apt-get on PATH plays the one that holds it."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "apt-install.sh"


def fake_apt(tmp_path: Path, locked_calls: int, error: str = "") -> Path:
    """An apt-get that fails with apt's lock message `locked_calls` times, then succeeds (or fails
    with `error` when one is given); it logs its arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    counter = tmp_path / "calls"
    counter.write_text("0")
    (bin_dir / "apt-get").write_text(
        f"""#!/usr/bin/env bash
echo "$@" >> {tmp_path}/log
n=$(( $(cat {counter}) + 1 )); echo $n > {counter}
if [ $n -le {locked_calls} ]; then
  echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 4242 (apt-get)" >&2; exit 100
fi
if [ -n "{error}" ]; then echo "E: {error}" >&2; exit 100; fi
exit 0
"""
    )
    (bin_dir / "apt-get").chmod(0o755)
    return bin_dir


def run(bin_dir: Path, *packages: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "APT_LOCK_WAIT_S": "20"}
    return subprocess.run([str(SCRIPT), *packages], env=env, capture_output=True, text=True, timeout=60)


def test_waits_for_a_held_lock_and_says_so_once(tmp_path: Path) -> None:
    result = run(fake_apt(tmp_path, locked_calls=2), "chromium")
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("waiting for another package manager") == 1
    assert "process 4242 (apt-get)" in result.stderr
    calls = (tmp_path / "log").read_text().splitlines()
    assert len(calls) == 4 and "install" in calls[-1] and "chromium" in calls[-1]
    assert all("DPkg::Lock::Timeout=20" in call for call in calls)


def test_other_errors_fail_at_once_with_apt_s_message(tmp_path: Path) -> None:
    result = run(fake_apt(tmp_path, locked_calls=0, error="Unable to locate package nosuch"), "nosuch")
    assert result.returncode == 100
    assert "Unable to locate package nosuch" in result.stderr and "waiting" not in result.stderr
