from __future__ import annotations

import asyncio

from sagaflow.choreography import EventBus
from sagaflow.transports.memory import MemoryTransport

from ._support import OrderEvent, OrderPlaced, make_bus, wait_for


class Gate:
    """Handler that records concurrency and blocks until released."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self.done: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, event: OrderEvent) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
            await asyncio.sleep(0)
        finally:
            self.running -= 1
        self.done.append(event.order_id)


async def test_concurrency_limit() -> None:
    gate = Gate()
    async with make_bus() as bus:
        bus.subscribe(OrderPlaced, gate, group="g", concurrency=3)
        for i in range(10):
            await bus.publish(OrderPlaced(order_id=str(i)))
        await wait_for(lambda: gate.running == 3)
        await asyncio.sleep(0.02)
        assert gate.running == 3
        gate.release.set()
        await bus.join()
    assert gate.peak == 3
    assert sorted(gate.done, key=int) == [str(i) for i in range(10)]


async def test_concurrency_is_shared_across_topics_of_a_subscription() -> None:
    from ._support import OrderCancelled

    gate = Gate()
    async with make_bus() as bus:
        bus.subscribe(OrderEvent, gate, group="g", concurrency=1)
        for i in range(3):
            await bus.publish(OrderPlaced(order_id=f"p{i}"))
            await bus.publish(OrderCancelled(order_id=f"c{i}"))
        await wait_for(lambda: gate.running == 1)
        await asyncio.sleep(0.02)
        assert gate.peak == 1
        gate.release.set()
        await bus.join()
    assert len(gate.done) == 6


async def test_ordered_by_key() -> None:
    seen: dict[str, list[int]] = {}
    running = 0
    peak = 0

    async def handle(event: OrderPlaced) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001 * (event.total % 3))
        seen.setdefault(event.order_id, []).append(event.total)
        running -= 1

    async with make_bus() as bus:
        bus.subscribe(OrderPlaced, handle, group="g", concurrency=4, ordered_by_key=True)
        for n in range(40):
            key = f"o{n % 4}"
            await bus.publish(OrderPlaced(order_id=key, total=n), key=key)
        await bus.join()
    for numbers in seen.values():
        assert numbers == sorted(numbers)
    assert sum(len(v) for v in seen.values()) == 40
    assert peak > 1  # different keys ran concurrently


async def test_unordered_concurrency_without_keys() -> None:
    gate = Gate()
    async with make_bus() as bus:
        bus.subscribe(OrderPlaced, gate, group="g", concurrency=2, ordered_by_key=True)
        for i in range(4):
            await bus.publish(OrderPlaced(order_id=str(i)))  # no key: no lane
        await wait_for(lambda: gate.running == 2)
        gate.release.set()
        await bus.join()
    assert len(gate.done) == 4


async def test_graceful_stop_finishes_in_flight_work() -> None:
    transport = MemoryTransport()
    gate = Gate()
    bus = make_bus(transport=transport)
    bus.subscribe(OrderPlaced, gate, group="g")
    await bus.start()
    await bus.publish(OrderPlaced(order_id="1"))
    await bus.publish(OrderPlaced(order_id="2"))
    await wait_for(lambda: gate.running == 1)
    stopping = asyncio.ensure_future(bus.stop(timeout=5))
    await asyncio.sleep(0.01)
    gate.release.set()
    await stopping
    # The in-flight event finished and was acked; the next one was never taken.
    assert gate.done == ["1"]
    assert transport.in_flight("t.order.placed.v1", group="g") == 1
    assert transport.pending("t.order.placed.v1", group="g") == 1
    assert not transport.closed  # not the bus's to close
    # Another worker picks the rest up.
    async with make_bus(transport=transport) as second:
        second.subscribe(OrderPlaced, gate, group="g")
        await second.start()
        await second.join()
    assert gate.done == ["1", "2"]
    await transport.close()


async def test_stop_timeout_cancels_and_the_event_comes_back() -> None:
    transport = MemoryTransport()
    stuck = asyncio.Event()

    async def slow(event: OrderPlaced) -> None:
        stuck.set()
        await asyncio.sleep(60)

    bus = make_bus(transport=transport)
    bus.subscribe(OrderPlaced, slow, group="g", concurrency=2)
    await bus.start()
    await bus.publish(OrderPlaced(order_id="1"))
    await asyncio.wait_for(stuck.wait(), 5)
    await asyncio.wait_for(bus.stop(timeout=0.05), 5)
    assert bus.stats.handled == 0
    # Unsettled: back in the queue, with its delivery counted.
    assert transport.pending("t.order.placed.v1", group="g") == 1
    seen: list[int] = []
    from sagaflow.choreography import current_envelope

    async def fast(event: OrderPlaced) -> None:
        env = current_envelope()
        assert env is not None
        seen.append(1)

    async with EventBus(transport, registry=bus.registry) as again:
        again.subscribe(OrderPlaced, fast, group="g")
        await again.start()
        await again.join()
    assert seen == [1]
    await transport.close()


async def test_stop_closes_owned_transport_and_is_idempotent() -> None:
    bus = make_bus()
    bus.subscribe(OrderPlaced, lambda e: None, group="g")
    async with bus:
        pass
    assert bus.transport.closed  # type: ignore[attr-defined]
    await bus.stop()
    stopped_unstarted = make_bus()
    await stopped_unstarted.stop()
