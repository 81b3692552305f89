"""The saga log: the records an orchestrator writes, and what they add up to.

A saga instance is an append-only list of `SagaRecord`. The orchestrator writes a
record *before* every side effect (``STEP_STARTED``, ``COMPENSATION_STARTED``) and
*after* it (``..._COMPLETED`` / ``..._FAILED``), so that after a crash the log says
exactly which effects may have happened. The saga's version is the number of
records in its log; stores use it for optimistic concurrency.

Record data is plain JSON-compatible content (errors are stored as
``{"type": ..., "message": ...}``, never as exception objects), so every store can
persist it and no store ever rebuilds an object from a module name.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "Claim",
    "ErrorInfo",
    "RecordKind",
    "SagaLog",
    "SagaRecord",
    "SagaStatus",
    "SagaSummary",
    "error_info",
    "status_after",
]


class SagaStatus(enum.StrEnum):
    """Where a saga instance stands."""

    RUNNING = "running"
    """Moving forward through its steps."""
    COMPENSATING = "compensating"
    """A step failed (or the saga was cancelled); undoing finished steps."""
    COMPLETED = "completed"
    """Every step completed."""
    COMPENSATED = "compensated"
    """A step failed and every finished compensatable step was undone, in reverse."""
    FAILED = "failed"
    """Parked for an operator: a compensation (or a step past the pivot) failed for good."""

    @property
    def is_terminal(self) -> bool:
        """Whether nothing more happens without an operator (COMPLETED/COMPENSATED/FAILED)."""
        return self in _TERMINAL


_TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})


class RecordKind(enum.StrEnum):
    """What one saga log record says happened."""

    SAGA_STARTED = "saga_started"
    """data: ``{"saga": name, "version": int, "state": initial state as JSON data}``."""
    STEP_STARTED = "step_started"
    """An attempt of a step is about to run its action."""
    STEP_COMPLETED = "step_completed"
    """data: ``{"updates": {...}}`` the state changes the step returned (may be empty)."""
    STEP_FAILED = "step_failed"
    """data: ``{"error": ErrorInfo, "uncertain": bool, "final": bool}``."""
    COMPENSATION_STARTED = "compensation_started"
    """An attempt of a step's compensation is about to run."""
    COMPENSATION_COMPLETED = "compensation_completed"
    """data: ``{"updates": {...}}``."""
    COMPENSATION_FAILED = "compensation_failed"
    """data: ``{"error": ErrorInfo, "final": bool}``."""
    COMPENSATION_SKIPPED = "compensation_skipped"
    """An operator skipped a parked compensation; data: ``{"reason": str}``."""
    SAGA_COMPENSATING = "saga_compensating"
    """The saga turned back; data: ``{"error": ErrorInfo}`` (with the failed ``"step"``)."""
    SAGA_COMPLETED = "saga_completed"
    """Terminal: every step completed."""
    SAGA_COMPENSATED = "saga_compensated"
    """Terminal: everything done was undone."""
    SAGA_FAILED = "saga_failed"
    """Parked: data: ``{"error": ErrorInfo}``."""
    SAGA_RESUMED = "saga_resumed"
    """An operator resumed a parked saga; data: ``{"phase": "forward"|"compensating"}``."""
    SAGA_RECOVERED = "saga_recovered"
    """A worker took over an unfinished saga after its owner stopped; data: ``{"owner": str}``."""


_STATUS_AFTER: dict[RecordKind, SagaStatus] = {
    RecordKind.SAGA_STARTED: SagaStatus.RUNNING,
    RecordKind.SAGA_COMPENSATING: SagaStatus.COMPENSATING,
    RecordKind.SAGA_COMPLETED: SagaStatus.COMPLETED,
    RecordKind.SAGA_COMPENSATED: SagaStatus.COMPENSATED,
    RecordKind.SAGA_FAILED: SagaStatus.FAILED,
}


_CHANGES_STATUS = frozenset({*_STATUS_AFTER, RecordKind.SAGA_RESUMED})


