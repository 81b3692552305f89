"""Outbox → relay → transport → EventBus with a durable inbox: each event handled once.

Copies are made on purpose (rows reset to unsent, as after a relay crash between
publish and mark); the handler's mark in its own transaction absorbs them.
"""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from sagaflow import EventBus, MemoryTransport
from sagaflow.choreography.inbox_sqlite import SQLiteInbox
from sagaflow.choreography.outbox import OutboxRelay
from sagaflow.choreography.outbox_sqlite import SQLiteOutbox

from ._support import ItemAdded, drop_schema, new_schema, registry

N = 60


async def _wait_for(predicate) -> None:
    async with asyncio.timeout(20):
        while not await predicate():
            await asyncio.sleep(0.02)


async def test_sqlite_outbox_to_memory_transport_to_a_durable_inbox(tmp_path):
    path = tmp_path / "app.db"
    transport = MemoryTransport()
    bus = EventBus(transport, registry=registry, inbox=SQLiteInbox(path))
    outbox = SQLiteOutbox(path, bus=bus)
    inbox = bus.inbox
    assert isinstance(inbox, SQLiteInbox)
    app = outbox.connect()
    app.execute("CREATE TABLE effects (key TEXT, n INTEGER)")
    local = threading.local()  # sync handlers run in threads: a connection per thread

    @bus.handler(ItemAdded, group="effects", ordered_by_key=True, concurrency=4)
    def apply(event: ItemAdded) -> None:
        if not hasattr(local, "conn"):
            local.conn = inbox.connect()
        handler_conn = local.conn
        with handler_conn:
            if inbox.mark_in(handler_conn, "effects"):
                handler_conn.execute("INSERT INTO effects VALUES (?, ?)", (event.key, event.n))

    async with bus:
        with app:
            for n in range(N):
                outbox.add(app, ItemAdded(key=f"k{n % 3}", n=n), key=f"k{n % 3}")
        relay = OutboxRelay(outbox, transport)
        assert await relay.drain() == N
        await bus.join()
        # As if a relay had died after publishing and before marking: send again.
        with app:
            app.execute("UPDATE sagaflow_outbox SET state = 0 WHERE seq % 2 = 0")
        assert await relay.drain() == N // 2
        await bus.join()
    assert app.execute("SELECT count(*) FROM effects").fetchone()[0] == N
    assert bus.stats.duplicates == N // 2
    await outbox.close()
    await inbox.close()


@pytest.mark.services
async def test_postgres_outbox_to_redis_to_a_postgres_inbox(postgres_url, redis_url):
    import psycopg
    import redis.asyncio as redis_asyncio
    from psycopg_pool import AsyncConnectionPool

    from sagaflow.choreography.inbox_postgres import PostgresInbox
    from sagaflow.choreography.outbox_postgres import PostgresOutbox
    from sagaflow.transports.redis import RedisStreamsTransport

    schema = new_schema()
    prefix = f"outbox-test-{uuid.uuid4().hex[:8]}:"
    publisher = RedisStreamsTransport(redis_url, prefix=prefix, block=0.05)
    consumer = RedisStreamsTransport(redis_url, prefix=prefix, block=0.05)
    inbox = PostgresInbox(postgres_url, schema=schema)
    await inbox.create_schema()
    bus = EventBus(consumer, registry=registry, inbox=inbox, close_transport=True)
    outbox = PostgresOutbox(postgres_url, bus=bus, schema=schema)
    await outbox.create_schema()
    pool = AsyncConnectionPool(postgres_url, min_size=1, max_size=4, open=False)
    await pool.open()
    try:
        async with pool.connection() as conn:
            await conn.execute(f"CREATE TABLE {schema}.effects (key text, n int)")

        @bus.handler(ItemAdded, group="effects", ordered_by_key=True, concurrency=4)
        async def apply(event: ItemAdded) -> None:
            async with pool.connection() as conn, conn.transaction():
                if await inbox.mark_in(conn, "effects"):
                    await conn.execute(
                        f"INSERT INTO {schema}.effects VALUES (%s, %s)", (event.key, event.n)
                    )

        async def effects() -> int:
            async with pool.connection() as conn:
                cursor = await conn.execute(f"SELECT count(*) FROM {schema}.effects")
                return int((await cursor.fetchone())[0])

        async with bus, OutboxRelay(outbox, publisher, poll_interval=0.05) as relay:
            async with await psycopg.AsyncConnection.connect(postgres_url) as app:
                for n in range(N):
                    await outbox.add(app, ItemAdded(key=f"k{n % 3}", n=n), key=f"k{n % 3}")
                    if n % 10 == 9:
                        await app.commit()
                await app.commit()
                await _wait_for(lambda: _equals(effects, N))
                await app.execute(f"UPDATE {schema}.outbox SET state = 0 WHERE seq % 3 = 0")
                await app.commit()
            await _wait_for(lambda: _stat(bus, "duplicates", N // 3))
        assert await effects() == N
        assert relay.stats.published == N + N // 3
    finally:
        await outbox.close()
        await inbox.close()
        await publisher.close()
        await pool.close()
        await drop_schema(postgres_url, schema)
        client = redis_asyncio.Redis.from_url(redis_url)
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def _equals(count, expected: int) -> bool:
    return await count() == expected


async def _stat(bus: EventBus, name: str, expected: int) -> bool:
    return getattr(bus.stats, name) >= expected
