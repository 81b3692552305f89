"""SQLiteInbox and PostgresInbox: the Inbox protocol, marks in your transaction, retention."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from sagaflow import EventBus, MemoryTransport
from sagaflow.choreography import Inbox
from sagaflow.choreography.inbox_sqlite import SQLiteInbox
from sagaflow.errors import ConfigurationError

from ._support import ItemAdded, drop_schema, new_schema, registry


class _Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def now(self) -> float:
        return self.t


@pytest_asyncio.fixture(params=["sqlite", "postgres"])
async def inbox(request, tmp_path):
    clock = _Clock()
    if request.param == "sqlite":
        box = SQLiteInbox(tmp_path / "inbox.db", clock=clock, retention=100)
        yield box
        await box.close()
        return
    url = request.getfixturevalue("postgres_url")
    from sagaflow.choreography.inbox_postgres import PostgresInbox

    schema = new_schema()
    box = PostgresInbox(url, schema=schema, clock=clock, retention=100)
    await box.create_schema()
    yield box
    await box.close()
    await drop_schema(url, schema)


async def test_it_is_an_inbox_and_remembers_marks(inbox):
    assert isinstance(inbox, Inbox)
    assert not await inbox.seen("g", "e1")
    await inbox.mark("g", "e1")
    await inbox.mark("g", "e1")  # idempotent
    assert await inbox.seen("g", "e1")
    assert not await inbox.seen("other", "e1")


async def test_concurrent_marks_are_group_committed(inbox):
    await asyncio.gather(*(inbox.mark("g", f"e{i}") for i in range(200)))
    await asyncio.gather(*(inbox.mark("g", f"e{i}") for i in range(0, 200, 2)))
    found = await asyncio.gather(*(inbox.seen("g", f"e{i}") for i in range(201)))
    assert found == [True] * 200 + [False]


async def test_retention_forgets_old_marks(inbox):
    await inbox.mark("g", "old")
    inbox._clock.t += 50
    await inbox.mark("g", "new")
    inbox._clock.t += 60
    assert await inbox.cleanup() == 1
    assert not await inbox.seen("g", "old")
    assert await inbox.seen("g", "new")


async def test_sqlite_marks_commit_and_roll_back_with_the_handlers_writes(tmp_path):
    inbox = SQLiteInbox(tmp_path / "app.db")
    conn = inbox.connect()
    conn.execute("CREATE TABLE effects (event_id TEXT)")
    with conn:
        assert inbox.mark_in(conn, "g", "e1")
        conn.execute("INSERT INTO effects VALUES ('e1')")
    with conn:
        assert not inbox.mark_in(conn, "g", "e1")  # already handled: skip the work
    with pytest.raises(RuntimeError), conn:
        _mark_and_fail(inbox, conn, "e2")
    assert not inbox.seen_in(conn, "g", "e2")
    assert await inbox.seen("g", "e1")
    assert not await inbox.seen("g", "e2")
    assert conn.execute("SELECT event_id FROM effects").fetchall() == [("e1",)]
    with pytest.raises(ConfigurationError):
        inbox.mark_in(conn, "g")  # outside a handler there is no current event
    await inbox.close()


def _mark_and_fail(inbox: SQLiteInbox, conn, event_id: str) -> None:
    inbox.mark_in(conn, "g", event_id)
    conn.execute("INSERT INTO effects VALUES (?)", (event_id,))
    raise RuntimeError("the handler fails after marking")


async def test_a_durable_inbox_survives_a_restart_of_the_bus(tmp_path):
    path = tmp_path / "app.db"
    handled: list[int] = []
    for _ in range(2):
        inbox = SQLiteInbox(path)
        bus = EventBus(MemoryTransport(), registry=registry, inbox=inbox)
        bus.subscribe(ItemAdded, lambda e: handled.append(e.n), group="g")
        async with bus:
            await bus.publish(ItemAdded(key="a", n=1), id="same-event")
            await bus.join()
        await inbox.close()
    assert handled == [1]


async def test_sqlite_handler_marks_in_its_own_transaction(tmp_path):
    inbox = SQLiteInbox(tmp_path / "app.db")
    conn = inbox.connect()
    conn.execute("CREATE TABLE effects (n INTEGER)")
    bus = EventBus(MemoryTransport(), registry=registry, inbox=inbox)

    @bus.handler(ItemAdded, group="effects")
    def apply(event: ItemAdded) -> None:
        with conn:
            if inbox.mark_in(conn, "effects"):  # the id comes from the current event
                conn.execute("INSERT INTO effects VALUES (?)", (event.n,))

    async with bus:
        for _ in range(3):
            await bus.publish(ItemAdded(key="a", n=7), id="one-event")
        await bus.join()
    assert conn.execute("SELECT n FROM effects").fetchall() == [(7,)]
    assert bus.stats.handled + bus.stats.duplicates == 3
    await inbox.close()


async def test_postgres_mark_in_lets_exactly_one_concurrent_copy_commit(postgres_url):
    import psycopg

    from sagaflow.choreography.inbox_postgres import PostgresInbox

    schema = new_schema()
    inbox = PostgresInbox(postgres_url, schema=schema)
    await inbox.create_schema()
    try:
        async with (
            await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as a,
            await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as b,
        ):

            async def handle(conn, pause: float) -> bool:
                async with conn.transaction():
                    first = await inbox.mark_in(conn, "g", "e1")
                    await asyncio.sleep(pause)
                    return first

            results = await asyncio.gather(handle(a, 0.2), handle(b, 0.0))
            assert sorted(results) == [False, True]
            async with b.transaction() as tx:
                assert await inbox.seen_in(tx, "g", "e1")
                assert not await inbox.seen_in(tx, "g", "e2")
        assert await inbox.seen("g", "e1")
    finally:
        await inbox.close()
        await drop_schema(postgres_url, schema)


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ConfigurationError):
        SQLiteInbox(tmp_path / "x.db", retention=0)
    with pytest.raises(ConfigurationError):
        SQLiteInbox(tmp_path / "x.db", table="x;drop")
