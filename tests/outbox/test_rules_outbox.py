"""Rules of the outbox, the relay and the durable inboxes that no other test exercised.

Each test names the rule it checks (module docstrings of
``sagaflow.choreography.outbox*``/``inbox*``, docs/outbox.md) and fails if the
rule breaks. PostgreSQL tests are at the end.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Sequence

import pytest
import pytest_asyncio

from sagaflow import EventBus
from sagaflow.choreography.inbox_sqlite import SQLiteInbox
from sagaflow.choreography.outbox import OutboxRelay
from sagaflow.choreography.outbox_sqlite import SQLiteOutbox
from sagaflow.errors import (
    ConfigurationError,
    PublishError,
    SchemaVersionError,
    StoreError,
    StoreUnavailableError,
    TransportClosedError,
)
from sagaflow.events import Event, default_registry
from sagaflow.retry import RetryPolicy
from sagaflow.serialization import JsonSerializer
from sagaflow.transports.base import Message

from ._support import (
    ItemAdded,
    OffsetClock,
    RecordingTransport,
    drop_schema,
    new_schema,
    numbers_by_key,
    registry,
)

decode = JsonSerializer(registry).decode


class DefaultRegistered(Event, type="test-rules-outbox.default.v1"):
    """Registered in the default registry: what an outbox without a bus encodes."""

    n: int


async def wait_until(predicate, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest_asyncio.fixture
async def outbox(tmp_path):
    box = SQLiteOutbox(tmp_path / "app.db", bus=EventBus(registry=registry, source="/rules"))
    yield box
    await box.close()


def add_items(outbox: SQLiteOutbox, keys: int, per_key: int) -> None:
    conn = outbox.connect()
    with conn:
        for n in range(per_key):
            for k in range(keys):
                outbox.add(conn, ItemAdded(key=f"k{k}", n=n), key=f"k{k}")
    conn.close()


def count_rows(outbox: SQLiteOutbox) -> int:
    conn = sqlite3.connect(outbox.path)
    try:
        return int(conn.execute("SELECT count(*) FROM sagaflow_outbox").fetchone()[0])
    finally:
        conn.close()


# -- the relay -----------------------------------------------------------------------


def test_relay_options_are_checked(outbox):
    # Rule (OutboxRelay): lease, poll_interval and cleanup_interval are positive,
    # retention is >= 0 or None.
    transport = RecordingTransport()
    for options in ({"lease": 0}, {"poll_interval": -1}, {"cleanup_interval": 0}):
        with pytest.raises(ConfigurationError, match="positive"):
            OutboxRelay(outbox, transport, **options)
    with pytest.raises(ConfigurationError, match="retention"):
        OutboxRelay(outbox, transport, retention=-1)
    OutboxRelay(outbox, transport, retention=None)


async def test_start_is_idempotent_and_stop_without_start_is_a_no_op(outbox):
    # Rule (OutboxRelay.start/stop): start is idempotent; stop returns at once
    # when nothing runs.
    relay = OutboxRelay(outbox, RecordingTransport(), poll_interval=0.05)
    await relay.stop()
    assert "idle" in repr(relay)
    await relay.start()
    first = [t for t in asyncio.all_tasks() if t.get_name() == "sagaflow-relay"]
    await relay.start()
    again = [t for t in asyncio.all_tasks() if t.get_name() == "sagaflow-relay"]
    assert len(first) == 1 and first == again
    assert "running" in repr(relay)
    await relay.stop()
    assert not relay.running


class StuckTransport(RecordingTransport):
    """Publishing never completes (a broker that stopped answering)."""

    def __init__(self) -> None:
        super().__init__()
        self.called = asyncio.Event()

    async def publish(self, messages: Sequence[Message]) -> None:
        self.called.set()
        await asyncio.Event().wait()


async def test_stop_cancels_a_stuck_round_and_its_rows_are_published_after_the_lease(outbox):
    # Rule (OutboxRelay.stop): stop waits at most ``timeout`` for the round in
    # flight, then cancels it; its rows stay leased and are published again
    # after their lease (at-least-once).
    add_items(outbox, keys=1, per_key=2)
    clock = OffsetClock()
    stuck = StuckTransport()
    relay = OutboxRelay(outbox, stuck, clock=clock, lease=30, owner="stuck")
    await relay.start()
    await asyncio.wait_for(stuck.called.wait(), 5)
    await asyncio.wait_for(relay.stop(timeout=0.1), 5)
    assert not relay.running
    assert await outbox.pending() == 2
    healthy = RecordingTransport()
    other = OutboxRelay(outbox, healthy, clock=clock, lease=30)
    assert await other.drain() == 0  # still leased by the stuck relay
    clock.advance(31)
    assert await other.drain() == 2
    assert numbers_by_key(healthy.published, decode) == {"k0": [0, 1]}


class FlakyClaims(SQLiteOutbox):
    """The first ``failures`` claims fail as if the database were away."""

    def __init__(self, path, failures: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(path, bus=EventBus(registry=registry))
        self.failures = failures
        self.claims = 0

    async def claim(self, *, owner: str, limit: int, lease: float, now: float):  # type: ignore[no-untyped-def]
        self.claims += 1
        if self.claims <= self.failures:
            raise StoreUnavailableError("database is away")
        return await super().claim(owner=owner, limit=limit, lease=lease, now=now)


async def test_a_failed_round_is_counted_and_retried_with_backoff(tmp_path):
    # Rule (OutboxRelay.run): database trouble is logged and retried with
    # backoff; the loop keeps running and publishes once the database is back.
    outbox = FlakyClaims(tmp_path / "app.db", failures=2)
    add_items(outbox, keys=1, per_key=1)
    transport = RecordingTransport()
    relay = OutboxRelay(outbox, transport, poll_interval=0.02)
    async with relay:
        await wait_until(lambda: len(transport.published) == 1)
    assert relay.stats.errors == 2
    assert relay.stats.published == 1
    await outbox.close()


class ClosesMidBatch(RecordingTransport):
    """Refuses a batch (so the relay sorts it out one by one), then is closed."""

    async def publish(self, messages: Sequence[Message]) -> None:
        self.calls.append(list(messages))
        if len(messages) > 1:
            raise PublishError("batch refused")
        raise TransportClosedError("closed")


async def test_a_transport_closed_while_sorting_out_a_batch_stops_the_relay(outbox, caplog):
    # Rule (OutboxRelay.run): the loop ends when the transport is closed, and
    # the rows of that round are not lost (published again after their lease).
    add_items(outbox, keys=3, per_key=1)
    transport = ClosesMidBatch()
    relay = OutboxRelay(outbox, transport)
    await asyncio.wait_for(relay.run(), 5)
    assert "transport is closed" in caplog.text
    assert [len(call) for call in transport.calls] == [3, 1]
    assert await outbox.pending() == 3
    assert relay.stats.parked == 0


async def test_loose_order_holds_back_a_keys_later_rows_while_the_broker_is_down(outbox):
    # Rule (strict_order=False): a failed publish holds back the rest of its
    # key (released, waiting for the retry) and nothing else; each key is
    # published in order once the broker is back.
    add_items(outbox, keys=2, per_key=3)
    clock = OffsetClock()
    transport = RecordingTransport(down=True)
    retry = RetryPolicy(max_attempts=None, initial_delay=10.0, jitter=False)
    relay = OutboxRelay(outbox, transport, clock=clock, retry=retry, strict_order=False)
    await relay.drain()
    assert relay.stats.failed_publishes == 2  # the first row of each key
    assert relay.stats.released == 4  # their later rows, unpublished
    assert relay.stats.parked == 0
    transport.down = False
    assert await relay.drain() == 0  # waiting for the retry time
    clock.advance(11)
    assert await relay.drain() == 6
    assert numbers_by_key(transport.published, decode) == {"k0": [0, 1, 2], "k1": [0, 1, 2]}


class CountingClaims(SQLiteOutbox):
    def __init__(self, path) -> None:  # type: ignore[no-untyped-def]
        super().__init__(path, bus=EventBus(registry=registry))
        self.claims = 0

    async def claim(self, **options):  # type: ignore[no-untyped-def]
        self.claims += 1
        return await super().claim(**options)


async def test_retention_cleanup_runs_every_cleanup_interval(tmp_path):
    # Rule (OutboxRelay retention/cleanup_interval): sent rows are deleted
    # after ``retention`` seconds by a cleanup that runs every
    # ``cleanup_interval`` seconds, not on every round.
    outbox = CountingClaims(tmp_path / "app.db")
    add_items(outbox, keys=1, per_key=3)
    clock = OffsetClock()
    relay = OutboxRelay(
        outbox,
        RecordingTransport(),
        clock=clock,
        retention=5,
        cleanup_interval=3600,
        poll_interval=0.01,
    )
    async with relay:
        await wait_until(lambda: relay.stats.published == 3)
        clock.advance(10)  # past the retention, before the next cleanup is due
        seen = outbox.claims
        await wait_until(lambda: outbox.claims >= seen + 3)
        assert count_rows(outbox) == 3
        assert relay.stats.cleaned == 0
        clock.advance(3600)
        await wait_until(lambda: relay.stats.cleaned == 3)
    assert count_rows(outbox) == 0
    await outbox.close()


async def test_a_running_relay_with_retention_zero_deletes_rows_as_it_publishes(outbox):
    # Rule (retention=0): rows are deleted as soon as they are published; the
    # periodic cleanup has nothing to do.
    add_items(outbox, keys=2, per_key=2)
    relay = OutboxRelay(outbox, RecordingTransport(), retention=0, poll_interval=0.01)
    async with relay:
        await wait_until(lambda: relay.stats.published == 4)
    assert count_rows(outbox) == 0
    assert relay.stats.cleaned == 0


# -- SQLiteOutbox ----------------------------------------------------------------------


async def test_without_a_bus_the_default_registry_and_source_are_used(tmp_path):
    # Rule (SQLiteOutbox bus=): default, a plain EventBus over the default registry.
    outbox = SQLiteOutbox(tmp_path / "app.db")
    conn = outbox.connect()
    with conn:
        message = outbox.add(conn, DefaultRegistered(n=1))
    transport = RecordingTransport()
    assert await OutboxRelay(outbox, transport).drain() == 1
    envelope = JsonSerializer(default_registry).decode(transport.published[0])
    assert envelope.event == DefaultRegistered(n=1)
    assert envelope.source == "sagaflow"
    assert envelope.id == message.id
    conn.close()
    await outbox.close()


async def test_add_many_records_in_order_and_nothing_is_a_no_op(outbox):
    # Rule (SQLiteOutbox.add_many/add_messages): several events, in order, in
    # the caller's transaction; an empty list records nothing (and creates no
    # table).
    conn = outbox.connect()
    with conn:
        outbox.add_messages(conn, [])
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
    with conn:
        messages = outbox.add_many(conn, [ItemAdded(key="a", n=n) for n in range(3)], key="a")
    assert [m.key for m in messages] == ["a", "a", "a"]
    transport = RecordingTransport()
    assert await OutboxRelay(outbox, transport).drain() == 3
    assert [m.id for m in transport.published] == [m.id for m in messages]
    conn.close()


async def test_ready_made_messages_are_checked_before_recording(outbox):
    # Rule (add_messages): a ConfigurationError for an unsafe topic or an empty
    # id, and nothing of the batch is recorded.
    conn = outbox.connect()
    good = Message(id="m1", topic="t.ok", body=b"{}", headers={})
    for bad in (
        Message(id="", topic="t.ok", body=b"{}", headers={}),
        Message(id="m2", topic="bad topic", body=b"{}", headers={}),
    ):
        with pytest.raises(ConfigurationError), conn:
            outbox.add_messages(conn, [good, bad])
    assert await outbox.pending() == 0
    conn.close()


async def test_add_raises_sqlites_own_error_on_the_callers_connection(outbox):
    # Rule (docs/outbox.md): errors on your connection in add are sqlite3's
    # own, raised in your transaction (only a missing table is handled).
    add_items(outbox, keys=1, per_key=1)
    readonly = sqlite3.connect(f"file:{outbox.path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        outbox.add(readonly, ItemAdded(key="a", n=9))
    readonly.close()
    assert await outbox.pending() == 1


# -- SQLiteInbox -----------------------------------------------------------------------


class FixedClock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def now(self) -> float:
        return self.t


async def test_sqlite_inbox_mark_cleans_up_every_cleanup_interval(tmp_path):
    # Rule (SQLiteInbox): marks older than ``retention`` are deleted by the
    # cleanup that ``mark`` runs every ``cleanup_interval`` seconds.
    clock = FixedClock()
    inbox = SQLiteInbox(tmp_path / "inbox.db", retention=100, cleanup_interval=50, clock=clock)
    await inbox.mark("g", "old")
    clock.t += 30
    await inbox.mark("g", "recent")  # before the interval: no cleanup
    assert await inbox.seen("g", "old")
    clock.t += 90  # "old" is 120 s old, "recent" 90 s
    await inbox.mark("g", "new")
    assert not await inbox.seen("g", "old")
    assert await inbox.seen("g", "recent")
    await inbox.close()


async def test_sqlite_inbox_without_retention_keeps_marks(tmp_path):
    # Rule (retention=None keeps marks forever): cleanup() deletes nothing
    # unless given a cutoff.
    clock = FixedClock()
    inbox = SQLiteInbox(tmp_path / "inbox.db", retention=None, clock=clock)
    await inbox.mark("g", "e1")
    clock.t += 10**9
    assert await inbox.cleanup() == 0
    assert await inbox.seen("g", "e1")
    assert await inbox.cleanup(handled_before=clock.t) == 1
    await inbox.close()


async def test_sqlite_seen_in_before_the_table_exists_and_errors_of_your_connection(tmp_path):
    # Rule (SQLiteInbox.seen_in/mark_in): reading before any mark is "not seen";
    # mark_in creates the table in your transaction; other errors on your
    # connection are sqlite3's own.
    inbox = SQLiteInbox(tmp_path / "app.db")
    conn = inbox.connect()
    assert not inbox.seen_in(conn, "g", "e1")
    with conn:
        assert inbox.mark_in(conn, "g", "e1")
    assert inbox.seen_in(conn, "g", "e1")
    readonly = sqlite3.connect(f"file:{inbox.path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        inbox.mark_in(readonly, "g", "e2")
    broken = sqlite3.connect(":memory:")
    broken.execute("CREATE TABLE sagaflow_inbox (unrelated INTEGER)")
    with pytest.raises(sqlite3.OperationalError):
        inbox.seen_in(broken, "g", "e1")
    for c in (conn, readonly, broken):
        c.close()
    await inbox.close()


# -- PostgreSQL --------------------------------------------------------------------------


@pytest_asyncio.fixture
async def schema(postgres_url):
    name = new_schema()
    yield name
    await drop_schema(postgres_url, name)


def _named(url: str, name: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


async def _terminate(url: str, name: str) -> int:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s",
            (name,),
        )
        row = await cursor.fetchone()
        return int(row[0]) if row else 0


@pytest.mark.services
async def test_postgres_outbox_refuses_what_is_not_a_connection_and_adds_nothing_for_nothing(
    postgres_url, schema
):
    # Rule (PostgresOutbox.add): takes your AsyncConnection or AsyncTransaction;
    # an empty add_messages records nothing and does not touch the connection.
    from sagaflow.choreography.outbox_postgres import PostgresOutbox

    outbox = PostgresOutbox(postgres_url, bus=EventBus(registry=registry), schema=schema)
    await outbox.add_messages(object(), [])  # nothing to record: not even looked at
    with pytest.raises(TypeError, match="AsyncConnection or AsyncTransaction, got object"):
        await outbox.add(object(), ItemAdded(key="a", n=0))
    assert await outbox.pending() == 0
    await outbox.close()
    # Rule (PgAccess): a closed outbox raises StoreError, not a driver error.
    with pytest.raises(StoreError, match="closed"):
        await outbox.pending()


@pytest.mark.services
async def test_postgres_schema_is_created_once_for_concurrent_first_calls(postgres_url, schema):
    # Rule (PgAccess.ensure_ready): the schema is created once, under a lock;
    # concurrent first calls wait for it instead of racing.
    from sagaflow.choreography.outbox_postgres import PostgresOutbox

    outbox = PostgresOutbox(postgres_url, bus=EventBus(registry=registry), schema=schema)
    assert await asyncio.gather(*(outbox.pending() for _ in range(5))) == [0] * 5
    await outbox.close()


@pytest.mark.services
async def test_postgres_newer_schema_is_refused(postgres_url, schema):
    # Rule (docs/outbox.md): a database written by a newer sagaflow is refused
    # with SchemaVersionError.
    import psycopg

    from sagaflow.choreography.outbox_postgres import PostgresOutbox

    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"CREATE TABLE {schema}.outbox_meta (key text PRIMARY KEY, value text)")
        await conn.execute(f"INSERT INTO {schema}.outbox_meta VALUES ('schema_version', '99')")
    outbox = PostgresOutbox(postgres_url, bus=EventBus(registry=registry), schema=schema)
    with pytest.raises(SchemaVersionError):
        await outbox.pending()
    await outbox.close()


@pytest.mark.services
async def test_postgres_listener_uses_a_pools_computed_conninfo(postgres_url, schema):
    # Rule (PostgresOutbox wake-ups): relays LISTEN, also with a given pool whose
    # conninfo is computed per connection (an async callable).
    import psycopg
    from psycopg_pool import AsyncConnectionPool

    from sagaflow.choreography.outbox_postgres import PostgresOutbox

    async def conninfo() -> str:
        return postgres_url

    async with AsyncConnectionPool(conninfo, min_size=1, max_size=2, open=False) as pool:
        outbox = PostgresOutbox(pool, bus=EventBus(registry=registry), schema=schema)
        await outbox.create_schema()
        transport = RecordingTransport()
        async with OutboxRelay(outbox, transport, poll_interval=60):
            await asyncio.sleep(0.3)  # the relay now waits on LISTEN, not polling
            async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
                await outbox.add(conn, ItemAdded(key="a", n=0), key="a")
                await conn.commit()
            await wait_until(lambda: len(transport.published) == 1)
        await outbox.close()


@pytest.mark.services
async def test_postgres_lost_connections_recover(postgres_url, schema, caplog):
    # Rules (docs/outbox.md): a lost database connection surfaces as
    # StoreUnavailableError (the relay retries) and the next call works; a lost
    # LISTEN connection only makes the relay poll meanwhile.
    import logging

    import psycopg

    from sagaflow.choreography.outbox_postgres import PostgresOutbox

    name = f"rules_{uuid.uuid4().hex[:12]}"
    url = _named(postgres_url, name)
    outbox = PostgresOutbox(url, bus=EventBus(registry=registry), schema=schema, pool_size=1)
    await outbox.create_schema()
    assert await outbox.pending() == 0
    await outbox.wait_for_work(10)  # starts the listener; woken once it listens
    caplog.set_level(logging.INFO, logger="sagaflow.outbox")
    assert await _terminate(postgres_url, name) >= 2  # the pooled connection and the listener
    with pytest.raises(StoreUnavailableError):
        await outbox.pending()
    assert await outbox.pending() == 0
    await wait_until(lambda: "outbox listener stopped" in caplog.text)
    transport = RecordingTransport()
    async with OutboxRelay(outbox, transport, poll_interval=0.05):
        async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
            await outbox.add(conn, ItemAdded(key="a", n=1), key="a")
            await conn.commit()
        await wait_until(lambda: len(transport.published) == 1)
    await outbox.close()


@pytest_asyncio.fixture
async def pg_inbox(postgres_url, schema):
    from sagaflow.choreography.inbox_postgres import PostgresInbox

    clock = FixedClock()
    box = PostgresInbox(
        postgres_url, schema=schema, retention=100, cleanup_interval=50, clock=clock
    )
    await box.create_schema()
    yield box, clock
    await box.close()


@pytest.mark.services
async def test_postgres_inbox_mark_cleans_up_every_cleanup_interval(pg_inbox):
    # Rule (PostgresInbox): marks older than ``retention`` are deleted by the
    # cleanup that ``mark`` runs every ``cleanup_interval`` seconds.
    inbox, clock = pg_inbox
    await inbox.mark("g", "old")
    clock.t += 30
    await inbox.mark("g", "recent")
    assert await inbox.seen("g", "old")
    clock.t += 90
    await inbox.mark("g", "new")
    assert not await inbox.seen("g", "old")
    assert await inbox.seen("g", "recent")


@pytest.mark.services
async def test_postgres_inbox_options_retention_none_and_closed(postgres_url, schema):
    # Rules (PostgresInbox): retention must be positive or None; None keeps
    # marks; a closed inbox refuses marks with StoreError.
    from sagaflow.choreography.inbox_postgres import PostgresInbox

    with pytest.raises(ConfigurationError):
        PostgresInbox(postgres_url, schema=schema, retention=0)
    clock = FixedClock()
    inbox = PostgresInbox(postgres_url, schema=schema, retention=None, clock=clock)
    await inbox.mark("g", "e1")
    clock.t += 10**9
    assert await inbox.cleanup() == 0
    assert await inbox.seen("g", "e1")
    await inbox.close()
    with pytest.raises(StoreError, match="closed"):
        await inbox.mark("g", "e2")


@pytest.mark.services
async def test_postgres_inbox_failed_marks_raise_store_error(postgres_url, schema):
    # Rule (PostgresInbox.mark): a mark that cannot be written raises (a
    # StoreError), so the pipeline does not ack; every waiting mark of the
    # group-committed batch gets the error.
    import psycopg

    from sagaflow.choreography.inbox_postgres import PostgresInbox

    inbox = PostgresInbox(postgres_url, schema=schema)
    await inbox.create_schema()
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(f"DROP TABLE {schema}.inbox")
    results = await asyncio.gather(
        *(inbox.mark("g", f"e{n}") for n in range(3)), return_exceptions=True
    )
    assert [type(r) for r in results] == [StoreError] * 3
    await inbox.close()


@pytest.mark.services
async def test_postgres_a_failed_row_holds_back_its_key_and_the_rest_is_released(
    postgres_url, schema
):
    # Rule (ordered per key): a failed publish holds back the rest of its key;
    # those rows are given back unpublished (released) and published in order
    # after the retry.
    import psycopg

    from sagaflow.choreography.outbox_postgres import PostgresOutbox

    outbox = PostgresOutbox(postgres_url, bus=EventBus(registry=registry), schema=schema)
    await outbox.create_schema()
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        for n in range(3):
            await outbox.add(conn, ItemAdded(key="a", n=n), key="a")
        await conn.commit()
    clock = OffsetClock()
    transport = RecordingTransport(down=True)
    retry = RetryPolicy(max_attempts=None, initial_delay=10.0, jitter=False)
    relay = OutboxRelay(outbox, transport, clock=clock, retry=retry)
    await relay.drain()
    assert (relay.stats.failed_publishes, relay.stats.released) == (1, 2)
    transport.down = False
    assert await relay.drain() == 0  # the key waits for its first row's retry
    clock.advance(11)
    assert await relay.drain() == 3
    assert numbers_by_key(transport.published, decode) == {"a": [0, 1, 2]}
    await outbox.close()
