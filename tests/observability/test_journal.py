"""The flow journal: backends, the batching writer, and failure isolation."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sagaflow.choreography import EventBus
from sagaflow.errors import ConfigurationError
from sagaflow.events import Event, EventRegistry
from sagaflow.observability import (
    EntryKind,
    FlowJournal,
    JournalEntry,
    Journaling,
    JournalWriter,
    MemoryJournal,
    open_journal,
)
from sagaflow.observability.sqlite import SqliteJournal

from ._support import drop_table

registry = EventRegistry()


class Pinged(Event, type="test.journal.pinged.v1", registry=registry):
    n: int


class Ponged(Event, type="test.journal.ponged.v1", registry=registry):
    n: int


def entry(cid: str, kind: EntryKind, at: float, **fields: object) -> JournalEntry:
    return JournalEntry(correlation_id=cid, kind=kind, at=at, **fields)  # type: ignore[arg-type]


async def exercise(journal: FlowJournal) -> None:
    await journal.write(
        [
            entry("f1", EntryKind.PUBLISH, 2.0, event_id="b", event_type="t.b", group="g"),
            entry("f1", EntryKind.PUBLISH, 1.0, event_id="a", event_type="t.a", service="s"),
            entry("f2", EntryKind.PUBLISH, 1.5, event_id="c", event_type="t.a"),
            entry(
                "f1",
                EntryKind.HANDLE,
                1.2,
                event_id="a",
                group="g",
                attempt=2,
                attempts=3,
                duration=0.5,
                outcome="failed",
                error_type="E",
                error_message="m",
            ),
        ]
    )
    flow = await journal.read("f1")
    assert [e.event_id for e in flow] == ["a", "a", "b"]
    assert flow[1].attempts == 3 and flow[1].error_type == "E" and flow[1].kind is EntryKind.HANDLE
    assert flow[2].group == "g"
    assert await journal.read("nope") == []
    found = await journal.published("t.a", since=0, until=10)
    assert [e.correlation_id for e in found] == ["f1", "f2"]
    assert await journal.published("t.a", since=1.2, until=10) == [found[1]]
    flows = await journal.flows(since=0)
    assert [(f.correlation_id, f.first, f.last, f.entries, f.failures) for f in flows] == [
        ("f1", 1.0, 2.0, 3, 1),
        ("f2", 1.5, 1.5, 1, 0),
    ]
    assert [f.correlation_id for f in await journal.flows(since=0, failed_only=True)] == ["f1"]
    assert [f.correlation_id for f in await journal.flows(since=0, limit=1)] == ["f1"]
    assert await journal.flows(since=3) == []
    assert await journal.prune(before=1.4) == 2
    assert [e.event_id for e in await journal.read("f1")] == ["b"]
    assert await journal.prune(before=1.4) == 0
    await journal.close()
    await journal.close()


async def test_memory_journal():
    await exercise(MemoryJournal())


async def test_sqlite_journal(tmp_path):
    await exercise(SqliteJournal(str(tmp_path / "j.db")))


async def test_sqlite_journal_shared_by_two_writers(tmp_path):
    path = str(tmp_path / "j.db")
    first, second = SqliteJournal(path), SqliteJournal(path)
    batches = [
        [entry("f", EntryKind.PUBLISH, i + k / 100, event_id=f"{i}-{k}") for k in range(50)]
        for i in range(10)
    ]
    await asyncio.gather(*(j.write(b) for j, b in zip([first, second] * 5, batches, strict=True)))
    assert len(await first.read("f")) == 500
    await first.close()
    await second.close()


@pytest.mark.services
async def test_postgres_journal(postgres_url):
    import uuid

    from sagaflow.observability.postgres import PostgresJournal

    table = f"journal_{uuid.uuid4().hex[:8]}"
    journal = PostgresJournal(postgres_url, table=table)
    try:
        await exercise(journal)
    finally:
        await drop_table(postgres_url, table)


def test_open_journal_urls(tmp_path):
    assert isinstance(open_journal("memory://"), MemoryJournal)
    journal = open_journal(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(journal, SqliteJournal) and journal.path == f"{tmp_path}/x.db"
    assert open_journal("sqlite://:memory:").path == ":memory:"  # type: ignore[attr-defined]
    for bad in ("nothing", "ftp://x", "sqlite://"):
        with pytest.raises(ConfigurationError):
            open_journal(bad)


class Broken:
    def __init__(self) -> None:
        self.fail = True
        self.written: list[JournalEntry] = []

    async def write(self, entries):
        if self.fail:
            raise OSError("disk full")
        self.written.extend(entries)

    async def read(self, correlation_id):
        return []

    async def published(self, event_type, *, since, until, limit=10_000):
        return []

    async def prune(self, *, before):
        return 0

    async def flows(self, *, since, failed_only=False, limit=100):
        return []

    async def close(self):
        pass


async def test_writer_batches_in_background():
    journal = MemoryJournal()
    writer = JournalWriter(journal, batch_size=10, interval=0.01)
    for i in range(25):
        writer.add(entry("f", EntryKind.PUBLISH, i))
    assert len(journal.entries()) == 0  # nothing written on the caller's path
    await asyncio.sleep(0.05)
    assert len(journal.entries()) == 25
    await writer.close()
    writer.add(entry("f", EntryKind.PUBLISH, 99))
    assert writer.dropped == 1


async def test_writer_drops_when_the_buffer_is_full():
    writer = JournalWriter(MemoryJournal(), batch_size=2, interval=10, max_buffer=3)
    for i in range(5):
        writer.add(entry("f", EntryKind.PUBLISH, i))
    assert writer.dropped == 2
    await writer.close()
    assert writer.written == 3


async def test_a_failing_journal_never_breaks_a_flow(caplog):
    broken = Broken()
    journaling = Journaling(broken, interval=0.01)  # type: ignore[arg-type]
    seen: list[int] = []
    async with EventBus(registry=registry, middleware=[journaling]) as bus:

        @bus.handler(Pinged, group="g", emits=[])
        async def on_ping(event: Pinged) -> None:
            seen.append(event.n)

        with caplog.at_level(logging.WARNING, logger="sagaflow.observability"):
            for n in range(3):
                await bus.publish(Pinged(n=n))
            await bus.join()
            await journaling.flush()
    assert seen == [0, 1, 2]
    assert journaling.writer.dropped == 6
    warnings = [r for r in caplog.records if "journal write failed" in r.getMessage()]
    assert len(warnings) == 1  # said once, not per batch
    broken.fail = False
    await bus_free_publish(journaling)
    assert broken.written and journaling.writer.dropped == 6
    await journaling.close()


async def bus_free_publish(journaling: Journaling) -> None:
    journaling.writer.add(entry("f", EntryKind.PUBLISH, 1.0))
    await journaling.flush()


async def test_journaling_records_publish_handle_retry_and_dead_letter():
    journal = MemoryJournal()
    journaling = Journaling(journal, service="svc")
    from sagaflow.retry import RetryPolicy

    no_wait = RetryPolicy(max_attempts=2, initial_delay=0.001, max_delay=0.001)
    async with EventBus(
        registry=registry,
        middleware=[journaling],
        on_dead_letter=journaling.on_dead_letter,
        retry=no_wait,
        redelivery=RetryPolicy(max_attempts=1),
        source="/svc",
    ) as bus:

        @bus.handler(Pinged, group="pinger", emits=[Ponged])
        async def on_ping(event: Pinged) -> None:
            await bus.publish(Ponged(n=event.n))

        @bus.handler(Ponged, group="ponger", emits=[])
        async def on_pong(event: Ponged) -> None:
            raise ValueError("no stock")

        root = await bus.publish(Pinged(n=7), correlation_id="flow-1")
        await bus.join()
    await journaling.close()
    flow = await journal.read("flow-1")
    kinds = [(e.kind.value, e.event_type, e.group) for e in flow]
    assert kinds == [
        ("publish", "test.journal.pinged.v1", None),
        ("handle", "test.journal.pinged.v1", "pinger"),
        ("publish", "test.journal.ponged.v1", "pinger"),
        ("handle", "test.journal.ponged.v1", "ponger"),
        ("dead_letter", "test.journal.ponged.v1", "ponger"),
    ]
    publish, handled, child, failed, letter = flow
    assert publish.service == "svc" and publish.event_id == root.id
    assert handled.outcome == "acked" and handled.attempts == 1 and handled.duration is not None
    assert child.causation_id == root.id
    assert failed.outcome == "failed" and failed.attempts == 2 and failed.error_type == "ValueError"
    assert letter.error_type == "ValueError" and "handler failed" in (letter.detail or "")
    assert letter.event_id == child.event_id and letter.attempts == 2
    # No payloads: the event's field value appears nowhere.
    assert all(not any(v == 7 or v == "7" for v in vars_of(e)) for e in flow)


def vars_of(e: JournalEntry) -> list[object]:
    return [getattr(e, name) for name in e._fields if name != "attempt"]
