"""Assertions about a saga's outcome and log, with messages that show the log.

    assert_saga(result, status=SagaStatus.COMPENSATED,
                completed=["reserve", "charge"], compensated=["charge", "reserve"],
                error_step="ship")

Each check is optional; on failure the `AssertionError` shows the saga's
timeline, so a failing test says what happened, not only what did not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sagaflow.orchestration.records import RecordKind, SagaLog, SagaRecord, SagaStatus
from sagaflow.orchestration.render import render_timeline
from sagaflow.orchestration.result import SagaResult

__all__ = ["assert_compensated_in_reverse", "assert_saga"]


def _parts(saga: SagaResult[Any] | SagaLog) -> tuple[str, SagaStatus, tuple[SagaRecord, ...]]:
    return saga.saga_id, saga.status, tuple(saga.records)


def _steps(records: Sequence[SagaRecord], kind: RecordKind) -> list[str]:
    return [r.step for r in records if r.kind is kind and r.step]


def _fail(saga: SagaResult[Any] | SagaLog, message: str) -> None:
    saga_id, status, records = _parts(saga)
    raise AssertionError(f"{message}\n{render_timeline(saga_id, status, records)}")


def assert_saga(
    saga: SagaResult[Any] | SagaLog,
    *,
    status: SagaStatus | None = None,
    completed: Sequence[str] | None = None,
    compensated: Sequence[str] | None = None,
    not_started: Sequence[str] = (),
    error_type: str | None = None,
    error_step: str | None = None,
) -> None:
    """Check a saga's outcome and log (a `SagaResult`, or a `SagaLog` from a store).

    Args:
        saga: The result or log to check.
        status: The expected final status.
        completed: Steps whose action completed, in order of completion.
        compensated: Steps whose compensation completed, in the order they ran.
        not_started: Steps that must never have started.
        error_type: The type name of the error that turned the saga back or parked it.
        error_step: The step that error came from.

    Raises:
        AssertionError: With the saga's timeline.
    """
    _, actual_status, records = _parts(saga)
    if status is not None and actual_status is not status:
        _fail(saga, f"status is {actual_status.value}, expected {status.value}")
    done = _steps(records, RecordKind.STEP_COMPLETED)
    if completed is not None and done != list(completed):
        _fail(saga, f"completed steps are {done}, expected {list(completed)}")
    undone = _steps(records, RecordKind.COMPENSATION_COMPLETED)
    if compensated is not None and undone != list(compensated):
        _fail(saga, f"compensated steps are {undone}, expected {list(compensated)}")
    started = set(_steps(records, RecordKind.STEP_STARTED))
    ran = sorted(started & set(not_started))
    if ran:
        _fail(saga, f"steps {ran} started but should not have")
    if error_type is not None or error_step is not None:
        error = _error(saga)
        if error is None:
            _fail(saga, "the saga recorded no error")
        elif error_type is not None and error.get("type") != error_type:
            _fail(saga, f"error type is {error.get('type')!r}, expected {error_type!r}")
        elif error_step is not None and error.get("step") != error_step:
            _fail(saga, f"error step is {error.get('step')!r}, expected {error_step!r}")


def _error(saga: SagaResult[Any] | SagaLog) -> dict[str, Any] | None:
    if isinstance(saga, SagaResult):
        return dict(saga.error) if saga.error else None
    found: dict[str, Any] | None = None
    for record in saga.records:
        if record.kind in (RecordKind.SAGA_COMPENSATING, RecordKind.SAGA_FAILED) and record.data:
            found = dict(record.data.get("error") or {})
    return found


def assert_compensated_in_reverse(saga: SagaResult[Any] | SagaLog) -> None:
    """Check that compensations ran in reverse order of completion, each once.

    Steps that completed but were never compensated (pivot, retriable, or a saga
    that did not turn back) are ignored; a compensated step that never completed
    is allowed only if its outcome was unknown (a timeout or cancellation).
    """
    _, _, records = _parts(saga)
    undone = _steps(records, RecordKind.COMPENSATION_COMPLETED)
    if len(undone) != len(set(undone)):
        _fail(saga, f"a step was compensated twice: {undone}")
    finished: list[str] = []
    for record in records:
        if record.step is None or record.step in finished:
            continue
        uncertain = record.kind is RecordKind.STEP_FAILED and (record.data or {}).get("uncertain")
        if record.kind is RecordKind.STEP_COMPLETED or uncertain:
            finished.append(record.step)
    expected = [step for step in reversed(finished) if step in undone]
    if undone != expected:
        _fail(saga, f"compensations ran as {undone}, expected reverse completion order {expected}")
