"""Property: for any saga shape and failure schedule, a saga is semantically atomic."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from hypothesis import HealthCheck, event, given, settings
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
from sagaflow.testing.clock import FakeClock
from sagaflow.testing.strategies import failure_schedules


class State(BaseModel):
    touched: list[str] = []


@dataclass
class Plan:
    """A generated saga shape: stages of step names, kinds and retry budgets."""

    stages: list[list[str]]  # step names per stage
    kinds: dict[str, StepKind]
    attempts: dict[str, int]
    comp_attempts: dict[str, int]
    # Steps without a timeout run their first attempt on the orchestrator's fast
    # path; steps with one (the only ones that can time out) on the general path.
    timeouts: dict[str, float | None]


@dataclass
class World:
    """Fake services, deduplicating by idempotency key, with an effect ledger."""

    effects: set[str] = field(default_factory=set)
    applied: list[str] = field(default_factory=list)  # every effect application
    undone: list[str] = field(default_factory=list)


@st.composite
def plans(draw) -> Plan:
    n_stages = draw(st.integers(1, 8))
    sizes = [draw(st.sampled_from([1, 1, 1, 2, 3])) for _ in range(n_stages)]
    singles = [i for i, size in enumerate(sizes) if size == 1]
    pivot_stage = draw(st.sampled_from([None, *singles]))
    stages, kinds = [], {}
    counter = 0
    for index, size in enumerate(sizes):
        names = []
        for _ in range(size):
            if counter >= 12:
                break
            name = f"s{counter}"
            counter += 1
            names.append(name)
            if pivot_stage is None or index < pivot_stage:
                kinds[name] = StepKind.COMPENSATABLE
            elif index == pivot_stage:
                kinds[name] = StepKind.PIVOT
            else:
                kinds[name] = StepKind.RETRIABLE
        if names:
            stages.append(names)
    attempts = {name: draw(st.integers(1, 3)) for name in kinds}
    comp_attempts = {name: draw(st.integers(1, 3)) for name in kinds}
    timeouts = {name: draw(st.sampled_from([None, 5.0])) for name in kinds}
    return Plan(stages, kinds, attempts, comp_attempts, timeouts)


def build(plan: Plan, world: World) -> Saga[State]:
    """The saga of ``plan`` over the world's deduplicating services (no faults yet)."""

    def action(name: str):
        async def run(ctx):
            await asyncio.sleep(0)  # let parallel branches interleave
            if ctx.idempotency_key not in world.effects:  # the service deduplicates by key
                world.effects.add(ctx.idempotency_key)
                world.applied.append(name)
            return {"touched": [*ctx.state.touched, name]}

        return run

    def compensation(name: str):
        async def run(ctx):
            key = f"{ctx.saga_id}:{name}"
            if key in world.effects:  # tolerate "nothing to undo"
                world.effects.discard(key)
            world.undone.append(name)

        return run

    def step(name: str) -> Step:
        kind = plan.kinds[name]
        return Step(
            name,
            action(name),
            kind=kind,
            compensate=compensation(name) if kind is StepKind.COMPENSATABLE else None,
            timeout=plan.timeouts[name],
            retry=RetryPolicy(max_attempts=plan.attempts[name], initial_delay=0),
            compensation_retry=RetryPolicy(max_attempts=plan.comp_attempts[name], initial_delay=0),
        )

    stages = [
        step(names[0]) if len(names) == 1 else Parallel(f"g{i}", *map(step, names))
        for i, names in enumerate(plan.stages)
    ]
    return Saga("prop", state=State, steps=stages)


def run_saga(saga: Saga[State], clock: FakeClock):
    async def main():
        store = MemorySagaStore(clock=clock)
        orchestrator = Orchestrator(store, clock=clock, seed=0)
        result = await orchestrator.run(saga, State(), saga_id="p1")
        log = await store.load("p1")
        await orchestrator.close()
        return result, log

    return asyncio.run(main())


