"""Outbox relay throughput against a raw-driver baseline, measured in one run.

Workload: N recorded messages (~200-byte JSON bodies) spread over K partition
keys wait in the outbox table. The relay (`OutboxRelay.drain`, batches of B)
claims them, publishes them in per-key order and marks them sent. Baseline
("physical limit"): the same rows read and marked with the raw driver in the
same batches — ``SELECT ... ORDER BY seq LIMIT B`` then ``UPDATE ... SET state =
sent`` per batch, one transaction each (sqlite3 in WAL mode with the same
``synchronous``; psycopg autocommit) — with, for Redis, the batch sent as one
raw redis-py ``XADD`` pipeline in between. The rows are reset to unsent before
every run; figures are medians of several runs. ``--loose`` adds rows for
``OutboxRelay(strict_order=False)`` (one publish call per batch instead of one
per wave).

Run:
    .venv/bin/python benchmarks/bench_outbox.py                      # SQLite + PostgreSQL
    .venv/bin/python benchmarks/bench_outbox.py --only sqlite --runs 5 --rows 50000 --loose
    .venv/bin/python benchmarks/bench_outbox.py --postgres postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sagaflow import EventBus, MemoryTransport
from sagaflow.choreography.outbox import OutboxRelay
from sagaflow.choreography.outbox_sqlite import SQLiteOutbox
from sagaflow.events import Event, EventRegistry
from sagaflow.transports.base import Message, Transport

registry = EventRegistry()


class OrderPlaced(Event, type="bench.order-placed.v1", registry=registry):
    """The benchmark's event (~200 bytes of JSON)."""

    order_id: str
    customer: str
    amount_cents: int
    note: str


def _messages(bus: EventBus, rows: int, keys: int) -> list[Message]:
    from sagaflow.choreography._outbox_common import MessageEncoder

    encoder = MessageEncoder(bus)
    return [
        encoder.encode(
            OrderPlaced(
                order_id=f"order-{i}", customer=f"c{i % keys}", amount_cents=i, note="x" * 100
            ),
            key=f"c{i % keys}",
        )
        for i in range(rows)
    ]


# -- a sink for the raw baseline: nothing (memory) or one XADD pipeline (Redis) ---------

Sink = Callable[[list[tuple[Any, ...]]], Awaitable[None]]


async def _no_sink(rows: list[tuple[Any, ...]]) -> None:
    return None


def _redis_sink(client: Any, stream: str) -> Sink:
    async def sink(rows: list[tuple[Any, ...]]) -> None:
        async with client.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.xadd(stream, {"id": row[1], "body": row[2], "headers": row[3]})
            await pipe.execute()

    return sink


# -- SQLite ----------------------------------------------------------------------------------


def _sqlite_raw_batch(conn: sqlite3.Connection, batch: int) -> list[tuple[Any, ...]]:
    conn.execute("BEGIN IMMEDIATE")
    rows = conn.execute(
        "SELECT seq, msg_id, body, headers FROM sagaflow_outbox WHERE state = 0"
        " ORDER BY seq LIMIT ?",
        (batch,),
    ).fetchall()
    conn.execute("COMMIT")
    return rows


def _sqlite_raw_mark(conn: sqlite3.Connection, seqs: list[int], now: float) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "UPDATE sagaflow_outbox SET state = 1, sent_at = ? WHERE seq = ?",
        [(now, s) for s in seqs],
    )
    conn.execute("COMMIT")


async def _sqlite_raw_run(path: Path, batch: int, sink: Sink) -> float:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=FULL")
    # The relay's worker thread does the same: keep blocking calls off the loop.
    started = time.perf_counter()
    done = 0
    while rows := await asyncio.to_thread(_sqlite_raw_batch, conn, batch):
        await sink(rows)
        await asyncio.to_thread(_sqlite_raw_mark, conn, [r[0] for r in rows], time.time())
        done += len(rows)
    elapsed = time.perf_counter() - started
    conn.close()
    return done / elapsed


