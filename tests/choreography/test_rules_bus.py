"""Rules of the event bus that no other test exercised, each through the public API.

Every test names the rule it checks (module docstrings of
``sagaflow.choreography``, docs/choreography.md) and fails if the rule breaks.
"""

from __future__ import annotations

import asyncio

import pytest

from sagaflow.errors import ConfigurationError, TransportUnavailableError
from sagaflow.transports.memory import MemoryTransport

from ._support import OrderPlaced, PaymentTaken, make_bus


class RefusingDeclare(MemoryTransport):
    """A broker that refuses to create groups on ``refused`` topics (it is away)."""

    def __init__(self, *refused: str) -> None:
        super().__init__()
        self.refused = set(refused)

    async def declare(self, topic: str, *, group: str) -> None:
        if topic in self.refused:
            raise TransportUnavailableError(f"cannot declare {topic}")
        await super().declare(topic, group=group)


def consumer_tasks() -> list[asyncio.Task[object]]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith("sagaflow-consumer") and not t.done()
    ]


# -- subscribing ---------------------------------------------------------------------


async def test_one_group_cannot_consume_one_topic_twice() -> None:
    # Rule (EventBus.subscribe): two handlers in one group would compete for the
    # same events, so the bus refuses it. With a shared topic, disjoint types
    # compete too: each consumer acked the other's events as "not my type", and
    # most events were never handled (18 of 20 in this scenario).
    bus = make_bus(topic_for=lambda name: "t.shared")
    bus.subscribe(OrderPlaced, lambda e: None, group="g")
    with pytest.raises(ConfigurationError, match="compete"):
        bus.subscribe(PaymentTaken, lambda e: None, group="g")
    seen: list[str] = []
    bus.subscribe(PaymentTaken, lambda e: seen.append(e.order_id), group="other")
    async with bus:
        for n in range(10):
            await bus.publish(PaymentTaken(order_id=str(n)))
        await bus.join()
    assert sorted(seen, key=int) == [str(n) for n in range(10)]
    # Disjoint types on their own topics still share a group.
    plain = make_bus()
    plain.subscribe(OrderPlaced, lambda e: None, group="g")
    plain.subscribe(PaymentTaken, lambda e: None, group="g")


# -- starting ------------------------------------------------------------------------


async def test_a_failed_start_leaves_nothing_running_and_can_be_retried() -> None:
    # Rule (EventBus.start): when it returns every group exists, so nothing
    # published afterwards is missed. A start that fails must not leave a
    # half-started bus: before the fix, the first group's consumer kept running
    # after ``async with`` raised (its task pending forever), the bus said
    # "running", and start() again did nothing, so group "b" never existed and
    # its events were dropped by the transport.
    transport = RefusingDeclare("t.payment.taken.v1")
    bus = make_bus(transport=transport)
    seen: list[str] = []
    bus.subscribe(OrderPlaced, lambda e: seen.append("a"), group="a")
    bus.subscribe(PaymentTaken, lambda e: seen.append("b"), group="b")
    with pytest.raises(TransportUnavailableError):
        async with bus:
            pass  # pragma: no cover - never entered
    assert consumer_tasks() == []
    assert "<EventBus new" in repr(bus)
    transport.refused.clear()  # the broker is back
    async with bus:
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.publish(PaymentTaken(order_id="1"))
        await bus.join()
    assert sorted(seen) == ["a", "b"]
    assert consumer_tasks() == []


async def test_a_subscription_refused_while_running_is_retried_by_the_next_publish() -> None:
    # Rule (EventBus.publish): a publish waits for subscriptions made while
    # running, so no subscribed group misses it. When the transport refused the
    # group, the publish raises (typed) and the next one starts the group again
    # instead of sending to a group that does not exist.
    transport = RefusingDeclare("t.payment.taken.v1")
    seen: list[str] = []
    async with make_bus(transport=transport) as bus:
        bus.subscribe(PaymentTaken, lambda e: seen.append(e.order_id), group="late")
        with pytest.raises(TransportUnavailableError):
            await bus.publish(PaymentTaken(order_id="lost?"))
        transport.refused.clear()
        await bus.publish(PaymentTaken(order_id="2"))
        await bus.join()
    assert seen == ["2"]
    assert bus.stats.published == 1
