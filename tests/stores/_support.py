"""Records shared by the store tests."""

from __future__ import annotations

from sagaflow.orchestration.records import RecordKind, SagaRecord


def first_records() -> list[SagaRecord]:
    """A saga's first write: its start and its first step's start."""
    return [
        SagaRecord(RecordKind.SAGA_STARTED, data={"saga": "order", "version": 1}),
        SagaRecord(RecordKind.STEP_STARTED, "reserve", 1),
    ]
