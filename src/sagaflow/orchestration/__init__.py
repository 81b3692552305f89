"""Orchestration: saga definitions, the Orchestrator and the saga log."""

from sagaflow.orchestration.context import StepContext
from sagaflow.orchestration.definition import Parallel, Saga, Step, StepKind
from sagaflow.orchestration.hooks import SagaHooks
from sagaflow.orchestration.orchestrator import Orchestrator
from sagaflow.orchestration.records import (
    Claim,
    RecordKind,
    SagaLog,
    SagaRecord,
    SagaStatus,
    SagaSummary,
)
from sagaflow.orchestration.result import SagaResult
from sagaflow.orchestration.store import SagaStore

__all__ = [
    "Claim",
    "Orchestrator",
    "Parallel",
    "RecordKind",
    "Saga",
    "SagaHooks",
    "SagaLog",
    "SagaRecord",
    "SagaResult",
    "SagaStatus",
    "SagaStore",
    "SagaSummary",
    "Step",
    "StepContext",
    "StepKind",
]
