"""Atomic publication of one model version: `DIR/<name>/<version>/` appears complete or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from models.errors import ExportError


def prepare(repository: Path) -> None:
    """Create the repository root and prove it is writable before any expensive work."""
    try:
        repository.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".probe-", dir=repository):
            pass
    except OSError as e:
        raise ExportError(f"repository {repository} is not writable: {e.strerror or e}") from None


@contextlib.contextmanager
def staged_version(repository: Path, name: str, version: int) -> Iterator[Path]:
    """Yield an empty staging directory; on normal exit move it to `repository/name/version`.

    The staging directory sits inside the repository (same filesystem, so the final rename is atomic)
    and starts with a dot, which no model name can, so the service never mistakes it for a model.
    On any error it is removed and the repository is left exactly as it was.
    """
    prepare(repository)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-{version}-", dir=repository))
        staging.chmod(0o755)  # mkdtemp makes it private; the server may run as another user
    except OSError as e:
        raise ExportError(f"repository {repository} is not writable: {e.strerror or e}") from None
    try:
        yield staging
        _publish(staging, repository / name / str(version))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, target: Path) -> None:
    try:
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            # A directory cannot be replaced in one rename: move the old one aside first, so the
            # target is briefly absent but never half-written.
            retired = Path(tempfile.mkdtemp(prefix=".retired-", dir=target.parent.parent))
            os.replace(target, retired / target.name)
            os.replace(staging, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, target)
    except OSError as e:
        raise ExportError(f"cannot publish {target}: {e.strerror or e}") from None
