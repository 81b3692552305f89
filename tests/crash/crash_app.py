"""The application that crash tests kill: an order saga on fake services with a ledger.

Run as a script it starts a batch of sagas and SIGKILLs itself at the n-th
instrumented point: before or after a store write, after an effect but before
its log write, mid-compensation. The ledger (its own SQLite file, committed on
every effect) survives the kill, so the test can check afterwards that no effect
was lost or applied twice.

    python crash_app.py --store sqlite:///x.db --ledger l.db --sagas 6 --seed 1 --kill-at 17
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sqlite3
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from sagaflow import Orchestrator, Parallel, RetryPolicy, Saga, SagaStore, Step, StepKind
from sagaflow.errors import NonRetryableError
from sagaflow.orchestration.records import Claim, SagaRecord

POINTS = {"hit": 0, "kill_at": 0}


def checkpoint(label: str) -> None:
    """Count an instrumented point; die here if it is the chosen one."""
    POINTS["hit"] += 1
    if POINTS["hit"] == POINTS["kill_at"]:
        sys.stderr.write(f"KILLED at point {POINTS['hit']}: {label}\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class Order(BaseModel):
    order_id: str
    fail_at: str | None = None


class Ledger:
    """The services' own durable state: which effects happened, deduplicated by key."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, undone INTEGER NOT NULL)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS runs (key TEXT NOT NULL, kind TEXT NOT NULL)")

    def apply(self, key: str) -> None:
        self.db.execute("INSERT INTO runs VALUES (?, 'do')", (key,))
        self.db.execute("INSERT OR IGNORE INTO effects VALUES (?, 0)", (key,))

    def undo(self, key: str) -> None:
        self.db.execute("INSERT INTO runs VALUES (?, 'undo')", (key,))
        self.db.execute("UPDATE effects SET undone = 1 WHERE key = ?", (key,))  # idempotent

    def effects(self, saga_id: str) -> dict[str, bool]:
        rows = self.db.execute(
            "SELECT key, undone FROM effects WHERE key LIKE ?", (f"{saga_id}:%",)
        ).fetchall()
        return {key.split(":", 1)[1]: bool(undone) for key, undone in rows}

    def runs(self, saga_id: str) -> list[tuple[str, str]]:
        return self.db.execute(
            "SELECT key, kind FROM runs WHERE key LIKE ?", (f"{saga_id}:%",)
        ).fetchall()


def order_saga(ledger: Ledger) -> Saga[Order]:
    def action(name: str) -> Any:
        async def run(ctx: Any) -> None:
            if ctx.state.fail_at == name:
                raise NonRetryableError(f"{name} refused")
            ledger.apply(ctx.idempotency_key)
            checkpoint(f"after effect of {name}, before its log write")

        return run

    def undo(name: str) -> Any:
        async def run(ctx: Any) -> None:
            ledger.undo(f"{ctx.saga_id}:{name}")
            checkpoint(f"mid-compensation: after undoing {name}")

        return run

    def step(name: str) -> Step:
        return Step(name, action(name), compensate=undo(name))

    quick = RetryPolicy(max_attempts=3, initial_delay=0.01)
    return Saga(
        "order",
        state=Order,
        retry=quick,
        compensation_retry=quick,
        steps=[
            step("reserve"),
            Parallel("pay", step("charge"), step("loyalty")),
            Step("ship", action("ship"), kind=StepKind.PIVOT),
            Step("notify", action("notify"), kind=StepKind.RETRIABLE, retry=quick),
        ],
    )


def orders(count: int, seed: int) -> list[Order]:
    rng = random.Random(seed)
    choices = [None, None, "charge", "loyalty", "ship", "reserve"]
    return [Order(order_id=f"o{seed}-{i}", fail_at=rng.choice(choices)) for i in range(count)]


class KillingStore:
    """Counts a point before and after every store write."""

    def __init__(self, inner: SagaStore) -> None:
        self.inner = inner

    async def create(self, saga_id: str, records: Sequence[SagaRecord], **kw: Any) -> Claim:
        checkpoint(f"before write (create {saga_id})")
        claim = await self.inner.create(saga_id, records, **kw)
        checkpoint(f"after write (create {saga_id})")
        return claim

    async def append(self, saga_id: str, records: Sequence[SagaRecord], **kw: Any) -> int:
        kinds = ",".join(r.kind.value for r in records)
        checkpoint(f"before write ({kinds})")
        version = await self.inner.append(saga_id, records, **kw)
        checkpoint(f"after write ({kinds})")
        return version

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def open_store(url: str, schema: str | None) -> SagaStore:
    from sagaflow.stores import open_store as open_url

    if url.startswith("sqlite:"):
        return open_url(url)  # e.g. sqlite:////tmp/x/sagas.db?inline=1
    return open_url(url, schema=schema or "sagaflow")


async def run_batch(args: argparse.Namespace) -> None:
    POINTS["kill_at"] = args.kill_at
    ledger = Ledger(args.ledger)
    store = open_store(args.store, args.schema)
    saga = order_saga(ledger)
    async with Orchestrator(KillingStore(store), lease=args.lease) as orchestrator:  # type: ignore[arg-type]
        if args.store.endswith("?inline=1"):
            # One saga at a time from one task: the store's calls run inline.
            for order in orders(args.sagas, args.seed):
                await orchestrator.run(saga, order, saga_id=order.order_id)
        else:
            await asyncio.gather(
                *(
                    orchestrator.run(saga, order, saga_id=order.order_id)
                    for order in orders(args.sagas, args.seed)
                )
            )
    await store.close()
    print(f"POINTS {POINTS['hit']}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", required=True)
    parser.add_argument("--schema")
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--sagas", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kill-at", type=int, default=0)
    parser.add_argument("--lease", type=float, default=0.5)
    asyncio.run(run_batch(parser.parse_args()))


if __name__ == "__main__":
    main()
