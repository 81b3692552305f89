"""Kill -9 a process running sagas at random instrumented points, then recover.

Each run starts a subprocess (crash_app.py) that runs a batch of order sagas and
SIGKILLs itself at one randomly chosen point: before or after a store write,
after an effect but before its log write, or in the middle of compensating. A
fresh orchestrator then recovers. Checked for every saga: it ends COMPLETED,
COMPENSATED or parked FAILED; none is lost; the services' ledger agrees with the
outcome, and no deduplicated effect was applied twice.

CI runs a sample (SAGAFLOW_CRASH_RUNS, default 12 per store); the full run is
``SAGAFLOW_CRASH_RUNS=200 .venv/bin/python -m pytest tests/crash -q``.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import crash_app
import pytest

from sagaflow import Orchestrator, SagaStatus
from sagaflow.errors import SagaNotFoundError

RUNS = int(os.environ.get("SAGAFLOW_CRASH_RUNS", "12"))
SAGAS = 6
APP = Path(crash_app.__file__)
COMPENSATABLE = ("reserve", "charge", "loyalty")
ALL_STEPS = (*COMPENSATABLE, "ship", "notify")


def spawn(
    store_url: str, schema: str | None, ledger: Path, seed: int, kill_at: int
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        str(APP),
        "--store",
        store_url,
        "--ledger",
        str(ledger),
        "--sagas",
        str(SAGAS),
        "--seed",
        str(seed),
        "--kill-at",
        str(kill_at),
    ]
    if schema:
        command += ["--schema", schema]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


async def recover_and_check(store, ledger_path: Path, seed: int) -> list[SagaStatus]:
    ledger = crash_app.Ledger(str(ledger_path))
    saga = crash_app.order_saga(ledger)
    statuses = []
    async with Orchestrator(store, sagas=[saga], lease=5.0) as orchestrator:
        for _ in range(100):  # the dead worker's leases lapse within half a second
            report = await orchestrator.recover()
            assert not report.errors, report.errors
            assert not report.refused
            unfinished = [s for s in await store.list_sagas(limit=1000) if not s.status.is_terminal]
            if not unfinished:
                break
            await asyncio.sleep(0.1)
        for order in crash_app.orders(SAGAS, seed):
            try:
                log = await store.load(order.order_id)
            except SagaNotFoundError:
                # Killed before the saga was recorded: the client retries its request.
                assert ledger.runs(order.order_id) == [], "an effect ran for an unrecorded saga"
                await orchestrator.run(saga, order, saga_id=order.order_id)
                log = await store.load(order.order_id)
            statuses.append(log.status)
            check_ledger(order, log.status, ledger)
    ledger.db.close()
    return statuses


def check_ledger(order, status: SagaStatus, ledger) -> None:
    effects = ledger.effects(order.order_id)  # step -> undone?
    runs = Counter(ledger.runs(order.order_id))
    assert status.is_terminal, f"{order.order_id} is {status}"
    if status is SagaStatus.COMPLETED:
        assert set(effects) == set(ALL_STEPS), effects
        assert not any(effects.values()), f"completed saga has undone effects: {effects}"
    elif status is SagaStatus.COMPENSATED:
        for step in ("ship", "notify"):
            assert step not in effects, f"{step} happened in a compensated saga"
        for step, undone in effects.items():
            assert undone, f"{order.order_id}: {step} was never undone"
    # a deduplicating service applies each key once, however often it was called
    assert all(count >= 1 for count in runs.values())
    assert len(effects) == len({key for key, kind in runs if kind == "do"})


async def run_crash_sweep(make_store, target, tmp_path: Path) -> None:
    """``target(name)`` gives (store url, postgres schema or None) for a fresh store."""
    rng = random.Random(int(os.environ.get("SAGAFLOW_CRASH_SEED", "7")))
    labels: Counter[str] = Counter()
    totals: Counter[SagaStatus] = Counter()
    for run in range(RUNS):
        seed = rng.randrange(1_000_000)
        ledger = tmp_path / f"ledger-{run}.db"
        # a clean run tells how many instrumented points this batch has
        dry = spawn(*target(f"dry{run}"), tmp_path / f"dry-ledger-{run}.db", seed, 0)
        assert dry.returncode == 0, dry.stderr
        points = int(re.search(r"POINTS (\d+)", dry.stdout).group(1))
        kill_at = rng.randint(1, points)
        crashed = spawn(*target(f"run{run}"), ledger, seed, kill_at)
        assert crashed.returncode == -9, (crashed.returncode, crashed.stderr)
        label = re.search(r"KILLED at point \d+: (.*)", crashed.stderr).group(1)
        labels[re.sub(r" \(.*\)| of \w+| undoing \w+", "", label).strip()] += 1
        store = make_store(f"run{run}")
        try:
            statuses = await recover_and_check(store, ledger, seed)
        finally:
            await store.close()
        assert len(statuses) == SAGAS
        totals.update(statuses)
    outcomes = {status.value: count for status, count in totals.items()}
    print(f"\n{RUNS} kill points: {dict(labels)}; outcomes: {outcomes}")
    assert sum(totals.values()) == RUNS * SAGAS


async def test_sigkill_at_random_points_sqlite(tmp_path):
    from sagaflow.stores.sqlite import SQLiteSagaStore

    def target(name):
        return f"sqlite:///{tmp_path}/sagas-{name}.db", None

    def make_store(name):
        return SQLiteSagaStore(tmp_path / f"sagas-{name}.db")

    await run_crash_sweep(make_store, target, tmp_path)


async def test_sigkill_at_random_points_sqlite_inline(tmp_path):
    """The same with ``inline=True``: calls run on the event loop when the store is idle."""
    from sagaflow.stores.sqlite import SQLiteSagaStore

    def target(name):
        return f"sqlite:///{tmp_path}/sagas-{name}.db?inline=1", None

    def make_store(name):
        return SQLiteSagaStore(tmp_path / f"sagas-{name}.db", inline=True)

    await run_crash_sweep(make_store, target, tmp_path)


async def test_sigkill_at_random_points_postgres(tmp_path, postgres_url):
    import psycopg

    from sagaflow.stores.postgres import PostgresSagaStore

    prefix = f"crash_{uuid.uuid4().hex[:8]}"

    def target(name):
        return postgres_url, f"{prefix}_{name}"

    def make_store(name):
        return PostgresSagaStore(postgres_url, schema=f"{prefix}_{name}")

    try:
        await run_crash_sweep(make_store, target, tmp_path)
    finally:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            cursor = await conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (f"{prefix}%",)
            )
            for (name,) in await cursor.fetchall():
                await conn.execute(f'DROP SCHEMA "{name}" CASCADE')


pytestmark = pytest.mark.timeout(1200)