def status_after(current: SagaStatus | None, records: Sequence[SagaRecord]) -> SagaStatus:
    """Return the status a saga has after ``records`` are appended to its log.

    Stores call this to keep a status column without interpreting records themselves.

    Args:
        current: The status before the records (``None`` for a new saga).
        records: The records being appended, in order.
    """
    status = current
    for record in records:
        if record.kind not in _CHANGES_STATUS:
            continue
        if record.kind is RecordKind.SAGA_RESUMED:
            phase = (record.data or {}).get("phase")
            status = SagaStatus.RUNNING if phase == "forward" else SagaStatus.COMPENSATING
        else:
            status = _STATUS_AFTER.get(record.kind, status)
    return status if status is not None else SagaStatus.RUNNING


class ErrorInfo(NamedTuple):
    """An error as data: its class name and message, never the object itself."""

    type: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """Return ``{"type": ..., "message": ...}``."""
        return {"type": self.type, "message": self.message}


def error_info(error: BaseException) -> dict[str, str]:
    """Describe ``error`` as JSON data: ``{"type": class name, "message": str(error)}``."""
    return {"type": type(error).__name__, "message": str(error)}


class SagaRecord(NamedTuple):
    """One entry of a saga log. Immutable.

    Attributes:
        kind: What happened.
        step: The step concerned, or ``None`` for saga-level records.
        attempt: The attempt number for step and compensation records (1-based), else 0.
        at: Wall-clock time in seconds since the epoch.
        data: JSON-compatible details, depending on ``kind`` (see `RecordKind`).
    """

    kind: RecordKind
    step: str | None = None
    attempt: int = 0
    at: float = 0.0
    data: Mapping[str, Any] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-compatible dict (stores persist this)."""
        return {
            "kind": self.kind.value,
            "step": self.step,
            "attempt": self.attempt,
            "at": self.at,
            "data": dict(self.data) if self.data is not None else None,
        }

    @classmethod
    def from_json_dict(cls, raw: Mapping[str, Any]) -> SagaRecord:
        """Rebuild a record from `to_json_dict` output."""
        return cls(
            kind=RecordKind(raw["kind"]),
            step=raw.get("step"),
            attempt=int(raw.get("attempt", 0)),
            at=float(raw.get("at", 0.0)),
            data=raw.get("data"),
        )


class JsonRecords(list[SagaRecord]):
    """Records whose data sagaflow built itself as plain JSON values (internal).

    The orchestrator hands its writes to the store in this list type: the data
    came from ``model_dump(mode="json")``, ``to_jsonable_python`` and error
    descriptions, and nothing mutates it afterwards, so an in-process store may
    keep the records as they are instead of normalising a copy. Any other
    sequence gets the full treatment.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class SagaLog:
    """A saga instance as a store holds it: its id, records and bookkeeping.

    Attributes:
        saga_id: The instance id.
        records: Every record, oldest first.
        status: The status the records add up to.
        fencing_token: The token of the current lease holder (0 if never leased).
        owner: The current lease holder, if any.
        lease_expires: Wall-clock expiry of the current lease, if any.
    """

    saga_id: str
    records: tuple[SagaRecord, ...]
    status: SagaStatus
    fencing_token: int = 0
    owner: str | None = None
    lease_expires: float | None = None

    @property
    def version(self) -> int:
        """The number of records: the value to pass as ``expected_version`` next."""
        return len(self.records)

    @property
    def saga_name(self) -> str:
        """The definition name recorded when the saga started."""
        return str(self._started_data().get("saga", ""))

    @property
    def definition_version(self) -> int:
        """The definition version recorded when the saga started."""
        return int(self._started_data().get("version", 0))

    def _started_data(self) -> Mapping[str, Any]:
        if not self.records or self.records[0].data is None:
            return {}
        return self.records[0].data


@dataclass(frozen=True, slots=True)
class SagaSummary:
    """One line of a saga listing (see `SagaStore.list_sagas`).

    Attributes:
        saga_id: The instance id.
        saga_name: The definition name.
        status: Current status.
        version: Number of records.
        updated_at: Wall-clock time of the last record.
        owner: Current lease holder, if any.
    """

    saga_id: str
    saga_name: str
    status: SagaStatus
    version: int
    updated_at: float
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """A lease on an unfinished saga, granted by `SagaStore.claim`.

    Attributes:
        saga_id: The saga now leased.
        fencing_token: Present it with every write; a newer claim makes it stale.
        lease_expires: Wall-clock time at which the lease lapses unless renewed.
    """

    saga_id: str
    fencing_token: int
    lease_expires: float
