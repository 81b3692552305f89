"""sagaflow: sagas for asyncio services, orchestrated or choreographed.

The public API is what ``__all__`` lists; everything else is private. Broker
clients are never imported here: the durable stores and the transports load
their drivers when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sagaflow import errors
from sagaflow._version import __version__
from sagaflow.choreography import DeadLetter, EventBus, Middleware, current_envelope
from sagaflow.clock import Clock, SystemClock
from sagaflow.envelope import Envelope
from sagaflow.events import Event, EventRegistry
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
from sagaflow.orchestration.orchestrator import RecoveryReport
from sagaflow.orchestration.remote import RemoteSteps, command_handler
from sagaflow.retry import RetryPolicy
from sagaflow.serialization import HmacSigner, JsonSerializer
from sagaflow.stores import MemorySagaStore, open_store
from sagaflow.transports.memory import MemoryTransport

if TYPE_CHECKING:
    from sagaflow.stores.postgres import PostgresSagaStore
    from sagaflow.stores.sqlite import SQLiteSagaStore

__all__ = [
    "Claim",
    "Clock",
    "DeadLetter",
    "Envelope",
    "Event",
    "EventBus",
    "EventRegistry",
    "HmacSigner",
    "JsonSerializer",
    "MemorySagaStore",
    "MemoryTransport",
    "Middleware",
    "Orchestrator",
    "Parallel",
    "PostgresSagaStore",
    "RecordKind",
    "RecoveryReport",
    "RemoteSteps",
    "RetryPolicy",
    "SQLiteSagaStore",
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
    "command_handler",
    "current_envelope",
    "errors",
    "open_store",
]


def __getattr__(name: str) -> Any:
    """Load the durable stores (and their drivers) on first use."""
    if name in ("SQLiteSagaStore", "PostgresSagaStore"):
        import sagaflow.stores

        return getattr(sagaflow.stores, name)
    raise AttributeError(f"module 'sagaflow' has no attribute {name!r}")
