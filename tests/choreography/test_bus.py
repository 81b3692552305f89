from __future__ import annotations

import threading

import pytest

from sagaflow.choreography import EventBus, current_envelope
from sagaflow.envelope import Envelope
from sagaflow.errors import ConfigurationError, TransportClosedError
from sagaflow.events import Event, EventRegistry
from sagaflow.transports.memory import MemoryTransport

from ._support import (
    REGISTRY,
    OrderCancelled,
    OrderEvent,
    OrderPlaced,
    PaymentTaken,
    Tagged,
    make_bus,
    memory,
)


async def test_publish_and_handle_async_handler() -> None:
    seen: list[OrderPlaced] = []
    async with make_bus() as bus:

        @bus.handler(OrderPlaced, group="inventory")
        async def reserve(event: OrderPlaced) -> None:
            seen.append(event)

        envelope = await bus.publish(OrderPlaced(order_id="o-1", total=5))
        await bus.join()
    assert seen == [OrderPlaced(order_id="o-1", total=5)]
    assert envelope.type == "t.order.placed.v1"
    assert envelope.correlation_id == envelope.id
    assert bus.stats.published == 1
    assert bus.stats.handled == 1
    assert reserve.__name__ == "reserve"  # the decorator returns the function


async def test_sync_handler_runs_off_the_loop_with_the_envelope() -> None:
    loop_thread = threading.get_ident()
    seen: list[tuple[int, str | None]] = []

    def handle(event: OrderPlaced) -> None:
        env = current_envelope()
        seen.append((threading.get_ident(), env.id if env else None))

    async with make_bus() as bus:
        bus.subscribe(OrderPlaced, handle, group="sync")
        envelope = await bus.publish(OrderPlaced(order_id="o-1"))
        await bus.join()
    [(thread, env_id)] = seen
    assert thread != loop_thread
    assert env_id == envelope.id


async def test_base_class_handler_receives_subclasses() -> None:
    seen: list[type[Event]] = []
    async with make_bus() as bus:

        @bus.handler(OrderEvent, group="audit")
        async def audit(event: OrderEvent) -> None:
            seen.append(type(event))

        await bus.publish(OrderPlaced(order_id="1"))
        await bus.publish(OrderCancelled(order_id="1"))
        await bus.publish(PaymentTaken(order_id="1"))
        await bus.join()
    assert sorted(t.__name__ for t in seen) == ["OrderCancelled", "OrderPlaced"]


async def test_fan_out_across_groups_and_competition_within() -> None:
    transport = MemoryTransport()
    counts: dict[str, int] = {"a1": 0, "a2": 0, "b": 0}
    bus1, bus2 = make_bus(transport=transport), make_bus(transport=transport)

    def handler(name: str):  # type: ignore[no-untyped-def]
        async def handle(event: OrderPlaced) -> None:
            counts[name] += 1

        return handle

    bus1.subscribe(OrderPlaced, handler("a1"), group="a")
    bus2.subscribe(OrderPlaced, handler("a2"), group="a")  # same group: competes
    bus2.subscribe(PaymentTaken, handler("b"), group="a-payments")
    bus1.subscribe(OrderPlaced, handler("b"), group="b")  # another group: fan-out
    async with bus1, bus2:
        for i in range(20):
            await bus1.publish(OrderPlaced(order_id=str(i)))
        await bus1.join()
        await bus2.join()
    assert counts["a1"] + counts["a2"] == 20
    assert counts["b"] == 20
    await transport.close()


async def test_handler_publishes_inherit_correlation_and_causation() -> None:
    followups: list[Envelope[Event]] = []
    async with make_bus() as bus:

        @bus.handler(OrderPlaced, group="payments")
        async def charge(event: OrderPlaced) -> None:
            await bus.publish(PaymentTaken(order_id=event.order_id))

        @bus.handler(PaymentTaken, group="shipping")
        async def ship(event: PaymentTaken) -> None:
            env = current_envelope()
            assert env is not None
            followups.append(env)

        root = await bus.publish(
            OrderPlaced(order_id="o-9"),
            correlation_id="flow-1",
            traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01",
        )
        await bus.join()
    [payment] = followups
    assert payment.correlation_id == "flow-1"
    assert payment.causation_id == root.id
    assert payment.traceparent == root.traceparent
    assert current_envelope() is None


async def test_publish_many_keeps_order_and_options() -> None:
    seen: list[str] = []
    async with make_bus() as bus:
        bus.subscribe(OrderPlaced, lambda e: seen.append(e.order_id), group="batch")
        custom = bus.envelope(OrderPlaced(order_id="x"), subject="custom", key="k")
        envelopes = await bus.publish_many(
            [OrderPlaced(order_id=str(i)) for i in range(5)] + [custom],
            correlation_id="flow",
            headers={"x-tenant": "acme"},
        )
        await bus.join()
        assert await bus.publish_many([]) == []
    assert seen == ["0", "1", "2", "3", "4", "x"]
    assert {e.correlation_id for e in envelopes[:5]} == {"flow"}
    assert envelopes[0].headers == {"x-tenant": "acme"}
    assert envelopes[5] is custom


async def test_unrouted_publish_is_reported() -> None:
    reported: list[str] = []
    async with make_bus(on_unrouted=lambda env: reported.append(env.type)) as bus:
        bus.subscribe(OrderPlaced, lambda e: None, group="g")
        await bus.publish(PaymentTaken(order_id="1"))
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.join()
    assert reported == ["t.payment.taken.v1"]
    assert bus.stats.unrouted == 1


