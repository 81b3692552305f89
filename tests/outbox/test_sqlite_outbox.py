"""SQLiteOutbox and OutboxRelay on SQLite: atomicity, per-key order, poison rows, leases."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from sagaflow import EventBus, MemoryTransport
from sagaflow.choreography.outbox import OutboxRelay
from sagaflow.choreography.outbox_sqlite import SQLiteOutbox
from sagaflow.errors import ConfigurationError, MessageTooLargeError, SchemaVersionError
from sagaflow.retry import RetryPolicy
from sagaflow.serialization import JsonSerializer

from ._support import (
    ItemAdded,
    OffsetClock,
    RecordingTransport,
    assert_ordered,
    numbers_by_key,
    registry,
)


@pytest.fixture
def bus() -> EventBus:
    return EventBus(registry=registry, source="/tests")


@pytest.fixture
async def outbox(tmp_path, bus):
    box = SQLiteOutbox(tmp_path / "app.db", bus=bus)
    yield box
    await box.close()


def _app(outbox: SQLiteOutbox) -> sqlite3.Connection:
    conn = outbox.connect()
    conn.execute("CREATE TABLE IF NOT EXISTS items (key TEXT, n INTEGER)")
    conn.commit()
    return conn


def _rolled_back(conn: sqlite3.Connection, work) -> None:
    """Run ``work`` in a transaction that ends in an exception (so: rolled back)."""
    with pytest.raises(RuntimeError), conn:
        work()


def _add_items(outbox: SQLiteOutbox, conn: sqlite3.Connection, keys: int, per_key: int) -> None:
    with conn:
        for n in range(per_key):
            for k in range(keys):
                conn.execute("INSERT INTO items VALUES (?, ?)", (f"k{k}", n))
                outbox.add(conn, ItemAdded(key=f"k{k}", n=n), key=f"k{k}")


async def test_commit_keeps_the_event_and_rollback_drops_it(outbox):
    conn = _app(outbox)
    with conn:
        conn.execute("INSERT INTO items VALUES ('a', 1)")
        kept = outbox.add(conn, ItemAdded(key="a", n=1), key="a")

    def fails() -> None:
        conn.execute("INSERT INTO items VALUES ('b', 2)")
        outbox.add(conn, ItemAdded(key="b", n=2), key="b")
        raise RuntimeError("the business transaction fails")

    _rolled_back(conn, fails)
    assert conn.execute("SELECT key FROM items").fetchall() == [("a",)]
    transport = RecordingTransport()
    assert await OutboxRelay(outbox, transport).drain() == 1
    assert [m.id for m in transport.published] == [kept.id]
    assert await outbox.pending() == 0


async def test_the_message_is_what_the_bus_would_publish(outbox, bus):
    conn = _app(outbox)
    with conn:
        message = outbox.add(
            conn, ItemAdded(key="a", n=1), key="a", subject="item-a", headers={"tenant": "t1"}
        )
    transport = RecordingTransport()
    await OutboxRelay(outbox, transport).drain()
    (published,) = transport.published
    envelope = JsonSerializer(registry).decode(published)
    assert published.id == message.id == envelope.id
    assert published.key == "a" == envelope.partition_key
    assert published.topic == bus.topic_for("outbox-test.item-added.v1")
    assert envelope.event == ItemAdded(key="a", n=1)
    assert envelope.subject == "item-a"
    assert envelope.headers == {"tenant": "t1"}
    assert envelope.source == "/tests"
    assert envelope.correlation_id == envelope.id  # a root event starts its own flow


async def test_the_table_is_created_inside_the_callers_transaction(tmp_path, bus):
    outbox = SQLiteOutbox(tmp_path / "fresh.db", bus=bus)
    conn = outbox.connect()

    def fails() -> None:
        outbox.add(conn, ItemAdded(key="a", n=0))
        raise RuntimeError

    _rolled_back(conn, fails)
    with conn:  # the table vanished with the rollback: created again
        outbox.add(conn, ItemAdded(key="a", n=1))
    assert await outbox.pending() == 1
    await outbox.close()


async def test_events_added_inside_a_handler_inherit_the_flow(tmp_path):
    transport = MemoryTransport()
    bus = EventBus(transport, registry=registry)
    outbox = SQLiteOutbox(tmp_path / "app.db", bus=bus)
    conn = outbox.connect()
    recorded = []

    @bus.handler(ItemAdded, group="chain")
    def chain(event: ItemAdded) -> None:
        if event.n == 0:
            with conn:
                recorded.append(outbox.add(conn, ItemAdded(key=event.key, n=1)))

    async with bus:
        root = await bus.publish(ItemAdded(key="a", n=0))
        await bus.join()
    (message,) = recorded
    assert message.headers["ce-correlationid"] == root.correlation_id
    assert message.headers["ce-causationid"] == root.id
    await outbox.close()


async def test_relay_publishes_each_key_in_order_in_waves(outbox):
    conn = _app(outbox)
    _add_items(outbox, conn, keys=3, per_key=5)
    with conn:
        outbox.add(conn, ItemAdded(key="none", n=0))  # no key: no order
    transport = RecordingTransport()
    relay = OutboxRelay(outbox, transport, batch_size=100)
    assert await relay.drain() == 16
    for call in transport.calls:  # never two messages of one key in one publish
        keys = [m.key for m in call if m.key is not None]
        assert len(keys) == len(set(keys))
    by_key = numbers_by_key(transport.published, JsonSerializer(registry).decode)
    for k in range(3):
        assert by_key[f"k{k}"] == list(range(5))


async def test_order_holds_with_a_flaky_slow_transport_and_concurrent_relays(outbox):
    conn = _app(outbox)
    _add_items(outbox, conn, keys=8, per_key=25)
    transport = RecordingTransport(delay=0.002, fail_rate=0.2, seed=7)
    retry = RetryPolicy(max_attempts=None, initial_delay=0.001, max_delay=0.01)
    relays = [
        OutboxRelay(
            outbox, transport, batch_size=16, retry=retry, poll_interval=0.01, owner=f"r{i}"
        )
        for i in range(3)
    ]
    async with asyncio.timeout(30):
        for relay in relays:
            await relay.start()
        while await outbox.pending():
            await asyncio.sleep(0.02)
        for relay in relays:
            await relay.stop()
    assert sum(r.stats.failed_publishes for r in relays) > 0
    by_key = numbers_by_key(transport.published, JsonSerializer(registry).decode)
    assert len(by_key) == 8
    for sequence in by_key.values():
        assert_ordered(sequence, 25)


async def test_a_poison_row_is_parked_and_holds_back_no_other_key(outbox):
    conn = _app(outbox)
    with conn:
        outbox.add(conn, ItemAdded(key="big", n=0, blob="x" * 2000), key="big")
        outbox.add(conn, ItemAdded(key="big", n=1), key="big")
        outbox.add(conn, ItemAdded(key="small", n=0), key="small")
    transport = RecordingTransport(max_payload=1000)
    relay = OutboxRelay(outbox, transport)
    assert await relay.drain() == 2
    assert relay.stats.parked == 1
    (parked,) = await outbox.parked()
    assert parked.reason.startswith("MessageTooLargeError")
    assert parked.attempts == 1
    assert len(parked.message.body) > 1000
    by_key = numbers_by_key(transport.published, JsonSerializer(registry).decode)
    assert by_key == {"big": [1], "small": [0]}
    # An operator fixes the limit and sends it again.
    transport.features = RecordingTransport().features
    assert await outbox.requeue(parked.seq)
    assert not await outbox.requeue(parked.seq)
    assert await relay.drain() == 1
    assert await outbox.parked() == []


async def test_a_row_failing_too_often_is_parked(outbox):
    conn = _app(outbox)
    with conn:
        outbox.add(conn, ItemAdded(key="a", n=0), key="a")
    transport = RecordingTransport(fail_rate=1.0)
    clock = OffsetClock()
    relay = OutboxRelay(
        outbox, transport, clock=clock, retry=RetryPolicy(max_attempts=3, initial_delay=1.0)
    )
    await relay.drain()
    assert relay.stats.failed_publishes == 1
    assert await relay.drain() == 0  # waiting for its retry time
    clock.advance(100)
    await relay.drain()
    clock.advance(100)
    await relay.drain()
    (parked,) = await outbox.parked()
    assert parked.attempts == 3
    assert "PublishError: flaky broker" in parked.reason


async def test_a_failed_row_holds_back_the_later_rows_of_its_key_only(outbox):
    conn = _app(outbox)
    _add_items(outbox, conn, keys=2, per_key=3)
    transport = RecordingTransport()
    clock = OffsetClock()
    relay = OutboxRelay(outbox, transport, clock=clock, retry=_SLOW_RETRY)
    original = transport.publish

    async def refuse_k0_first(messages):
        if any(m.key == "k0" and len(transport.published) == 0 for m in messages):
            if len(messages) > 1:
                raise RuntimeError("batch refused")
            if messages[0].key == "k0":
                raise RuntimeError("k0 refused")
        await original(messages)

    transport.publish = refuse_k0_first
    await relay.drain()
    by_key = numbers_by_key(transport.published, JsonSerializer(registry).decode)
    assert by_key == {"k1": [0, 1, 2]}
    assert relay.stats.released == 2  # k0's later rows went back unpublished
    transport.publish = original
    assert await relay.drain() == 0  # k0 waits for its retry time
    clock.advance(60)
    assert await relay.drain() == 3
    by_key = numbers_by_key(transport.published, JsonSerializer(registry).decode)
    assert by_key["k0"] == [0, 1, 2]


async def test_an_unavailable_transport_keeps_rows_pending(outbox):
    conn = _app(outbox)
    _add_items(outbox, conn, keys=2, per_key=2)
    transport = RecordingTransport(down=True)
    clock = OffsetClock()
    relay = OutboxRelay(outbox, transport, clock=clock, retry=_SLOW_RETRY)
    await relay.drain()
    assert len(transport.calls) == 1  # no one-by-one retry against a broker that is down
    assert await outbox.pending() == 4
    transport.down = False
    clock.advance(60)
    assert await relay.drain() == 4


async def test_a_dead_relays_rows_are_claimed_again_after_the_lease(outbox):
    conn = _app(outbox)
    _add_items(outbox, conn, keys=2, per_key=2)
    clock = OffsetClock()
    claimed = await outbox.claim(owner="dead", limit=10, lease=30, now=clock.now())
    assert len(claimed) == 4
    transport = RecordingTransport()
    relay = OutboxRelay(outbox, transport, clock=clock, lease=30)
    assert await relay.drain() == 0  # still leased
    clock.advance(31)
    assert await relay.drain() == 4
    by_key = numbers_by_key(transport.published, JsonSerializer(registry).decode)
    assert by_key == {"k0": [0, 1], "k1": [0, 1]}


async def test_retention_deletes_sent_rows(outbox):
    conn = _app(outbox)
    _add_items(outbox, conn, keys=1, per_key=3)
    clock = OffsetClock()
    relay = OutboxRelay(outbox, RecordingTransport(), clock=clock, retention=100)
    await relay.drain()
    rows = conn.execute("SELECT count(*) FROM sagaflow_outbox").fetchone()[0]
    assert rows == 3
    clock.advance(101)
    assert await outbox.cleanup(sent_before=clock.now() - 100) == 3
    assert conn.execute("SELECT count(*) FROM sagaflow_outbox").fetchone()[0] == 0


async def test_retention_zero_deletes_at_once(outbox):
    conn = _app(outbox)
    _add_items(outbox, conn, keys=1, per_key=3)
    await OutboxRelay(outbox, RecordingTransport(), retention=0).drain()
    assert conn.execute("SELECT count(*) FROM sagaflow_outbox").fetchone()[0] == 0


async def test_a_running_relay_wakes_up_on_commits(outbox):
    conn = _app(outbox)
    transport = RecordingTransport()
    async with OutboxRelay(outbox, transport, poll_interval=30):
        await asyncio.sleep(0.1)
        _add_items(outbox, conn, keys=1, per_key=2)
        async with asyncio.timeout(5):
            while len(transport.published) < 2:
                await asyncio.sleep(0.01)


async def test_add_refuses_what_it_cannot_record(outbox):
    conn = _app(outbox)
    small = SQLiteOutbox(
        outbox.path,
        bus=EventBus(registry=registry, serializer=JsonSerializer(registry, max_size=50)),
    )
    with pytest.raises(MessageTooLargeError), conn:
        small.add(conn, ItemAdded(key="a", n=1, blob="x" * 100))
    with pytest.raises(ConfigurationError), conn:
        outbox.add(conn, ItemAdded(key="a", n=1), headers={"ce-id": "forged"})
    assert await outbox.pending() == 0


async def test_a_newer_schema_is_refused(tmp_path, bus):
    path = tmp_path / "newer.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE sagaflow_outbox_meta (key TEXT PRIMARY KEY, value TEXT)")
    raw.execute("INSERT INTO sagaflow_outbox_meta VALUES ('schema_version', '99')")
    raw.commit()
    outbox = SQLiteOutbox(path, bus=bus)
    with pytest.raises(SchemaVersionError):
        await outbox.pending()
    await outbox.close()


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ConfigurationError):
        SQLiteOutbox(tmp_path / "x.db", table="bad name")
    with pytest.raises(ConfigurationError):
        OutboxRelay(SQLiteOutbox(tmp_path / "x.db"), RecordingTransport(), batch_size=0)


# No jitter: a failed row surely waits 10 s (of the fake clock) before its retry.
_SLOW_RETRY = RetryPolicy(max_attempts=None, initial_delay=10.0, jitter=False)


async def test_the_relay_stops_when_its_transport_is_closed(outbox, caplog):
    conn = _app(outbox)
    _add_items(outbox, conn, keys=1, per_key=2)
    transport = MemoryTransport()
    await transport.close()
    relay = OutboxRelay(outbox, transport)
    async with asyncio.timeout(5):
        await relay.run()
    assert "transport is closed" in caplog.text
    assert await outbox.pending() == 2


async def test_a_relay_gives_back_what_it_cannot_publish_within_its_lease(outbox):
    conn = _app(outbox)
    _add_items(outbox, conn, keys=2, per_key=6)
    transport = _SlowTransport(0.05)
    relay = OutboxRelay(outbox, transport, lease=0.2, batch_size=100)
    assert await relay.relay_once() == 12
    assert relay.stats.released > 0  # later waves went back before the lease lapsed
    await relay.drain()
    by_key = numbers_by_key(transport.published, JsonSerializer(registry).decode)
    assert by_key == {"k0": list(range(6)), "k1": list(range(6))}


class _SlowTransport(RecordingTransport):
    def __init__(self, pause: float) -> None:
        super().__init__()
        self.pause = pause

    async def publish(self, messages):
        await asyncio.sleep(self.pause)
        await super().publish(messages)


async def test_strict_order_off_publishes_a_hot_key_in_one_call(outbox):
    conn = _app(outbox)
    _add_items(outbox, conn, keys=1, per_key=50)
    strict, loose = RecordingTransport(), RecordingTransport()
    assert await OutboxRelay(outbox, strict, batch_size=100).drain() == 50
    assert len(strict.calls) == 50  # one wave per message of the hot key
    with conn:
        conn.execute("UPDATE sagaflow_outbox SET state = 0")
    relay = OutboxRelay(outbox, loose, batch_size=100, strict_order=False)
    assert await relay.drain() == 50
    assert len(loose.calls) == 1
    by_key = numbers_by_key(loose.published, JsonSerializer(registry).decode)
    assert by_key == {"k0": list(range(50))}


async def test_strict_order_off_still_holds_back_a_key_after_a_failure(outbox):
    conn = _app(outbox)
    _add_items(outbox, conn, keys=2, per_key=4)
    transport = RecordingTransport()
    clock = OffsetClock()
    original = transport.publish

    async def refuse_k0_2(messages):
        if any(m.key == "k0" and b'"n":2' in m.body for m in messages):
            raise RuntimeError("refused")
        await original(messages)

    transport.publish = refuse_k0_2
    relay = OutboxRelay(outbox, transport, clock=clock, retry=_SLOW_RETRY, strict_order=False)
    await relay.drain()
    by_key = numbers_by_key(transport.published, JsonSerializer(registry).decode)
    assert by_key == {"k0": [0, 1], "k1": [0, 1, 2, 3]}
    assert relay.stats.released == 1  # k0's row 3 waits behind row 2
    transport.publish = original
    clock.advance(60)
    await relay.drain()
    by_key = numbers_by_key(transport.published, JsonSerializer(registry).decode)
    assert by_key["k0"] == [0, 1, 2, 3]


async def test_a_failing_wake_up_hint_makes_the_relay_poll_not_spin(outbox):
    claims = 0
    real_claim = outbox.claim

    async def counting_claim(**options):
        nonlocal claims
        claims += 1
        return await real_claim(**options)

    async def broken_wait(seconds):
        raise sqlite3.OperationalError("database is locked")

    outbox.claim = counting_claim
    outbox.wait_for_work = broken_wait
    async with OutboxRelay(outbox, RecordingTransport(), poll_interval=0.1):
        await asyncio.sleep(0.35)
    assert 2 <= claims <= 6
