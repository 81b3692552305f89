"""Bus changes made for observability: declared emits, quieter unrouted publishes."""

from __future__ import annotations

import logging

from sagaflow.choreography import EventBus
from sagaflow.events import Event, EventRegistry

registry = EventRegistry()


class Sent(Event, type="test.bus.sent.v1", registry=registry):
    pass


class Echoed(Event, type="test.bus.echoed.v1", registry=registry):
    pass


async def test_emits_are_kept_on_the_subscription():
    bus = EventBus(registry=registry)

    @bus.handler(Sent, group="echo", emits=[Echoed])
    async def echo(event: Sent) -> None: ...

    plain = bus.subscribe(Echoed, echo, group="plain")
    assert bus.subscriptions[0].emits == (Echoed,)
    assert plain.emits is None


async def test_unrouted_publishes_warn_once_without_a_callback(caplog):
    with caplog.at_level(logging.DEBUG, logger="sagaflow.choreography"):
        async with EventBus(registry=registry) as bus:
            await bus.publish(Sent())
            await bus.publish(Sent())
    levels = [r.levelno for r in caplog.records if "no subscription" in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG]


async def test_unrouted_publishes_are_debug_with_a_callback(caplog):
    seen = []
    with caplog.at_level(logging.DEBUG, logger="sagaflow.choreography"):
        async with EventBus(registry=registry, on_unrouted=seen.append) as bus:
            await bus.publish(Sent())
            await bus.publish(Sent())
    levels = [r.levelno for r in caplog.records if "no subscription" in r.getMessage()]
    assert levels == [logging.DEBUG, logging.DEBUG]
    assert len(seen) == 2 and bus.stats.unrouted == 2
