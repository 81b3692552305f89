"""Event classes and helpers shared by the choreography tests (private registry)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from sagaflow.choreography import EventBus
from sagaflow.events import Event, EventRegistry
from sagaflow.retry import RetryPolicy
from sagaflow.transports.memory import MemoryTransport

REGISTRY = EventRegistry()


class OrderEvent(Event):
    """Abstract: a handler of OrderEvent receives every subclass."""

    order_id: str


class OrderPlaced(OrderEvent, type="t.order.placed.v1", registry=REGISTRY):
    total: int = 0


class OrderCancelled(OrderEvent, type="t.order.cancelled.v1", registry=REGISTRY):
    reason: str = ""


class PaymentTaken(Event, type="t.payment.taken.v1", registry=REGISTRY):
    order_id: str


class Tagged(Event, type="t.tagged.v1", registry=REGISTRY):
    """Has a mutable field: never shared between groups, always decoded."""

    tags: list[str]


FAST_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=False)
FAST_REDELIVERY = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=False)


def make_bus(**options: Any) -> EventBus:
    """A bus on a private registry with zero-delay retries."""
    options.setdefault("registry", REGISTRY)
    options.setdefault("retry", FAST_RETRY)
    options.setdefault("redelivery", FAST_REDELIVERY)
    return EventBus(**options)


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``predicate`` until true; fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.002)


def memory(bus: EventBus) -> MemoryTransport:
    assert isinstance(bus.transport, MemoryTransport)
    return bus.transport
