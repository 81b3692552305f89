"""Plain-text rendering of saga logs (for the CLI, examples and test failures)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sagaflow.orchestration.records import RecordKind, SagaRecord, SagaStatus

__all__ = ["render_timeline"]

_ERROR_KINDS = (
    RecordKind.STEP_FAILED,
    RecordKind.COMPENSATION_FAILED,
    RecordKind.SAGA_COMPENSATING,
    RecordKind.SAGA_FAILED,
)


def render_timeline(
    saga_id: str, status: SagaStatus, records: Sequence[SagaRecord], *, saga_name: str = ""
) -> str:
    """Render a saga's log as one line per record, with times relative to its start.

    Error messages are shown; state and step results are not (they may hold
    personal data).
    """
    name = f"{saga_name} " if saga_name else ""
    lines = [f"saga {name}{saga_id}: {status.value.upper()}"]
    if not records:
        return lines[0]
    start = records[0].at
    started = datetime.fromtimestamp(start, tz=UTC).isoformat(timespec="milliseconds")
    lines[0] += f" (started {started})"
    for record in records:
        label = record.kind.value.replace("_", " ")
        step = f" {record.step}" if record.step else ""
        attempt = f" (attempt {record.attempt})" if record.attempt else ""
        lines.append(
            f"  +{(record.at - start) * 1000:9.1f} ms  {label}{step}{attempt}{_detail(record)}"
        )
    return "\n".join(lines)


def _detail(record: SagaRecord) -> str:
    data = record.data or {}
    if record.kind in _ERROR_KINDS:
        error = data.get("error") or {}
        text = f": {error.get('type', '?')}: {error.get('message', '')}"
        if record.kind is RecordKind.STEP_FAILED and data.get("uncertain"):
            text += " (outcome unknown)"
        return text
    if record.kind is RecordKind.COMPENSATION_SKIPPED:
        return f": {data.get('reason', '')}"
    if record.kind in (RecordKind.SAGA_RECOVERED, RecordKind.SAGA_RESUMED):
        owner = data.get("owner") or data.get("by")
        return f" by {owner}" if owner else ""
    return ""
