"""Crash-point exploration catches what it claims: a non-idempotent step run twice."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from sagaflow import MemorySagaStore, Saga, SagaStatus, Step
from sagaflow.errors import SagaNotFoundError
from sagaflow.orchestration.records import RecordKind, SagaRecord
from sagaflow.testing.crash import CrashingStore, SimulatedCrash, explore_crash_points


class State(BaseModel):
    n: int = 0


async def act(ctx: object) -> None:
    return None


def charge(ctx: object) -> None:  # a sync action: counted too
    return None


def saga(idempotent: bool) -> Saga[State]:
    return Saga(
        "crash-rules",
        state=State,
        steps=[
            Step("charge", charge, compensate=act, idempotent=idempotent),
            Step("ship", act, compensate=act),
        ],
    )


async def test_a_non_idempotent_step_run_twice_fails_the_exploration():
    async def fresh_store() -> MemorySagaStore:  # an async factory works too
        return MemorySagaStore()

    report = await explore_crash_points(saga(False), State(), store_factory=fresh_store)
    assert [o.point for o in report.failures] == ["before-write-2"]
    [failure] = report.failures
    assert failure.status is SagaStatus.COMPLETED and failure.runs["charge"] == 2
    assert failure.problems == ("non-idempotent step 'charge' ran 2 times",)
    with pytest.raises(AssertionError, match=r"before-write-2 .*ran 2 times"):
        report.assert_ok()
    assert "FAIL before-write-2" in report.render()
    # `only` reproduces that one point.
    again = await explore_crash_points(saga(False), State(), only=["before-write-2"])
    assert [o.point for o in again.outcomes] == ["before-write-2"] and not again.outcomes[0].ok


async def test_an_idempotent_step_may_run_twice():
    report = await explore_crash_points(saga(True), State())
    report.assert_ok()
    assert len(report.outcomes) == 6 and all(
        o.status is SagaStatus.COMPLETED for o in report.outcomes
    )


async def test_a_crashed_store_accepts_no_further_write():
    inner = MemorySagaStore()
    store = CrashingStore(inner, crash_at=1)
    started = [SagaRecord(RecordKind.SAGA_STARTED, data={"saga": "x", "version": 1, "state": {}})]
    with pytest.raises(SimulatedCrash, match="before write 1"):
        await store.create("s", started, owner="w", lease=1.0)
    with pytest.raises(SimulatedCrash, match="already crashed"):
        await store.create("s", started, owner="w", lease=1.0)
    with pytest.raises(SagaNotFoundError):
        await store.load("s")  # nothing reached the real store
    assert await store.list_sagas() == []