def _sqlite_reset(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute(
        "UPDATE sagaflow_outbox SET state = 0, sent_at = NULL, lease_owner = NULL,"
        " lease_expires = NULL"
    )
    conn.commit()
    conn.close()


async def _relay_run(outbox: Any, transport: Transport, batch: int, strict: bool) -> float:
    relay = OutboxRelay(outbox, transport, batch_size=batch, retention=None, strict_order=strict)
    started = time.perf_counter()
    published = await relay.drain(timeout=600)
    return published / (time.perf_counter() - started)


# -- PostgreSQL -------------------------------------------------------------------------------


async def _pg_raw_run(url: str, schema: str, batch: int, sink: Sink) -> float:
    import psycopg

    table = f"{schema}.outbox"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        done = 0
        while True:
            cursor = await conn.execute(
                f"SELECT seq, msg_id, body, headers::text FROM {table} WHERE state = 0"
                " ORDER BY seq LIMIT %s",
                (batch,),
            )
            rows = await cursor.fetchall()
            if not rows:
                break
            await sink(rows)
            await conn.execute(
                f"UPDATE {table} SET state = 1, sent_at = %s WHERE seq = ANY(%s)",
                (time.time(), [r[0] for r in rows]),
            )
            done += len(rows)
        return done / (time.perf_counter() - started)


async def _pg_reset(url: str, schema: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            f"UPDATE {schema}.outbox SET state = 0, sent_at = NULL, lease_owner = NULL,"
            " lease_expires = NULL"
        )
        await conn.execute(f"VACUUM ANALYZE {schema}.outbox")


# -- harness ------------------------------------------------------------------------------------


async def _medians(
    runs: int,
    reset: Callable[[], Awaitable[None]],
    raw: Callable[[], Awaitable[float]],
    relay: Callable[[], Awaitable[float]],
) -> tuple[float, float]:
    raws, relays = [], []
    for _ in range(runs):
        await reset()
        raws.append(await raw())
        await reset()
        relays.append(await relay())
    return statistics.median(raws), statistics.median(relays)


def _row(db: str, transport: str, relay: float, raw: float) -> None:
    print(f"{db:<11} {transport:<13} {relay:>12,.0f} {raw:>12,.0f} {relay / raw:>8.2f}")


async def _transports(args: argparse.Namespace) -> list[tuple[str, Transport, Sink, Any]]:
    """(name, transport for the relay, sink for the baseline, cleanup) per transport."""
    found: list[tuple[str, Transport, Sink, Any]] = [("memory", MemoryTransport(), _no_sink, None)]
    if args.redis:
        import redis.asyncio as redis_asyncio

        from sagaflow.transports.redis import RedisStreamsTransport

        prefix = f"bench-outbox-{uuid.uuid4().hex[:6]}:"
        transport = RedisStreamsTransport(args.redis, prefix=prefix, max_len=None)
        client = redis_asyncio.Redis.from_url(args.redis)
        found.append(("redis", transport, _redis_sink(client, f"{prefix}raw"), (client, prefix)))
    return found


async def _cleanup(transports: list[tuple[str, Transport, Sink, Any]]) -> None:
    for _, transport, _, extra in transports:
        await transport.close()
        if extra is not None:
            client, prefix = extra
            keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()


async def _bench_sqlite(args: argparse.Namespace, transports: list[Any]) -> None:
    bus = EventBus(registry=registry)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "outbox.db"
        outbox = SQLiteOutbox(path, bus=bus)
        conn = outbox.connect()
        with conn:
            outbox.add_messages(conn, _messages(bus, args.rows, args.keys))
        conn.close()

        async def reset() -> None:
            await asyncio.to_thread(_sqlite_reset, path)

        for name, transport, sink, _ in transports:

            async def raw(s: Sink = sink) -> float:
                return await _sqlite_raw_run(path, args.batch, s)

            for strict in (True, False) if args.loose else (True,):

                async def relay(t: Transport = transport, strict: bool = strict) -> float:
                    return await _relay_run(outbox, t, args.batch, strict)

                raw_rate, relay_rate = await _medians(args.runs, reset, raw, relay)
                _row("sqlite", name + ("" if strict else "/loose"), relay_rate, raw_rate)
        await outbox.close()


async def _bench_postgres(args: argparse.Namespace, transports: list[Any]) -> None:
    import psycopg

    from sagaflow.choreography.outbox_postgres import PostgresOutbox

    bus = EventBus(registry=registry)
    schema = f"bench_outbox_{uuid.uuid4().hex[:8]}"
    outbox = PostgresOutbox(args.postgres, bus=bus, schema=schema)
    await outbox.create_schema()
    try:
        async with await psycopg.AsyncConnection.connect(args.postgres) as conn:
            await outbox.add_messages(conn, _messages(bus, args.rows, args.keys))
            await conn.commit()

        async def reset() -> None:
            await _pg_reset(args.postgres, schema)

        for name, transport, sink, _ in transports:

            async def raw(s: Sink = sink) -> float:
                return await _pg_raw_run(args.postgres, schema, args.batch, s)

            for strict in (True, False) if args.loose else (True,):

                async def relay(t: Transport = transport, strict: bool = strict) -> float:
                    return await _relay_run(outbox, t, args.batch, strict)

                raw_rate, relay_rate = await _medians(args.runs, reset, raw, relay)
                _row("postgresql", name + ("" if strict else "/loose"), relay_rate, raw_rate)
    finally:
        await outbox.close()
        async with await psycopg.AsyncConnection.connect(args.postgres, autocommit=True) as conn:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="outbox rows per run")
    parser.add_argument("--keys", type=int, default=100, help="distinct partition keys")
    parser.add_argument("--batch", type=int, default=500, help="rows per claim / raw batch")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per figure (median)")
    parser.add_argument(
        "--loose", action="store_true", help="also measure OutboxRelay(strict_order=False)"
    )
    parser.add_argument("--only", choices=["sqlite", "postgres"], help="one database only")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="'' to skip Redis")
    args = parser.parse_args()
    print(
        f"{args.rows} rows over {args.keys} keys, batches of {args.batch};"
        f" median of {args.runs} runs; rows/s"
    )
    print(f"{'database':<11} {'sink':<13} {'relay':>12} {'raw':>12} {'ratio':>8}")
    transports = await _transports(args)
    try:
        if args.only in (None, "sqlite"):
            await _bench_sqlite(args, transports)
        if args.only in (None, "postgres"):
            await _bench_postgres(args, transports)
    finally:
        await _cleanup(transports)


if __name__ == "__main__":
    asyncio.run(main())
