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


# -- handler failures ----------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
@pytest.mark.parametrize("on_attempt", [1, 2], ids=["first-attempt", "in-a-retry"])
async def test_a_handler_raising_cancelled_error_is_dead_lettered(
    concurrency: int, sync: bool, on_attempt: int
) -> None:
    # Rule (docs/choreography.md): a failing message is dead-lettered with its
    # reason and the consumer keeps running. A CancelledError raised by the
    # handler itself (nobody cancelled the task) used to escape the pipeline:
    # with concurrency=1 it ended the consumer (later events never handled),
    # and the delivery stayed unsettled, neither retried nor dead-lettered.
    calls: dict[str, int] = {}

    def fail_or_record(event: OrderPlaced) -> None:
        calls[event.order_id] = calls.get(event.order_id, 0) + 1
        if event.order_id == "bad" and calls["bad"] >= on_attempt:
            raise asyncio.CancelledError("a library leaked it")
        if event.order_id == "bad":
            raise ConnectionError("first attempt fails")

    async def async_handler(event: OrderPlaced) -> None:
        fail_or_record(event)

    handler = fail_or_record if sync else async_handler
    async with make_bus() as bus:
        bus.subscribe(OrderPlaced, handler, group="g", concurrency=concurrency)
        await bus.publish(OrderPlaced(order_id="bad"))
        await bus.publish(OrderPlaced(order_id="ok"))
        await bus.join(timeout=10)
        [letter] = await bus.dead_letters.list(group="g")
    assert calls == {"bad": on_attempt, "ok": 1}
    assert letter.deliveries == 1
    assert letter.attempts == on_attempt
    assert "CancelledError without being cancelled: a library leaked it" in letter.reason
    assert letter.error is not None
    assert letter.error["type"] == "sagaflow.errors.NonRetryableError"
    assert bus.stats.handled == 1


async def test_stopping_still_cancels_a_handler_and_the_event_comes_back() -> None:
    # Rule (EventBus.stop): handlers still running after the timeout are
    # cancelled and their deliveries stay unsettled, to be redelivered; a real
    # cancellation is not mistaken for a handler failure.
    started = asyncio.Event()

    async def stuck(event: OrderPlaced) -> None:
        started.set()
        await asyncio.Event().wait()

    transport = MemoryTransport()
    bus = make_bus(transport=transport)
    bus.subscribe(OrderPlaced, stuck, group="g")
    await bus.start()
    await bus.publish(OrderPlaced(order_id="1"))
    await asyncio.wait_for(started.wait(), 5)
    await bus.stop(timeout=0.05)
    assert bus.stats.dead_lettered == 0
    assert transport.pending("t.order.placed.v1", group="g") == 1
    await transport.close()
