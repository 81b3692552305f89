"""Recovery after a crash, workers sharing sagas, and operator controls."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from sagaflow import (
    MemorySagaStore,
    Orchestrator,
    Parallel,
    RecordKind,
    RetryPolicy,
    Saga,
    SagaStatus,
    Step,
    StepKind,
)
from sagaflow.errors import FencedError, SagaStateError
from sagaflow.testing.clock import FakeClock
from sagaflow.testing.crash import CrashingStore, SimulatedCrash, explore_crash_points

NO_WAIT = RetryPolicy(max_attempts=2, initial_delay=0)


class Order(BaseModel):
    order_id: str = "o"
    done: list[str] = []


class Ledger:
    """Fake services that deduplicate by idempotency key, like real ones should."""

    def __init__(self):
        self.effects: dict[str, int] = {}  # idempotency key -> times applied
        self.calls: list[str] = []
        self.broken: set[str] = set()

    def action(self, name):
        async def run(ctx):
            self.calls.append(name)
            if name in self.broken:
                raise RuntimeError(f"{name} is down")
            self.effects.setdefault(ctx.idempotency_key, 0)
            self.effects[ctx.idempotency_key] += 1
            return {"done": [*ctx.state.done, name]}

        return run

    def applied(self, key):
        return self.effects.get(key, 0)


def saga_for(ledger: Ledger, *, version=1, fail_last=False) -> Saga[Order]:
    def comp(name):
        return Step(name, ledger.action(name), compensate=ledger.action(f"undo_{name}"))

    last = ledger.action("ship")
    if fail_last:
        ledger.broken.add("ship")
    return Saga(
        "order",
        state=Order,
        version=version,
        retry=NO_WAIT,
        compensation_retry=NO_WAIT,
        steps=[
            comp("reserve"),
            Parallel("pay", comp("charge"), comp("points")),
            Step("ship", last, kind=StepKind.PIVOT),
            Step("notify", ledger.action("notify"), kind=StepKind.RETRIABLE, retry=NO_WAIT),
        ],
    )


async def crash_run(store, saga, *, crash_at, after, saga_id="s1"):
    crashing = CrashingStore(store, crash_at=crash_at, after=after)
    orchestrator = Orchestrator(crashing, lease=0.0, owner="dead")
    with pytest.raises(SimulatedCrash):
        await orchestrator.run(saga, Order(), saga_id=saga_id)
    await orchestrator.close()


async def test_recovery_reruns_a_step_whose_outcome_is_unknown():
    ledger = Ledger()
    store = MemorySagaStore()
    saga = saga_for(ledger)
    # Write 2 carries reserve's completion and the parallel starts; crash before it:
    # reserve ran, but the log only says it started.
    await crash_run(store, saga, crash_at=2, after=False)
    assert ledger.calls == ["reserve"]
    report = await Orchestrator(store, sagas=[saga]).recover()
    [result] = report.finished
    assert result.status is SagaStatus.COMPLETED
    assert ledger.calls.count("reserve") == 2  # run again ...
    assert ledger.applied("s1:reserve") == 2  # ... with the same idempotency key
    started = [
        r.attempt
        for r in result.records
        if r.kind is RecordKind.STEP_STARTED and r.step == "reserve"
    ]
    assert started == [1, 2]
    assert any(r.kind is RecordKind.SAGA_RECOVERED for r in result.records)
    # parallel branches both update "done" from the same snapshot: the later one wins
    assert {"reserve", "ship", "notify"} <= set(result.state.done)


async def test_recovery_continues_compensating():
    ledger = Ledger()
    store = MemorySagaStore()
    saga = saga_for(ledger, fail_last=True)
    writes = CrashingStore(MemorySagaStore())
    await Orchestrator(writes).run(saga, Order(), saga_id="s1")
    # find the write that starts the second compensation, crash right after it
    index = next(
        i
        for i, records in enumerate(writes.writes, start=1)
        if [r.kind for r in records].count(RecordKind.COMPENSATION_STARTED)
        and any(r.kind is RecordKind.COMPENSATION_COMPLETED for r in records)
    )
    ledger2 = Ledger()
    saga2 = saga_for(ledger2, fail_last=True)
    await crash_run(store, saga2, crash_at=index, after=True)
    report = await Orchestrator(store, sagas=[saga2]).recover()
    [result] = report.finished
    assert result.status is SagaStatus.COMPENSATED
    undone = sorted(c for c in ledger2.calls if c.startswith("undo_"))
    assert undone.count("undo_reserve") == 1
    assert set(result.compensated_steps()) == {"reserve", "charge", "points"}


async def test_unknown_definition_is_refused_and_released():
    store = MemorySagaStore()
    await crash_run(store, saga_for(Ledger()), crash_at=2, after=True)
    report = await Orchestrator(store, sagas=[saga_for(Ledger(), version=2)]).recover()
    assert report.finished == []
    [(saga_id, error)] = report.refused
    assert saga_id == "s1"
    assert "order@1" in str(error) and "register it" in str(error)
    log = await store.load("s1")
    assert log.owner is None  # released for a worker that has the definition
    report = await Orchestrator(store, sagas=[saga_for(Ledger())]).recover()
    assert report.finished[0].status is SagaStatus.COMPLETED


async def test_a_saga_that_keeps_crashing_is_parked():
    store = MemorySagaStore()
    ledger = Ledger()
    saga = saga_for(ledger)

    async def crash(ctx):
        raise SimulatedCrash("this step kills its worker")

    crashing_saga = Saga(
        "order", state=Order, steps=[Step("reserve", crash, compensate=ledger.action("undo"))]
    )
    with pytest.raises(SimulatedCrash):
        await Orchestrator(store, lease=0.0).run(crashing_saga, Order(), saga_id="s1")
    orchestrator = Orchestrator(store, sagas=[crashing_saga], lease=0.0, max_recoveries=3)
    for _ in range(3):
        with pytest.raises(SimulatedCrash):
            await orchestrator.recover()
    report = await orchestrator.recover()
    [result] = report.finished
    assert result.status is SagaStatus.FAILED
    assert result.error["type"] == "RecoveryLimitExceeded"
    del saga


async def test_operator_resume_retries_a_parked_compensation():
    ledger = Ledger()
    ledger.broken |= {"ship", "undo_charge"}
    saga = saga_for(ledger)
    store = MemorySagaStore()
    orchestrator = Orchestrator(store, sagas=[saga])
    result = await orchestrator.run(saga, Order(), saga_id="s1")
    assert result.status is SagaStatus.FAILED
    assert result.error["step"] == "charge"
    ledger.broken.discard("undo_charge")  # the operator fixed the payment service
    resumed = await orchestrator.resume(saga, "s1")
    assert resumed.status is SagaStatus.COMPENSATED
    assert "charge" in resumed.compensated_steps() and "reserve" in resumed.compensated_steps()
    kinds = [r.kind for r in resumed.records]
    assert RecordKind.SAGA_RESUMED in kinds


async def test_operator_skip_records_the_reason():
    ledger = Ledger()
    ledger.broken |= {"ship", "undo_charge"}
    saga = saga_for(ledger)
    orchestrator = Orchestrator(sagas=[saga])
    await orchestrator.run(saga, Order(), saga_id="s1")
    result = await orchestrator.skip(saga, "s1", reason="refunded by hand, ticket 42")
    assert result.status is SagaStatus.COMPENSATED
    skipped = [r for r in result.records if r.kind is RecordKind.COMPENSATION_SKIPPED]
    assert skipped[0].step == "charge"
    assert skipped[0].data["reason"] == "refunded by hand, ticket 42"
    assert "reserve" in result.compensated_steps()


async def test_operator_resume_after_the_pivot_goes_forward():
    ledger = Ledger()
    ledger.broken.add("notify")
    saga = saga_for(ledger)
    orchestrator = Orchestrator(sagas=[saga])
    parked = await orchestrator.run(saga, Order(), saga_id="s1")
    assert parked.status is SagaStatus.FAILED
    with pytest.raises(SagaStateError, match="no compensation to skip"):
        await orchestrator.skip(saga, "s1", reason="x")
    ledger.broken.clear()
    result = await orchestrator.resume(saga, "s1")
    assert result.status is SagaStatus.COMPLETED
    assert result.compensated_steps() == []


async def test_operator_resume_gets_the_whole_deadline_again():
    # A saga parked past its pivot is resumed long after its deadline: the
    # operator's resume starts the deadline again (a recovery after a crash does
    # not: it has what is left since the start or the latest resume).
    clock = FakeClock()
    ledger = Ledger()
    ledger.broken.add("notify")
    saga = Saga(
        "order",
        state=Order,
        deadline=100,
        retry=NO_WAIT,
        steps=[
            Step("ship", ledger.action("ship"), kind=StepKind.PIVOT),
            Step("notify", ledger.action("notify"), kind=StepKind.RETRIABLE, retry=NO_WAIT),
        ],
    )
    orchestrator = Orchestrator(sagas=[saga], clock=clock)
    parked = await orchestrator.run(saga, Order(), saga_id="s1")
    assert parked.status is SagaStatus.FAILED
    await clock.advance(500)  # days later, say
    ledger.broken.clear()
    before = len(ledger.calls)
    result = await orchestrator.resume(saga, "s1")
    assert result.status is SagaStatus.COMPLETED
    assert ledger.calls[before:] == ["notify"]


async def test_resume_refuses_a_saga_that_is_not_parked():
    saga = saga_for(Ledger())
    orchestrator = Orchestrator()
    await orchestrator.run(saga, Order(), saga_id="s1")
    with pytest.raises(SagaStateError, match="not parked"):
        await orchestrator.resume(saga, "s1")


async def test_workers_share_sagas_and_each_is_advanced_once():
    store = MemorySagaStore()
    ledger = Ledger()
    saga = saga_for(ledger)
    for i in range(30):
        await crash_run(store, saga, crash_at=2 + i % 3, after=bool(i % 2), saga_id=f"s{i}")
    stop = asyncio.Event()
    workers = [Orchestrator(store, sagas=[saga], owner=f"w{n}") for n in range(2)]
    tasks = [asyncio.ensure_future(w.work(poll_interval=0.01, stop=stop)) for w in workers]
    for _ in range(200):
        summaries = await store.list_sagas(limit=100)
        if all(s.status.is_terminal for s in summaries):
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.gather(*tasks)
    for i in range(30):
        log = await store.load(f"s{i}")
        assert log.status is SagaStatus.COMPLETED
        recovered = [r for r in log.records if r.kind is RecordKind.SAGA_RECOVERED]
        assert len(recovered) == 1  # exactly one worker took it over
    owners = {
        r.data["owner"]
        for i in range(30)
        for r in (await store.load(f"s{i}")).records
        if r.kind is RecordKind.SAGA_RECOVERED
    }
    assert owners <= {"w0", "w1"}


async def test_a_worker_whose_lease_expired_is_fenced_out():
    clock = FakeClock()
    store = MemorySagaStore(clock=clock)
    gate = asyncio.Event()
    release = asyncio.Event()

    async def slow(ctx):
        gate.set()
        await release.wait()

    async def undo(ctx):
        return None

    saga = Saga(
        "order",
        state=Order,
        steps=[Step("a", slow, compensate=undo), Step("b", slow, compensate=undo)],
    )
    first = Orchestrator(store, clock=clock, lease=10, owner="first")
    task = asyncio.ensure_future(first.run(saga, Order(), saga_id="s1"))
    await gate.wait()
    first._active.clear()  # its heartbeat is gone (a long GC pause, a partition...)
    clock._offset += 60  # the lease lapses
    second = Orchestrator(store, clock=clock, lease=10, owner="second", sagas=[saga])
    claims = await store.claim(owner="second", lease=10, limit=10)
    assert [c.saga_id for c in claims] == ["s1"]
    release.set()
    with pytest.raises(FencedError):
        await task
    await store.release("s1", fencing_token=claims[0].fencing_token)
    report = await second.recover()
    assert report.finished[0].status is SagaStatus.COMPLETED


async def test_crash_point_exploration_of_a_saga_with_a_parallel_group():
    ledger = Ledger()
    report = await explore_crash_points(saga_for(ledger), Order())
    report.assert_ok()
    assert len(report.outcomes) >= 10
    assert {o.status for o in report.outcomes} == {SagaStatus.COMPLETED}


async def test_crash_points_flag_a_non_idempotent_step():
    ledger = Ledger()

    async def undo(ctx):
        return None

    saga = Saga(
        "pay",
        state=Order,
        steps=[
            Step("charge", ledger.action("charge"), compensate=undo, idempotent=False),
            Step("ship", ledger.action("ship"), compensate=undo),
        ],
    )
    report = await explore_crash_points(saga, Order())
    failing = {o.point for o in report.failures}
    assert "before-write-2" in failing  # charge ran, its completion was lost, it ran again
    assert "non-idempotent step 'charge' ran 2 times" in report.render()
    rerun = await explore_crash_points(saga, Order(), only=["before-write-2"])
    assert [o.point for o in rerun.outcomes] == ["before-write-2"]
    assert not rerun.outcomes[0].ok


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fail_ship=st.booleans(), broken_undo=st.sampled_from([None, "undo_charge", "undo_reserve"]))
def test_every_crash_point_converges(fail_ship, broken_undo):
    async def main():
        ledger = Ledger()
        if broken_undo:
            ledger.broken.add(broken_undo)
        report = await explore_crash_points(saga_for(ledger, fail_last=fail_ship), Order())
        report.assert_ok()
        for outcome in report.outcomes:
            assert outcome.status.is_terminal

    asyncio.run(main())
