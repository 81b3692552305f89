"""The fault-injection kit: deterministic faults in steps, handlers and transports."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from sagaflow import EventBus, Orchestrator, RetryPolicy, Saga, SagaStatus, Step
from sagaflow.events import Event, EventRegistry
from sagaflow.testing.clock import FakeClock
from sagaflow.testing.faults import (
    Fault,
    FaultKind,
    FaultyTransport,
    InjectedFault,
    faulty,
    inject_faults,
)
from sagaflow.transports.memory import MemoryTransport


class State(BaseModel):
    n: int = 0


calls: list[str] = []


async def act(ctx):
    calls.append(f"{ctx.step}#{ctx.attempt}")
    return {"n": ctx.state.n + 1}


async def undo(ctx):
    calls.append(f"undo {ctx.step}#{ctx.attempt}")


SAGA = Saga(
    "f",
    state=State,
    retry=RetryPolicy(max_attempts=3, initial_delay=0),
    compensation_retry=RetryPolicy(max_attempts=3, initial_delay=0),
    steps=[Step("a", act, compensate=undo, timeout=1), Step("b", act, compensate=undo, timeout=1)],
)


@pytest.fixture(autouse=True)
def _reset():
    calls.clear()


async def test_raise_on_chosen_attempts_then_succeed():
    saga = inject_faults(SAGA, steps={"a": Fault.raise_on(1, 2)})
    result = await Orchestrator().run(saga, State())
    assert result.status is SagaStatus.COMPLETED
    assert calls == ["a#3", "b#1"]  # attempts 1 and 2 raised before the action ran
    assert saga.key == SAGA.key and saga.plan("a").retry == SAGA.plan("a").retry


async def test_timeout_fault_takes_effect_then_times_out():
    clock = FakeClock(auto_advance=True)
    saga = inject_faults(SAGA, steps={"b": Fault.timeout_on(1, 2, 3)}, clock=clock)
    result = await Orchestrator(clock=clock).run(saga, State())
    assert result.status is SagaStatus.COMPENSATED
    assert calls.count("b#1") == 1  # the effect happened ...
    assert "undo b#1" in calls  # ... so the uncertain step is compensated
    assert result.error["type"] == "StepTimeoutError"


async def test_hang_fault_in_a_compensation_and_custom_errors():
    clock = FakeClock(auto_advance=True)
    saga = inject_faults(
        SAGA,
        steps={"b": Fault.always(error=ValueError("nope"))},
        compensations={"a": Fault.raise_on(1, 2, 3)},
        clock=clock,
    )
    result = await Orchestrator(clock=clock).run(saga, State())
    assert result.status is SagaStatus.FAILED
    assert result.error["type"] == "InjectedFault"
    with pytest.raises(KeyError, match="zz"):
        inject_faults(SAGA, steps={"zz": Fault.raise_on(1)})


def test_random_faults_are_reproducible():
    fault = Fault.random(0.5, seed=3, kinds=[FaultKind.RAISE, FaultKind.HANG])
    first = [fault.decide(n, "k") for n in range(1, 50)]
    again = [fault.decide(n, "k") for n in range(1, 50)]
    assert first == again
    assert {FaultKind.RAISE, FaultKind.HANG, None} == set(first)
    assert isinstance(fault.exception("x", 1), InjectedFault)


registry = EventRegistry()


class Ping(Event, type="test.faults.ping.v1", registry=registry):
    n: int


async def test_faulty_handler_fails_first_attempts_per_event():
    seen: list[int] = []

    async def handle(event: Ping) -> None:
        seen.append(event.n)

    async with EventBus(
        registry=registry, retry=RetryPolicy(max_attempts=3, initial_delay=0)
    ) as bus:
        bus.subscribe(Ping, faulty(handle, Fault.raise_on(1, 2)), group="g")
        await bus.publish(Ping(n=1))
        await bus.publish(Ping(n=2))
        await bus.join()
    assert sorted(seen) == [1, 2]
    assert bus.stats.handled >= 2


async def test_faulty_transport_duplicates_drops_and_reorders_but_loses_nothing():
    transport = FaultyTransport(
        MemoryTransport(),
        seed=11,
        duplicate=0.3,
        drop_before_ack=0.3,
        reorder=0.3,
        delay=0.2,
        delay_seconds=0.001,
    )
    seen: list[int] = []

    async def handle(event: Ping) -> None:
        seen.append(event.n)

    bus = EventBus(
        transport, registry=registry, redelivery=RetryPolicy(max_attempts=20, initial_delay=0)
    )
    bus.subscribe(Ping, handle, group="g")
    async with bus:
        for n in range(40):
            await bus.publish(Ping(n=n))
        await bus.join(timeout=20)
    assert sorted(set(seen)) == list(range(40))  # nothing lost
    assert len(seen) == 40  # duplicates absorbed by the inbox
    assert transport.counts["duplicated"] and transport.counts["dropped"]
    assert transport.counts["reordered"]
    assert not transport.features.ordered
