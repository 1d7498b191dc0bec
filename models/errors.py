"""Errors the exporter reports to its user as one line (never a traceback)."""


class ExportError(Exception):
    """A user-facing failure: bad variant, unusable checkpoint, unwritable repository, ..."""


class WeightsUnavailable(ExportError):
    """Published weights could not be had (offline, package missing); `default` falls back to random."""


class CheckpointError(ExportError):
    """A local checkpoint is unreadable or does not fit the architecture."""