async def test_unrouted_hook_failure_is_contained() -> None:
    def boom(env: Envelope[Event]) -> None:
        raise RuntimeError("hook")

    async with make_bus(on_unrouted=boom) as bus:
        await bus.publish(PaymentTaken(order_id="1"))
    assert bus.stats.unrouted == 1


async def test_publish_refuses_abstract_and_unregistered_events() -> None:
    other = EventRegistry()

    class Elsewhere(Event, type="t.elsewhere.v1", registry=other):
        pass

    async with make_bus() as bus:
        with pytest.raises(ConfigurationError):
            await bus.publish(OrderEvent(order_id="1"))
        with pytest.raises(ConfigurationError):
            await bus.publish(Elsewhere())
        with pytest.raises(ConfigurationError):
            await bus.publish(OrderPlaced(order_id="1"), headers={"ce-id": "x"})


def test_subscription_options_are_checked() -> None:
    bus = make_bus()
    bus.subscribe(OrderPlaced, lambda e: None, group="g")
    with pytest.raises(ConfigurationError, match="compete"):
        bus.subscribe(OrderEvent, lambda e: None, group="g")
    bus.subscribe(PaymentTaken, lambda e: None, group="g")  # disjoint types: fine
    with pytest.raises(ConfigurationError):
        bus.subscribe(OrderPlaced, lambda e: None, group="bad group")
    with pytest.raises(ConfigurationError):
        bus.subscribe(OrderPlaced, lambda e: None, group="c", concurrency=0)
    with pytest.raises(ConfigurationError):
        bus.subscribe(str, lambda e: None)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        bus.subscribe(OrderPlaced, "nope")  # type: ignore[arg-type]


def test_default_group_comes_from_the_handler_name() -> None:
    bus = make_bus()

    async def on_placed(event: OrderPlaced) -> None:
        return None

    sub = bus.subscribe(OrderPlaced, on_placed)
    assert sub.group.endswith("test_default_group_comes_from_the_handler_name.locals.on_placed")
    assert sub.is_async
    assert sub.name.startswith(sub.group)
    assert bus.subscriptions == (sub,)


async def test_subscribing_while_running_and_auto_start() -> None:
    seen: list[str] = []
    bus = make_bus()
    bus.subscribe(OrderPlaced, lambda e: seen.append("first"), group="first")
    await bus.publish(OrderPlaced(order_id="1"))  # starts the bus
    assert "running" in repr(bus)
    bus.subscribe(OrderPlaced, lambda e: seen.append("late"), group="late")
    await bus.publish(OrderPlaced(order_id="2"))
    await bus.join()
    await bus.stop()
    assert sorted(seen) == ["first", "first", "late"]
    with pytest.raises(TransportClosedError):
        bus.subscribe(OrderPlaced, lambda e: None, group="after")
    with pytest.raises(TransportClosedError):
        await bus.start()
    await bus.stop()  # idempotent


async def test_class_registered_after_start_reaches_base_handler() -> None:
    registry = EventRegistry()

    class Base(Event):
        n: int

    class First(Base, type="t.late.first.v1", registry=registry):
        pass

    seen: list[str] = []
    async with EventBus(registry=registry) as bus:
        bus.subscribe(Base, lambda e: seen.append(type(e).__name__), group="base")
        await bus.publish(First(n=1))

        class Second(Base, type="t.late.second.v1", registry=registry):
            pass

        await bus.publish(Second(n=2))
        await bus.join()
    assert sorted(seen) == ["First", "Second"]


async def test_shared_topic_skips_types_a_subscription_does_not_handle() -> None:
    seen: list[str] = []
    async with make_bus(topic_for=lambda name: "t.shared") as bus:
        bus.subscribe(OrderPlaced, lambda e: seen.append("placed"), group="placed")
        bus.subscribe(OrderCancelled, lambda e: seen.append("cancelled"), group="cancelled")
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.publish(OrderCancelled(order_id="1"))
        await bus.join()
        assert bus.topic_for("t.order.placed.v1") == "t.shared"
    assert sorted(seen) == ["cancelled", "placed"]
    assert bus.stats.skipped == 2
    assert bus.stats.dead_lettered == 0


async def test_mutable_events_are_decoded_per_group() -> None:
    seen: list[Tagged] = []
    async with make_bus() as bus:
        bus.subscribe(Tagged, seen.append, group="one")
        bus.subscribe(Tagged, seen.append, group="two")
        await bus.publish(Tagged(tags=["a"]))
        await bus.join()
    assert seen[0] == seen[1]
    assert seen[0] is not seen[1]  # a handler mutating its list cannot affect the other


async def test_immutable_events_are_shared_not_redecoded() -> None:
    seen: list[OrderPlaced] = []
    async with make_bus() as bus:
        bus.subscribe(OrderPlaced, seen.append, group="one")
        bus.subscribe(OrderPlaced, seen.append, group="two")
        event = OrderPlaced(order_id="1")
        await bus.publish(event)
        await bus.join()
    assert seen[0] is event
    assert seen[1] is event


async def test_join_needs_memory_transport_and_registry_default() -> None:
    class Fake(MemoryTransport):
        pass

    bus = EventBus(Fake())
    assert bus.registry is not REGISTRY
    await bus.join()  # a MemoryTransport subclass is fine
    await bus.stop()
    assert not memory(bus).closed  # not created by the bus: left open
    await bus.transport.close()
