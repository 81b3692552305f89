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
from sagaflow.choreography.inbox_sqlite import SQLiteInbox
from sagaflow.choreography.outbox import OutboxRelay
from sagaflow.clock import Clock, SystemClock
from sagaflow.envelope import Envelope
from sagaflow.events import Event, EventRegistry
from sagaflow.observability import FlowJournal, Journaling, MemoryJournal, Topology, open_journal
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
from sagaflow.transports import open_transport
from sagaflow.transports.memory import MemoryTransport

if TYPE_CHECKING:
    from sagaflow.choreography.inbox_postgres import PostgresInbox
    from sagaflow.choreography.outbox_postgres import PostgresOutbox
    from sagaflow.choreography.outbox_sqlite import SQLiteOutbox
    from sagaflow.stores.postgres import PostgresSagaStore
    from sagaflow.stores.sqlite import SQLiteSagaStore
    from sagaflow.transports.nats import NatsJetStreamTransport
    from sagaflow.transports.postgres import PostgresTransport
    from sagaflow.transports.rabbitmq import RabbitMQTransport
    from sagaflow.transports.redis import RedisStreamsTransport

__all__ = [
    "Claim",
    "Clock",
    "DeadLetter",
    "Envelope",
    "Event",
    "EventBus",
    "EventRegistry",
    "FlowJournal",
    "HmacSigner",
    "Journaling",
    "JsonSerializer",
    "MemoryJournal",
    "MemorySagaStore",
    "MemoryTransport",
    "Middleware",
    "NatsJetStreamTransport",
    "Orchestrator",
    "OutboxRelay",
    "Parallel",
    "PostgresInbox",
    "PostgresOutbox",
    "PostgresSagaStore",
    "PostgresTransport",
    "RabbitMQTransport",
    "RecordKind",
    "RecoveryReport",
    "RedisStreamsTransport",
    "RemoteSteps",
    "RetryPolicy",
    "SQLiteInbox",
    "SQLiteOutbox",
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
    "Topology",
    "__version__",
    "command_handler",
    "current_envelope",
    "errors",
    "open_journal",
    "open_store",
    "open_transport",
]


_LAZY = {
    "SQLiteSagaStore": "sagaflow.stores.sqlite",
    "PostgresSagaStore": "sagaflow.stores.postgres",
    "SQLiteOutbox": "sagaflow.choreography.outbox_sqlite",
    "PostgresOutbox": "sagaflow.choreography.outbox_postgres",
    "PostgresInbox": "sagaflow.choreography.inbox_postgres",
    "RedisStreamsTransport": "sagaflow.transports.redis",
    "NatsJetStreamTransport": "sagaflow.transports.nats",
    "RabbitMQTransport": "sagaflow.transports.rabbitmq",
    "PostgresTransport": "sagaflow.transports.postgres",
}


def __getattr__(name: str) -> Any:
    """Load durable stores, outboxes, inboxes and broker transports on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sagaflow' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
