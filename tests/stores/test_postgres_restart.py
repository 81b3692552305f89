"""PostgreSQL restarts while sagas run: none is lost or stuck once it is back.

A private PostgreSQL server (its own port and data directory; the shared one is
never touched) is stopped in the middle of a batch of sagas and started again.
Writes that fail meanwhile are retried by the orchestrator's store policy;
whatever still did not finish is recovered by a worker afterwards.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pydantic import BaseModel

from sagaflow import Orchestrator, RetryPolicy, Saga, SagaStatus, Step, StepKind
from sagaflow.errors import StoreUnavailableError

pytestmark = [pytest.mark.services, pytest.mark.slow, pytest.mark.timeout(300)]

SAGAS = 40


class Order(BaseModel):
    order_id: str


def order_saga(ledger: dict[str, int]) -> Saga[Order]:
    async def act(ctx: Any) -> None:
        await asyncio.sleep(0.2)  # keep sagas in flight while the server goes away
        ledger[ctx.idempotency_key] = ledger.get(ctx.idempotency_key, 0) + 1

    return Saga(
        "order",
        state=Order,
        steps=[
            Step("reserve", act, compensate=act),
            Step("charge", act, compensate=act),
            Step("ship", act, kind=StepKind.PIVOT),
            Step("notify", act, kind=StepKind.RETRIABLE),
        ],
    )


async def test_postgres_restart_during_a_run_of_sagas(postgres_server: Any) -> None:
    from sagaflow.stores import PostgresSagaStore

    url = f"postgresql://postgres@127.0.0.1:{postgres_server.port}/postgres"
    ledger: dict[str, int] = {}
    saga = order_saga(ledger)
    patient = RetryPolicy(
        max_attempts=None, initial_delay=0.1, max_delay=1.0, deadline=60,
        retry_on=(StoreUnavailableError,),
    )  # fmt: skip
    store = PostgresSagaStore(url, pool_size=8, connect_timeout=2.0)
    orchestrator = Orchestrator(store, lease=3.0, store_retry=patient, sagas=[saga])
    runs = [
        asyncio.ensure_future(orchestrator.run(saga, {"order_id": f"o{i}"}, saga_id=f"o{i}"))
        for i in range(SAGAS)
    ]
    await asyncio.sleep(0.3)
    in_flight = sum(not run.done() for run in runs)
    postgres_server.stop()  # fast shutdown: connections are cut
    await asyncio.sleep(1.5)
    await asyncio.to_thread(postgres_server.start)
    outcomes = await asyncio.gather(*runs, return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    # Whatever gave up during the outage is finished by a worker once the lease lapses.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        report = await orchestrator.recover()
        unfinished = [s for s in await store.list_sagas(limit=1000) if not s.status.is_terminal]
        if not unfinished and not report.errors:
            break
        await asyncio.sleep(0.5)
    statuses = {}
    for i in range(SAGAS):
        log = await store.load(f"o{i}")  # none is lost
        statuses[f"o{i}"] = log.status
    await orchestrator.close()
    await store.close()
    assert in_flight == SAGAS  # the outage hit every saga mid-run
    assert set(statuses.values()) == {SagaStatus.COMPLETED}, (statuses, errors)
    for i in range(SAGAS):
        for step in ("reserve", "charge", "ship", "notify"):
            assert ledger.get(f"o{i}:{step}", 0) >= 1
    print(f"\n{SAGAS} sagas through a PostgreSQL restart: {len(errors)} gave up and were recovered")
