"""Durable saga store write throughput against the raw driver, measured in one run.

Workload: the store writes of a 4-step saga as the Orchestrator issues them —
``create`` with 2 records, then 4 ``append`` calls of 2 records each (5 writes,
10 records per saga). Baseline ("physical limit"): the same number of small
``INSERT`` + commit done with the raw driver on the same database and settings
(sqlite3 in WAL mode with the same ``synchronous``; psycopg autocommit INSERTs).

Each mode runs sequentially (one saga at a time) and with N concurrent workers
(tasks for the stores and the async psycopg baseline, threads with their own
connections for raw sqlite3). Figures are medians of several runs.

Run:
    .venv/bin/python benchmarks/bench_stores.py                 # SQLite + PostgreSQL
    .venv/bin/python benchmarks/bench_stores.py --only sqlite --runs 5 [--inline]
    .venv/bin/python benchmarks/bench_stores.py --postgres postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from sagaflow.orchestration.records import RecordKind, SagaRecord
from sagaflow.orchestration.store import SagaStore

WRITES_PER_SAGA = 5
STEPS = ("reserve", "charge", "ship", "notify")
PAYLOAD = '{"kind": "step_completed", "step": "reserve", "data": {"updates": {"qty": 1}}}'


# -- the saga write pattern ------------------------------------------------------------


def _records(i: int) -> list[list[SagaRecord]]:
    """The 5 batches of one 4-step saga: create, then one append per state change."""
    now = time.time()
    start = [
        SagaRecord(RecordKind.SAGA_STARTED, at=now, data={"saga": "order", "version": 1}),
        SagaRecord(RecordKind.STEP_STARTED, STEPS[0], 1, now),
    ]
    batches = [start]
    for k, step in enumerate(STEPS):
        done = SagaRecord(
            RecordKind.STEP_COMPLETED, step, 1, now, {"updates": {f"{step}_id": f"{i}-{k}"}}
        )
        nxt = (
            SagaRecord(RecordKind.STEP_STARTED, STEPS[k + 1], 1, now)
            if k + 1 < len(STEPS)
            else SagaRecord(RecordKind.SAGA_COMPLETED, at=now)
        )
        batches.append([done, nxt])
    return batches


async def _one_saga(store: SagaStore, saga_id: str, i: int) -> None:
    first, *rest = _records(i)
    claim = await store.create(saga_id, first, owner="bench", lease=60)
    version = len(first)
    for batch in rest:
        version = await store.append(
            saga_id, batch, expected_version=version, fencing_token=claim.fencing_token
        )


async def _store_run(store: SagaStore, sagas: int, concurrency: int) -> float:
    """Return sagas/s for ``sagas`` sagas over ``concurrency`` workers."""
    prefix = uuid.uuid4().hex[:8]
    counter = iter(range(sagas))

    async def worker() -> None:
        for i in counter:
            await _one_saga(store, f"{prefix}-{i}", i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sagas / (time.perf_counter() - started)


# -- SQLite ----------------------------------------------------------------------------


def _sqlite_raw_run(path: Path, sagas: int, concurrency: int, synchronous: str) -> float:
    """Raw sqlite3: WRITES_PER_SAGA x (INSERT + COMMIT) per saga; threads when concurrent."""
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, payload TEXT)")
    setup.close()
    counter = iter(range(sagas))
    lock = threading.Lock()

    def worker() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=60)
        conn.execute(f"PRAGMA synchronous={synchronous}")
        while True:
            with lock:
                if next(counter, None) is None:
                    break
            for _ in range(WRITES_PER_SAGA):
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO raw (payload) VALUES (?)", (PAYLOAD,))
                conn.execute("COMMIT")
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sagas / (time.perf_counter() - started)


async def _sqlite_store_run(
    path: Path, sagas: int, concurrency: int, synchronous: str, inline: bool
) -> float:
    from sagaflow.stores import SQLiteSagaStore

    store = SQLiteSagaStore(path, synchronous=synchronous, inline=inline)  # type: ignore[arg-type]
    try:
        await store.list_sagas(limit=1)  # open and create the schema outside the timing
        return await _store_run(store, sagas, concurrency)
    finally:
        await store.close()


# -- PostgreSQL ------------------------------------------------------------------------


async def _pg_raw_run(url: str, sagas: int, concurrency: int) -> float:
    """Raw psycopg: WRITES_PER_SAGA autocommit INSERTs per saga, one connection per worker."""
    import psycopg

    table = f"bench_raw_{uuid.uuid4().hex[:8]}"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await admin.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, payload text)")
    conns = [
        await psycopg.AsyncConnection.connect(url, autocommit=True) for _ in range(concurrency)
    ]
    counter = iter(range(sagas))
    query = f"INSERT INTO {table} (payload) VALUES (%s)"

    async def worker(conn: psycopg.AsyncConnection[object]) -> None:
        for _ in counter:
            for _ in range(WRITES_PER_SAGA):
                await conn.execute(query, (PAYLOAD,))

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in conns))
        return sagas / (time.perf_counter() - started)
    finally:
        for conn in conns:
            await conn.close()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
            await admin.execute(f"DROP TABLE {table}")


async def _pg_store_run(url: str, sagas: int, concurrency: int) -> float:
    import psycopg

    from sagaflow.stores import PostgresSagaStore

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    store = PostgresSagaStore(url, schema=schema, pool_size=concurrency, min_pool_size=concurrency)
    try:
        await store.list_sagas(limit=1)
        return await _store_run(store, sagas, concurrency)
    finally:
        await store.close()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")


# -- driver ----------------------------------------------------------------------------


async def _medians(
    runs: int, raw: Callable[[], Awaitable[float]], store: Callable[[], Awaitable[float]]
) -> tuple[float, float]:
    """Median rates of ``raw`` and ``store``, interleaved so that load drifts hit both."""
    await raw()  # warm-up: caches, file creation, connections
    await store()
    raws, stores = [], []
    for _ in range(runs):
        raws.append(await raw())
        stores.append(await store())
    return statistics.median(raws), statistics.median(stores)


def _row(name: str, mode: str, store: float, raw: float) -> None:
    ratio = store / raw if raw else float("nan")
    print(
        f"{name:<10} {mode:<14} {store:>10.0f} {store * WRITES_PER_SAGA:>10.0f}"
        f" {raw:>10.0f} {raw * WRITES_PER_SAGA:>10.0f} {ratio:>7.2f}"
    )


async def _bench_sqlite(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.sqlite_dir) as tmp:
        directory = Path(tmp)
        for mode, concurrency, sagas in (
            ("sequential", 1, args.sagas),
            (f"{args.concurrency} concurrent", args.concurrency, args.sagas * 4),
        ):

            async def raw(c: int = concurrency, s: int = sagas) -> float:
                path = directory / f"raw{uuid.uuid4().hex}.db"
                return await asyncio.to_thread(_sqlite_raw_run, path, s, c, args.synchronous)

            async def store(c: int = concurrency, s: int = sagas) -> float:
                path = directory / f"store{uuid.uuid4().hex}.db"
                return await _sqlite_store_run(path, s, c, args.synchronous, args.inline)

            raw_rate, store_rate = await _medians(args.runs, raw, store)
            _row("sqlite" + (" inl" if args.inline else ""), mode, store_rate, raw_rate)
            for name in os.listdir(directory):
                (directory / name).unlink()


async def _bench_postgres(args: argparse.Namespace) -> None:
    for mode, concurrency, sagas in (
        ("sequential", 1, args.sagas),
        (f"{args.concurrency} concurrent", args.concurrency, args.sagas * 3),
    ):

        async def raw(c: int = concurrency, s: int = sagas) -> float:
            return await _pg_raw_run(args.postgres, s, c)

        async def store(c: int = concurrency, s: int = sagas) -> float:
            return await _pg_store_run(args.postgres, s, c)

        raw_rate, store_rate = await _medians(args.runs, raw, store)
        _row("postgres", mode, store_rate, raw_rate)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["sqlite", "postgres"], default=None)
    parser.add_argument("--sagas", type=int, default=200, help="sagas per sequential run")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--synchronous", choices=["FULL", "NORMAL"], default="FULL")
    parser.add_argument(
        "--inline", action="store_true", help="SQLiteSagaStore(inline=True): commit on the loop"
    )
    parser.add_argument("--sqlite-dir", default=None, help="directory for the SQLite files")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "SAGAFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    print(
        f"4-step saga = {WRITES_PER_SAGA} store writes (create + 4 appends, 2 records each);"
        f" raw = {WRITES_PER_SAGA} INSERT+commit; median of {args.runs} runs;"
        f" SQLite synchronous={args.synchronous}"
    )
    print(
        f"{'store':<10} {'mode':<14} {'sagas/s':>10} {'writes/s':>10}"
        f" {'raw sagas':>10} {'raw ins/s':>10} {'ratio':>7}"
    )
    if args.only in (None, "sqlite"):
        await _bench_sqlite(args)
    if args.only in (None, "postgres"):
        await _bench_postgres(args)


if __name__ == "__main__":
    asyncio.run(main())
