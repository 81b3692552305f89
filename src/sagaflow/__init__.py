"""sagaflow: sagas for asyncio services, orchestrated or choreographed.

The public API is what ``__all__`` lists; everything else is private.
"""

from sagaflow import errors
from sagaflow._version import __version__
from sagaflow.clock import Clock, SystemClock
from sagaflow.orchestration import (
    Claim,
    Orchestrator,
    Parallel,
    RecordKind,
    Saga,
    SagaHooks,
    SagaLog,
    SagaRecord,
    SagaResult,
    SagaStatus,
    SagaStore,
    SagaSummary,
    Step,
    StepContext,
    StepKind,
)
from sagaflow.retry import RetryPolicy
from sagaflow.stores import MemorySagaStore

__all__ = [
    "Claim",
    "Clock",
    "MemorySagaStore",
    "Orchestrator",
    "Parallel",
    "RecordKind",
    "RetryPolicy",
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
    "SystemClock",
    "__version__",
    "errors",
]