def kinds_in(records, kind):
    return [r.step for r in records if r.kind is kind]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(), data=st.data())
def test_sagas_are_semantically_atomic(plan: Plan, data):
    world = World()
    clock = FakeClock(auto_advance=True)
    saga = build(plan, world)
    # The testing kit's failure schedules: raises and time-outs on any attempts.
    schedule = data.draw(failure_schedules(saga))
    result, log = run_saga(schedule.apply(saga, clock=clock), clock)
    records = result.records
    event(f"status={result.status.value}")
    if any(len(stage) > 1 for stage in plan.stages):
        event("has a parallel group")
    assert result.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)

    # The log is consistent with the status, and the store holds exactly that log.
    assert log.status is result.status
    assert tuple(log.records) == records
    final = {
        SagaStatus.COMPLETED: RecordKind.SAGA_COMPLETED,
        SagaStatus.COMPENSATED: RecordKind.SAGA_COMPENSATED,
        SagaStatus.FAILED: RecordKind.SAGA_FAILED,
    }[result.status]
    assert records[-1].kind is final
    assert sum(r.kind is final for r in records) == 1

    all_steps = [name for stage in plan.stages for name in stage]
    completed = kinds_in(records, RecordKind.STEP_COMPLETED)
    compensated = kinds_in(records, RecordKind.COMPENSATION_COMPLETED)

    # Every action that ran was logged as started first; no step ran twice to completion.
    assert len(completed) == len(set(completed))
    assert len(world.applied) == len(set(world.applied)), "an effect was applied twice"
    # Compensations: each at most once, only for compensatable steps.
    assert len(compensated) == len(set(compensated))
    assert all(plan.kinds[name] is StepKind.COMPENSATABLE for name in compensated)

    if result.status is SagaStatus.COMPLETED:
        assert completed and set(completed) == set(all_steps)
        assert compensated == []
        assert {e.split(":")[1] for e in world.effects} == set(all_steps)
        return

    # Nothing started after the stage where the saga turned back.
    started = kinds_in(records, RecordKind.STEP_STARTED)
    stage_of = {name: i for i, stage in enumerate(plan.stages) for name in stage}
    failed_stage = max(stage_of[name] for name in started)
    assert all(stage_of[name] <= failed_stage for name in started)
    assert not all(name in completed for name in plan.stages[failed_stage])

    # Which compensatable steps may have taken effect, in order of finishing.
    to_undo: list[str] = []
    for record in records:
        if record.step is None or plan.kinds[record.step] is not StepKind.COMPENSATABLE:
            continue
        finished = record.kind is RecordKind.STEP_COMPLETED or (
            record.kind is RecordKind.STEP_FAILED
            and record.data["final"]
            and record.data["uncertain"]
        )
        if finished and record.step not in to_undo:
            to_undo.append(record.step)

    pivot_done = any(plan.kinds[name] is StepKind.PIVOT for name in completed)
    if result.status is SagaStatus.COMPENSATED:
        assert not pivot_done
        assert compensated == list(reversed(to_undo))
        assert world.effects == set(), "something done was left undone"
        return

    # FAILED: parked either past the pivot (nothing compensated) or on a compensation.
    if pivot_done:
        assert compensated == []
        failed_retriable = [
            r.step for r in records if r.kind is RecordKind.STEP_FAILED and r.data["final"]
        ]
        assert failed_retriable
        assert all(plan.kinds[n] is StepKind.RETRIABLE for n in failed_retriable)
    else:
        expected = list(reversed(to_undo))
        assert compensated == expected[: len(compensated)]
        stuck = expected[len(compensated)]
        assert result.error["step"] == stuck
        last_comp_fail = [
            r for r in records if r.kind is RecordKind.COMPENSATION_FAILED and r.step == stuck
        ]
        assert last_comp_fail and last_comp_fail[-1].data["final"]
