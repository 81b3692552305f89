"""PostgresOutbox and OutboxRelay against a live PostgreSQL: atomicity, order, several relays."""

from __future__ import annotations

import asyncio
import random

import pytest
import pytest_asyncio

from sagaflow import EventBus
from sagaflow.choreography.outbox import OutboxRelay
from sagaflow.retry import RetryPolicy
from sagaflow.serialization import JsonSerializer

from ._support import (
    ItemAdded,
    OffsetClock,
    RecordingTransport,
    assert_ordered,
    drop_schema,
    new_schema,
    numbers_by_key,
    registry,
)

pytestmark = pytest.mark.services

psycopg = pytest.importorskip("psycopg")
outbox_postgres = pytest.importorskip("sagaflow.choreography.outbox_postgres")
PostgresOutbox = outbox_postgres.PostgresOutbox

_FAST_RETRY = RetryPolicy(max_attempts=None, initial_delay=0.001, max_delay=0.01)
decode = JsonSerializer(registry).decode


@pytest.fixture
def bus() -> EventBus:
    return EventBus(registry=registry, source="/tests")


@pytest_asyncio.fixture
async def schema(postgres_url):
    name = new_schema()
    yield name
    await drop_schema(postgres_url, name)


@pytest_asyncio.fixture
async def outbox(postgres_url, schema, bus):
    box = PostgresOutbox(postgres_url, bus=bus, schema=schema)
    await box.create_schema()
    yield box
    await box.close()


@pytest_asyncio.fixture
async def conn(postgres_url, schema, outbox):
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as c:
        await c.execute(f"CREATE TABLE {schema}.items (key text, n int)")
        yield c


async def _add(outbox, conn, key: str, n: int, **options):
    await conn.execute(f"INSERT INTO {outbox.schema}.items VALUES (%s, %s)", (key, n))
    return await outbox.add(conn, ItemAdded(key=key, n=n), key=key, **options)


class _Rollback(Exception):
    pass


async def _fail_in_transaction(outbox, conn) -> None:
    async with conn.transaction():
        await _add(outbox, conn, "b", 2)
        raise _Rollback


async def test_commit_keeps_the_event_and_rollback_drops_it(outbox, conn):
    async with conn.transaction():
        kept = await _add(outbox, conn, "a", 1)
    with pytest.raises(_Rollback):
        await _fail_in_transaction(outbox, conn)
    rows = await (await conn.execute(f"SELECT key FROM {outbox.schema}.items")).fetchall()
    assert rows == [("a",)]
    transport = RecordingTransport()
    assert await OutboxRelay(outbox, transport).drain() == 1
    assert [m.id for m in transport.published] == [kept.id]


async def test_add_takes_a_transaction_object_and_add_many_keeps_order(outbox, conn):
    async with conn.transaction() as tx:
        await outbox.add(tx, ItemAdded(key="a", n=0), key="a")
        await outbox.add_many(tx, [ItemAdded(key="a", n=i) for i in (1, 2, 3)], key="a")
        await outbox.add_many(tx, [ItemAdded(key="z", n=0)])
    transport = RecordingTransport()
    assert await OutboxRelay(outbox, transport).drain() == 5
    by_key = numbers_by_key(transport.published, decode)
    assert by_key == {"a": [0, 1, 2, 3], "z": [0]}
    envelope = decode(transport.published[0])
    assert envelope.source == "/tests"


async def test_keys_are_numbered_in_commit_order(postgres_url, outbox):
    """A transaction that started later cannot overtake an earlier one of the same key."""
    transport = RecordingTransport()
    async with (
        await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as first,
        await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as second,
        OutboxRelay(outbox, transport, poll_interval=0.01),
    ):

        async def slow() -> None:
            async with first.transaction():
                await outbox.add(first, ItemAdded(key="k", n=0), key="k")
                await asyncio.sleep(0.4)

        async def fast() -> None:
            await asyncio.sleep(0.1)
            async with second.transaction():  # waits for the first's key lock
                await outbox.add(second, ItemAdded(key="k", n=1), key="k")

        await asyncio.gather(slow(), fast())
        async with asyncio.timeout(5):
            while len(transport.published) < 2:
                await asyncio.sleep(0.01)
    assert numbers_by_key(transport.published, decode) == {"k": [0, 1]}


async def test_without_key_locks_a_later_commit_could_overtake(postgres_url, schema, bus):
    """Why serialize_keys exists: sequence numbers are drawn before commit."""
    outbox = PostgresOutbox(postgres_url, bus=bus, schema=schema, serialize_keys=False)
    await outbox.create_schema()
    transport = RecordingTransport()
    async with (
        await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as first,
        await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as second,
        OutboxRelay(outbox, transport, poll_interval=0.01),
    ):

        async def slow() -> None:
            async with first.transaction():
                await outbox.add(first, ItemAdded(key="k", n=0), key="k")
                await asyncio.sleep(0.5)

        async def fast() -> None:
            await asyncio.sleep(0.1)
            async with second.transaction():
                await outbox.add(second, ItemAdded(key="k", n=1), key="k")

        await asyncio.gather(slow(), fast())
        async with asyncio.timeout(5):
            while len(transport.published) < 2:
                await asyncio.sleep(0.01)
    await outbox.close()
    assert numbers_by_key(transport.published, decode) == {"k": [1, 0]}


