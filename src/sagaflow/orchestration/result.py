"""`SagaResult`: how a saga run ended, with its state and its whole log."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from sagaflow.orchestration.records import RecordKind, SagaRecord, SagaStatus

__all__ = ["SagaResult"]

S = TypeVar("S", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class SagaResult(Generic[S]):
    """The outcome of one saga instance.

    Attributes:
        saga_id: The instance id.
        saga_name: The definition's name.
        status: COMPLETED, COMPENSATED or FAILED once finished; RUNNING or
            COMPENSATING for an instance still in progress elsewhere.
        state: The final state (after compensations' updates, if any).
        records: The full ordered log: every attempt, error and compensation.
        error: Why the saga turned back or was parked, as data
            (``{"type", "message", "step"}``), or ``None`` if it completed.
    """

    saga_id: str
    saga_name: str
    status: SagaStatus
    state: S
    records: tuple[SagaRecord, ...]
    error: Mapping[str, str] | None = None

    @property
    def succeeded(self) -> bool:
        """Whether every step completed."""
        return self.status is SagaStatus.COMPLETED

    def completed_steps(self) -> list[str]:
        """Names of steps whose action completed, in order of completion."""
        return [r.step for r in self.records if r.kind is RecordKind.STEP_COMPLETED and r.step]

    def compensated_steps(self) -> list[str]:
        """Names of steps whose compensation completed, in the order they ran."""
        return [
            r.step for r in self.records if r.kind is RecordKind.COMPENSATION_COMPLETED and r.step
        ]
