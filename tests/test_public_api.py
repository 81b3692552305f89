"""Pins the public API: a change here is a change users see."""

import subprocess
import sys

import sagaflow
from sagaflow import errors

EXPECTED = [
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


def test_all_is_pinned_and_sorted():
    assert sagaflow.__all__ == EXPECTED
    assert sorted(sagaflow.__all__, key=str.lower) == sorted(EXPECTED, key=str.lower)


def test_every_exported_name_exists_and_is_documented():
    for name in sagaflow.__all__:
        obj = getattr(sagaflow, name)
        if name.startswith("__"):
            continue
        assert getattr(obj, "__doc__", None), f"{name} has no docstring"


def test_error_tree_docstring_names_every_error():
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert name in doc, f"{name} missing from the drawn tree"
        assert issubclass(getattr(errors, name), errors.SagaflowError)


def test_import_does_not_pull_optional_clients():
    code = (
        "import sys, sagaflow; "
        "bad = [m for m in ('redis', 'nats', 'aio_pika', 'psycopg', 'pytest', 'hypothesis') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