async def test_several_relays_and_writers_keep_each_keys_order(postgres_url, outbox, schema, bus):
    keys, per_key, writers = 12, 20, 4
    transport = RecordingTransport(delay=0.002, fail_rate=0.1, seed=3)
    # Each relay has its own pool and listener, as separate processes would.
    boxes = [PostgresOutbox(postgres_url, bus=bus, schema=schema) for _ in range(3)]
    relays = [
        OutboxRelay(box, transport, batch_size=10, retry=_FAST_RETRY, poll_interval=0.05)
        for box in boxes
    ]

    async def writer(index: int) -> None:
        rng = random.Random(index)
        mine = [f"k{k}" for k in range(keys) if k % writers == index]
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as c:
            for n in range(per_key):
                async with c.transaction():
                    for key in rng.sample(mine, len(mine)):
                        await outbox.add(c, ItemAdded(key=key, n=n), key=key)
                await asyncio.sleep(rng.uniform(0, 0.005))

    async with asyncio.timeout(30):
        for relay in relays:
            await relay.start()
        await asyncio.gather(*(writer(i) for i in range(writers)))
        while await outbox.pending():
            await asyncio.sleep(0.02)
        for relay in relays:
            await relay.stop()
    for box in boxes:
        await box.close()
    assert all(relay.stats.published > 0 for relay in relays)
    by_key = numbers_by_key(transport.published, decode)
    assert len(by_key) == keys
    for sequence in by_key.values():
        assert_ordered(sequence, per_key)


async def test_a_poison_row_is_parked_with_its_reason(outbox, conn):
    async with conn.transaction():
        await outbox.add(conn, ItemAdded(key="big", n=0, blob="x" * 5000), key="big")
        await outbox.add(conn, ItemAdded(key="big", n=1), key="big")
        await outbox.add(conn, ItemAdded(key="ok", n=0), key="ok")
    transport = RecordingTransport(max_payload=1000)
    relay = OutboxRelay(outbox, transport)
    assert await relay.drain() == 2
    (parked,) = await outbox.parked()
    assert parked.reason.startswith("MessageTooLargeError")
    assert numbers_by_key(transport.published, decode) == {"big": [1], "ok": [0]}
    assert await outbox.requeue(parked.seq)
    transport.features = RecordingTransport().features
    assert await relay.drain() == 1
    assert await outbox.pending() == 0


async def test_notify_wakes_an_idle_relay(outbox, conn):
    transport = RecordingTransport()
    async with OutboxRelay(outbox, transport, poll_interval=60):
        await asyncio.sleep(0.3)  # the relay is now waiting on LISTEN
        async with conn.transaction():
            await _add(outbox, conn, "a", 0)
        async with asyncio.timeout(5):
            while not transport.published:
                await asyncio.sleep(0.01)


async def test_expired_leases_are_claimed_again_and_retention_cleans_up(outbox, conn):
    async with conn.transaction():
        for n in range(3):
            await _add(outbox, conn, "a", n)
    clock = OffsetClock()
    assert len(await outbox.claim(owner="dead", limit=10, lease=30, now=clock.now())) == 3
    transport = RecordingTransport()
    relay = OutboxRelay(outbox, transport, clock=clock, lease=30, retention=100)
    assert await relay.drain() == 0
    clock.advance(31)
    assert await relay.drain() == 3
    assert numbers_by_key(transport.published, decode) == {"a": [0, 1, 2]}
    assert await outbox.cleanup(sent_before=clock.now() - 100) == 0
    clock.advance(101)
    assert await outbox.cleanup(sent_before=clock.now() - 100) == 3


async def test_a_given_pool_is_used_and_left_open(postgres_url, schema, bus, conn):
    from psycopg_pool import AsyncConnectionPool

    async with AsyncConnectionPool(postgres_url, min_size=1, max_size=2, open=False) as pool:
        box = PostgresOutbox(pool, bus=bus, schema=schema)
        async with conn.transaction():
            await box.add(conn, ItemAdded(key="a", n=0), key="a")
        transport = RecordingTransport()
        async with OutboxRelay(box, transport, poll_interval=0.05):
            async with asyncio.timeout(5):
                while not transport.published:
                    await asyncio.sleep(0.01)
        await box.close()
        assert not pool.closed


async def test_a_database_outage_surfaces_as_store_unavailable(schema, bus):
    from sagaflow.errors import StoreUnavailableError

    box = PostgresOutbox(
        "postgresql://postgres@127.0.0.1:1/none", bus=bus, schema=schema, connect_timeout=0.5
    )
    with pytest.raises(StoreUnavailableError):
        await box.pending()
    await box.close()


async def test_without_notify_relays_poll(postgres_url, schema, bus, conn):
    quiet = PostgresOutbox(postgres_url, bus=bus, schema=schema, notify=False)
    async with conn.transaction():
        await quiet.add(conn, ItemAdded(key="a", n=0), key="a")
        await quiet.add_many(conn, [ItemAdded(key="a", n=1), ItemAdded(key="b", n=0)])
        await quiet.add(conn, ItemAdded(key="c", n=0))
    transport = RecordingTransport()
    assert await OutboxRelay(quiet, transport).drain() == 4
    await quiet.close()
