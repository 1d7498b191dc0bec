"""Read-only views of the lifecycle's records: the V2 repository index, the readiness table, and why a
model serves no request."""

from __future__ import annotations

from collections.abc import Mapping

from service.lifecycle.records import IndexEntry, ModelRecord, ModelState


def repository_index(records: Mapping[str, ModelRecord], ready_only: bool = False) -> list[IndexEntry]:
    rows: list[IndexEntry] = []
    for name in sorted(records):
        record = records[name]
        if not record.touched:
            if not ready_only:
                rows.append(IndexEntry(name))
            continue
        if not record.versions and not ready_only:
            rows.append(IndexEntry(name, "", "UNAVAILABLE", record.reason or ""))
        for number in sorted(record.versions):
            entry = record.versions[number]
            if ready_only and not entry.ready:
                continue
            if entry.state is ModelState.AVAILABLE and not ready_only:
                rows.append(IndexEntry(name, str(number), "UNAVAILABLE", entry.reason or "not loaded"))
                continue
            reason = entry.reason or ("" if entry.ready else entry.state.value)
            rows.append(IndexEntry(name, str(number), entry.state.triton, reason))
    return rows


def readiness(records: Mapping[str, ModelRecord]) -> dict[str, str]:
    """Each model's state in a word or two: "ready", "loading", "failed: <why>", ..."""
    table = {}
    for name, record in records.items():
        serving = record.serving()
        if serving is not None:
            table[name] = "ready"
        elif record.reason:
            table[name] = f"failed: {record.reason}"
        else:
            newest = record.newest()
            state = newest.state.value if newest is not None else "failed"
            reason = newest.reason if newest is not None and newest.reason else None
            table[name] = state if reason is None or reason == state else f"{state}: {reason}"
    return table


def why_not_ready(record: ModelRecord) -> str:
    """Why `record` serves no request now, in one sentence for the client."""
    if record.reason:
        return f"model '{record.name}' is not available: {record.reason}"
    newest = record.newest()
    if newest is None:
        return f"model '{record.name}' has no version"
    states = {e.state for e in record.versions.values()}
    if ModelState.LOADING in states:
        return f"model '{record.name}' is loading"
    if ModelState.UNLOADING in states:
        return f"model '{record.name}' is unloading"
    failed = [e for e in record.versions.values() if e.state is ModelState.FAILED]
    if failed:
        return f"model '{record.name}' failed to load: {failed[-1].reason}"
    if not record.wanted:
        return (
            f"model '{record.name}' is not loaded"
            + (" (unloaded)" if newest.state is ModelState.UNLOADED else "")
            + "; load it through the repository API"
        )
    return f"model '{record.name}' is not loaded yet"
