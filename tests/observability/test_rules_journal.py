"""Rules of the journals, the batching writer and `Journaling` that no other test exercised."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid

import pytest
from pydantic import BaseModel

from sagaflow import MemorySagaStore, Orchestrator, RetryPolicy, Saga, SagaStatus, Step
from sagaflow.errors import ConfigurationError
from sagaflow.observability import (
    EntryKind,
    FlowJournal,
    JournalEntry,
    Journaling,
    JournalWriter,
    MemoryJournal,
    load_trace,
    open_journal,
)
from sagaflow.observability.sqlite import SqliteJournal
from sagaflow.testing import Fault, inject_faults

from ._support import drop_table


def entry(cid: str, at: float, **fields: object) -> JournalEntry:
    values: dict[str, object] = {"kind": EntryKind.PUBLISH, "event_id": f"{cid}-{at}"}
    values.update(fields)
    return JournalEntry(correlation_id=cid, at=at, **values)  # type: ignore[arg-type]


class State(BaseModel):
    n: int = 0


async def act(ctx: object) -> None:
    return None


NO_WAIT = RetryPolicy(max_attempts=2, initial_delay=0)
SAGA = Saga(
    "undo-twice",
    state=State,
    retry=RetryPolicy.no_retry(),
    compensation_retry=NO_WAIT,
    steps=[Step("reserve", act, compensate=act), Step("charge", act, compensate=act)],
)


# -- MemoryJournal ------------------------------------------------------------------------------


async def test_pruning_every_entry_of_a_flow_forgets_the_flow():
    journal = MemoryJournal()
    await journal.write([entry("old", 1.0), entry("old", 2.0), entry("new", 5.0)])
    assert await journal.prune(before=3.0) == 2
    assert await journal.read("old") == []
    assert [f.correlation_id for f in await journal.flows(since=0)] == ["new"]
    assert [e.correlation_id for e in journal.entries()] == ["new"]


# -- JournalWriter ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{"batch_size": 0}, {"interval": 0}, {"interval": -1}, {"batch_size": 10, "max_buffer": 9}],
)
def test_writer_refuses_settings_that_cannot_work(options):
    with pytest.raises(ConfigurationError, match="batch_size >= 1, interval > 0"):
        JournalWriter(MemoryJournal(), **options)


def test_entries_added_without_an_event_loop_are_written_by_the_next_flush():
    journal = MemoryJournal()
    writer = JournalWriter(journal)
    writer.add(entry("f", 1.0))  # a sync caller: no loop, no background task
    writer.add(entry("f", 2.0))
    assert journal.entries() == []
    asyncio.run(writer.flush())
    assert [e.at for e in journal.entries()] == [1.0, 2.0]
    assert writer.written == 2 and writer.dropped == 0


# -- Journaling -------------------------------------------------------------------------------


async def test_journaling_as_a_context_manager_writes_what_is_buffered_and_closes():
    class Closing(MemoryJournal):
        closed = 0

        async def close(self) -> None:
            self.closed += 1

    journal = Closing()
    async with Journaling(journal, service="svc", interval=3600) as journaling:
        journaling.writer.add(entry("f", 1.0))
        assert journal.entries() == []  # still buffered
    assert [e.correlation_id for e in journal.entries()] == ["f"]
    assert journal.closed == 1
    # Closed: later entries are dropped, not written.
    journaling.writer.add(entry("f", 2.0))
    assert journaling.writer.dropped == 1


def test_journaling_repr_names_the_service_but_no_database_password():
    from sagaflow.observability.postgres import PostgresJournal

    journaling = Journaling(PostgresJournal("postgresql://app:s3cret@db/prod"), service="pay")
    text = repr(journaling)
    assert "service='pay'" in text and "sagaflow_journal" in text
    assert "s3cret" not in text and "app:" not in text
    assert repr(SqliteJournal("/tmp/j.db")) == "SqliteJournal('/tmp/j.db')"


async def test_failed_compensation_attempts_are_journaled_with_retry_then_final():
    journal = MemoryJournal()
    journaling = Journaling(journal, service="orders")
    saga = inject_faults(
        SAGA,
        steps={"charge": Fault.raise_on(1)},
        compensations={"reserve": Fault.raise_on(1, 2, error=ValueError("refund refused"))},
    )
    result = await Orchestrator(MemorySagaStore(), hooks=[journaling.hooks]).run(
        saga, State(), saga_id="s1"
    )
    assert result.status is SagaStatus.FAILED
    await journaling.flush()
    failed = [e for e in await journal.read("s1") if e.kind is EntryKind.COMPENSATION_FAILED]
    assert [(e.step, e.attempt, e.outcome) for e in failed] == [
        ("reserve", 1, "retry"),
        ("reserve", 2, "final"),
    ]
    assert all(e.error_type == "ValueError" and e.error_message == "refund refused" for e in failed)
    assert all(e.duration is not None and e.duration >= 0 for e in failed)
    trace = await load_trace(journal, "s1")
    assert trace.outcome() == "failed"


# -- flows(): failures agree with the trace ---------------------------------------------------


async def _compensated_saga_flow(journal: FlowJournal) -> None:
    journaling = Journaling(journal, service="orders")
    saga = inject_faults(SAGA, steps={"charge": Fault.raise_on(1)})
    result = await Orchestrator(MemorySagaStore(), hooks=[journaling.hooks]).run(
        saga, State(), saga_id="comp"
    )
    assert result.status is SagaStatus.COMPENSATED
    await journaling.close(close_journal=False)


async def _dead_letter_without_error(journal: FlowJournal) -> None:
    await journal.write(
        [
            entry("dl", 1.0, event_type="t.a"),
            entry("dl", 2.0, kind=EntryKind.DEAD_LETTER, event_type="t.a", group="g"),
        ]
    )


async def check_failures_agree(journal: FlowJournal) -> None:
    await _compensated_saga_flow(journal)
    await _dead_letter_without_error(journal)
    summaries = {f.correlation_id: f for f in await journal.flows(since=0)}
    for cid in ("comp", "dl"):
        trace = await load_trace(journal, cid)
        # FlowSummary.failures counts what FlowTrace.failures() shows: a compensated
        # saga's end only repeats its step's error; a dead letter is a failure.
        assert summaries[cid].failures == len(trace.failures()) == 1, cid
    failed = {f.correlation_id for f in await journal.flows(since=0, failed_only=True)}
    assert failed == {"comp", "dl"}
    await journal.close()


async def test_flow_failures_agree_with_the_trace_in_memory():
    await check_failures_agree(MemoryJournal())


async def test_flow_failures_agree_with_the_trace_in_sqlite(tmp_path):
    await check_failures_agree(SqliteJournal(str(tmp_path / "j.db")))


async def test_flow_failures_agree_with_the_trace_in_postgres(postgres_url):
    from sagaflow.observability.postgres import PostgresJournal

    table = f"sagaflow_journal_{uuid.uuid4().hex[:12]}"
    journal = PostgresJournal(postgres_url, table=table)
    try:
        await check_failures_agree(journal)
    finally:
        await drop_table(postgres_url, table)


# -- SqliteJournal ----------------------------------------------------------------------------


async def test_sqlite_write_is_all_or_nothing_and_the_journal_stays_usable(tmp_path):
    journal = SqliteJournal(str(tmp_path / "j.db"))
    good = entry("f", 1.0)
    unbindable = entry("f", 2.0, detail=object())  # sqlite cannot store an object
    with pytest.raises(sqlite3.Error):
        await journal.write([good, unbindable])
    assert await journal.read("f") == []  # the good entry of the failed batch is not kept
    await journal.write([good])
    assert await journal.read("f") == [good]
    await journal.close()


async def test_sqlite_file_that_is_not_a_journal_fails_and_is_left_alone(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE sagaflow_journal (x INTEGER)")  # someone else's table
    conn.commit()
    conn.close()
    journal = SqliteJournal(str(path))
    with pytest.raises(sqlite3.OperationalError):
        await journal.read("f")
    # The schema change was rolled back as a whole: no index was left half-made.
    conn = sqlite3.connect(path)
    names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert names == {"sagaflow_journal"}
    # No half-open connection is kept: the next call tries again (and fails the same way).
    with pytest.raises(sqlite3.OperationalError):
        await journal.read("f")
    await journal.close()


async def test_sqlite_garbage_file_raises_a_database_error(tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database" * 100)
    journal = SqliteJournal(str(path))
    with pytest.raises(sqlite3.DatabaseError):
        await journal.write([entry("f", 1.0)])
    await journal.close()
    assert path.read_bytes() == b"this is not a database" * 100


# -- PostgresJournal --------------------------------------------------------------------------


def test_open_journal_accepts_both_postgres_schemes():
    from sagaflow.observability.postgres import PostgresJournal

    for url in ("postgresql://u@h/db", "POSTGRES://u@h/db"):
        journal = open_journal(url)
        assert isinstance(journal, PostgresJournal) and journal.url == url


@pytest.mark.parametrize("table", ["Journal", "j; DROP TABLE x", "1st", "", "a" * 64])
def test_postgres_journal_refuses_unsafe_table_names(table):
    from sagaflow.observability.postgres import PostgresJournal

    with pytest.raises(ConfigurationError, match="invalid journal table name"):
        PostgresJournal("postgresql://u@h/db", table=table)


async def test_postgres_empty_write_does_not_touch_the_database():
    from sagaflow.observability.postgres import PostgresJournal

    # Nothing listens on port 1: any connection attempt would fail.
    journal = PostgresJournal("postgresql://u@127.0.0.1:1/db", connect_timeout=1)
    await journal.write([])
    await journal.close()


async def test_postgres_journal_reconnects_after_losing_its_connection(postgres_url):
    import psycopg

    from sagaflow.observability.postgres import PostgresJournal

    table = f"sagaflow_journal_{uuid.uuid4().hex[:12]}"
    journal = PostgresJournal(postgres_url, table=table)
    try:
        await journal.write([entry("f", 1.0)])
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as admin:
            cursor = await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND query LIKE %s",
                (f"%{table}%",),
            )
            assert [row[0] for row in await cursor.fetchall()] == [True]
        with pytest.raises(psycopg.OperationalError):
            await journal.read("f")
        # The lost connection was dropped: the next call reconnects.
        assert [e.at for e in await journal.read("f")] == [1.0]
        await journal.write([entry("f", 2.0)])
        assert len(await journal.read("f")) == 2
    finally:
        await journal.close()
        await journal.close()
        await drop_table(postgres_url, table)
