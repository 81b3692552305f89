"""Hypothesis strategies of the kit: events, envelopes, hostile messages, schedules."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagaflow import EventBus, JsonSerializer
from sagaflow.events import Event, EventRegistry
from sagaflow.testing.faults import FaultKind
from sagaflow.testing.strategies import (
    envelopes,
    events,
    failure_schedules,
    hostile_messages,
    registered_events,
)
from sagaflow.transports.memory import MemoryTransport

registry = EventRegistry()


class Placed(Event, type="test.strat.placed.v1", registry=registry):
    order_id: str
    items: tuple[str, ...]
    total_cents: int


class Cancelled(Event, type="test.strat.cancelled.v1", registry=registry):
    order_id: str
    reason: str | None = None


SERIALIZER = JsonSerializer(registry, max_size=4096)


@settings(max_examples=60, deadline=None)
@given(envelopes(registered_events(registry), registry=registry))
def test_generated_envelopes_round_trip(envelope):
    message = SERIALIZER.encode(envelope, topic="t")
    decoded = SERIALIZER.decode(message)
    assert decoded.event == envelope.event
    assert decoded.id == envelope.id
    assert decoded.correlation_id == envelope.correlation_id


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile=hostile_messages(SERIALIZER, "test.strat.placed.v1", events(Placed)))
def test_hostile_messages_are_dead_lettered_and_the_consumer_survives(hostile):
    kind, message = hostile

    async def main():
        transport = MemoryTransport()
        handled = []

        async def handle(event: Placed) -> None:
            handled.append(event.order_id)

        async with EventBus(transport, registry=registry, serializer=SERIALIZER) as bus:
            bus.subscribe(Placed, handle, group="g")
            await bus.start()
            await transport.publish([message])
            await bus.publish(Placed(order_id="after", items=(), total_cents=1))
            await bus.join()
        return handled, await bus.dead_letters.list()

    handled, letters = asyncio.run(main())
    assert handled == ["after"], kind  # the good event after the bad one was still handled
    assert len(letters) == 1, kind
    assert letters[0].reason


def test_failure_schedules_respect_step_kinds():
    from tests_support import sample_saga

    saga = sample_saga()

    @settings(max_examples=80, deadline=None)
    @given(failure_schedules(saga))
    def check(schedule):
        pivot = schedule.steps.get("ship")
        if pivot is not None:
            assert set(pivot.attempts.values()) <= {FaultKind.RAISE}
        no_timeout = schedule.steps.get("no_timeout")
        if no_timeout is not None:
            assert FaultKind.TIMEOUT not in no_timeout.attempts.values()
        assert set(schedule.compensations) <= {"reserve", "no_timeout"}
        assert schedule.describe()

    check()


@given(st.data())
def test_events_strategy_pins_fields(data):
    event = data.draw(events(Cancelled, order_id=st.just("o-1")))
    assert event.order_id == "o-1"
