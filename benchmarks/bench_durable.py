"""Durable sagas/s: the 4-step order saga on SQLite and PostgreSQL, next to the raw limit.

For each store, in one run:

* **raw**: the physical limit, the same number of small INSERT+commits as the
  orchestrator's store writes per saga (5: the completion of a step travels with
  the start of the next), with the raw driver (sqlite3 / psycopg), sequential and
  over 16 connections;
* **sagaflow**: the whole Orchestrator running the 4-step order saga (trivial
  async steps, hooks off) on `SQLiteSagaStore` / `PostgresSagaStore`,
  sequential and 16 sagas at a time; for SQLite also with the opt-in
  ``inline=True`` (a call made while the store is idle runs on the event loop
  thread, which it blocks during the commit: see docs/stores.md);
* **DBOS** (PostgreSQL only, from the ``bench`` extra): its 4-step workflow.

Run:  .venv/bin/python benchmarks/bench_durable.py [--quick] [--runs N] [--only sqlite|postgres]
                                                 [--postgres URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from sagaflow import Orchestrator, RetryPolicy, Saga, Step, StepKind

CONCURRENCY = 16
WRITES_PER_SAGA = 5  # what the orchestrator issues for the 4-step saga


class OrderState(BaseModel):
    order_id: str
    reservation: str | None = None
    payment: str | None = None
    shipment: str | None = None


async def _reserve(ctx):
    return {"reservation": "r"}


async def _charge(ctx):
    return {"payment": "p"}


async def _ship(ctx):
    return {"shipment": "s"}


async def _undo(ctx):
    return None


async def _notify(ctx):
    return None


SAGA = Saga(
    "order",
    state=OrderState,
    retry=RetryPolicy.no_retry(),
    steps=[
        Step("reserve_stock", _reserve, compensate=_undo),
        Step("charge_payment", _charge, compensate=_undo),
        Step("create_shipment", _ship, kind=StepKind.PIVOT),
        Step("notify", _notify, kind=StepKind.RETRIABLE),
    ],
)


def median(values: list[float]) -> float:
    return statistics.median(values)


async def sagaflow_rate(make_store, n: int, concurrency: int) -> float:
    store = make_store()
    async with Orchestrator(store) as orchestrator:
        await orchestrator.run(SAGA, OrderState(order_id="warm"))  # schema, pool
        counter = iter(range(n))

        async def worker() -> None:
            for i in counter:
                await orchestrator.run(SAGA, OrderState(order_id=str(i)))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    await store.close()
    return n / elapsed


# -- SQLite -------------------------------------------------------------------------


def raw_sqlite_rate(path: Path, n: int, concurrency: int) -> float:
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE IF NOT EXISTS raw (id INTEGER PRIMARY KEY, saga TEXT, body TEXT)")
    setup.close()
    counter = iter(range(n))
    lock = threading.Lock()

    def worker() -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA synchronous=FULL")
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            for step in range(WRITES_PER_SAGA):
                conn.execute("INSERT INTO raw (saga, body) VALUES (?, ?)", (str(i), f"step {step}"))
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return n / (time.perf_counter() - start)


def bench_sqlite(n: int, runs: int) -> None:
    from sagaflow.stores.sqlite import SQLiteSagaStore

    print(f"\nSQLite (WAL, synchronous=FULL), {n} sagas per run, medians of {runs}")
    modes = {"sagaflow": False, "sagaflow inline=True": True}
    for label, concurrency in (("sequential", 1), (f"{CONCURRENCY} concurrent", CONCURRENCY)):
        raws: list[float] = []
        ours: dict[str, list[float]] = {name: [] for name in modes}
        for _ in range(runs):
            with tempfile.TemporaryDirectory() as directory:
                raws.append(raw_sqlite_rate(Path(directory) / "raw.db", n, concurrency))
                for name, inline in modes.items():
                    path = Path(directory) / f"sagas-{inline}.db"
                    ours[name].append(
                        asyncio.run(
                            sagaflow_rate(
                                lambda p=path, i=inline: SQLiteSagaStore(p, inline=i),
                                n,
                                concurrency,
                            )
                        )
                    )
        figures: dict[str, float | None] = {"raw 5 INSERT+commit": median(raws)}
        figures.update({name: median(rates) for name, rates in ours.items()})
        report(label, figures)


# -- PostgreSQL ---------------------------------------------------------------------


async def raw_postgres_rate(url: str, table: str, n: int, concurrency: int) -> float:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (id bigserial primary key, saga text, body text)"
        )
    counter = iter(range(n))

    async def worker() -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            for i in counter:
                for step in range(WRITES_PER_SAGA):
                    await conn.execute(
                        f"INSERT INTO {table} (saga, body) VALUES (%s, %s)",
                        (str(i), f"step {step}"),
                    )

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"DROP TABLE {table}")
    return n / elapsed


def dbos_runner(url: str) -> Callable[[int, int], float] | None:
    try:
        from dbos import DBOS
    except ImportError:
        return None
    base, _, _ = url.rpartition("/")
    DBOS(
        config={
            "name": "sagaflow-bench",
            "system_database_url": f"{base}/sagaflow_dbos_bench",
            "log_level": "ERROR",
        }
    )

    @DBOS.step()
    async def reserve() -> str:
        return "r"

    @DBOS.step()
    async def charge() -> str:
        return "p"

    @DBOS.step()
    async def ship() -> str:
        return "s"

    @DBOS.step()
    async def notify() -> None:
        return None

    @DBOS.workflow()
    async def order_workflow(order_id: str) -> str:
        await reserve()
        await charge()
        await ship()
        await notify()
        return order_id

    DBOS.launch()

    def run(n: int, concurrency: int) -> float:
        async def main() -> float:
            counter = iter(range(n))
            await order_workflow("warm")

            async def worker() -> None:
                for i in counter:
                    await order_workflow(f"{uuid.uuid4().hex}-{i}")

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return n / (time.perf_counter() - start)

        return asyncio.run(main())

    return run


def bench_postgres(url: str, n: int, runs: int) -> None:
    from sagaflow.stores.postgres import PostgresSagaStore

    print(f"\nPostgreSQL ({url.split('@')[-1]}), {n} sagas per run, medians of {runs}")
    dbos = dbos_runner(url)
    for label, concurrency in (("sequential", 1), (f"{CONCURRENCY} concurrent", CONCURRENCY)):
        raws, ours, peers = [], [], []
        for _ in range(runs):
            table = f"bench_raw_{uuid.uuid4().hex[:8]}"
            raws.append(asyncio.run(raw_postgres_rate(url, table, n, concurrency)))
            schema = f"bench_{uuid.uuid4().hex[:8]}"
            ours.append(
                asyncio.run(
                    sagaflow_rate(
                        lambda s=schema: PostgresSagaStore(
                            url, schema=s, pool_size=CONCURRENCY + 2
                        ),
                        n,
                        concurrency,
                    )
                )
            )
            asyncio.run(_drop_schema(url, schema))
            if dbos is not None:
                peers.append(dbos(n, concurrency))
        figures = {"raw 5 INSERT+commit": median(raws), "sagaflow": median(ours)}
        figures["DBOS"] = median(peers) if peers else None
        report(label, figures)


async def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def report(label: str, figures: dict[str, float | None]) -> None:
    raw = figures["raw 5 INSERT+commit"] or 1.0
    ours = figures["sagaflow"] or 0.0
    print(f"  {label}")
    for name, rate in figures.items():
        if rate is None:
            print(f"    {name:<22} (not installed)")
            continue
        extra = f"  sagaflow is {ours / rate:.1f}x" if name == "DBOS" else ""
        print(f"    {name:<22} {rate:10,.0f} sagas/s  {rate / raw:6.2f}x raw{extra}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "SAGAFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--only", choices=("sqlite", "postgres"))
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, 1 with --quick)")
    args = parser.parse_args()
    n = 200 if args.quick else 1000
    runs = args.runs or (1 if args.quick else 3)
    print(f"python {sys.version.split()[0]}")
    if args.only in (None, "sqlite"):
        bench_sqlite(n, runs)
    if args.only in (None, "postgres"):
        bench_postgres(args.postgres, n, runs)


if __name__ == "__main__":
    main()
