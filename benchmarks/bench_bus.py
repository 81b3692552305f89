"""Event-bus throughput: sagaflow's in-memory EventBus against a direct await and peers.

N small events go through each contender to 1 and to 4 subscribers; a run ends
when every subscriber has handled every event. The producer builds each event
(a small pydantic model) inside the timed loop, for every contender alike, as a
real producer would. Contenders take turns within each round (so that a load
change on a shared machine hits them all), and each figure is the median over
the rounds, in events/s (events published per second, all subscribers done).

* direct:   a loop awaiting the async handler(s) directly: the limit.
* sagaflow: EventBus over MemoryTransport, inbox dedupe and retry enabled
            (the defaults), one consumer group per subscriber.
* blinker:  signal.send() calling sync receivers (blinker has no async path).
* pyee:     AsyncIOEventEmitter, async listeners scheduled as tasks.
* bubus:    EventBus.dispatch() with async handlers, awaiting each event.

Run:  .venv/bin/python benchmarks/bench_bus.py [--events N] [--runs R] [--only NAME,...]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable

from sagaflow.choreography import EventBus
from sagaflow.events import Event, EventRegistry

REGISTRY = EventRegistry()


class OrderPlaced(Event, type="bench.order.placed.v1", registry=REGISTRY):
    order_id: int
    sku: str
    quantity: int


Runner = Callable[[int, int], Awaitable[float]]


class Counter:
    """Counts handled events and wakes the runner when all are in."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count == self.expected:
            self.done.set()


async def run_direct(n: int, subscribers: int) -> float:
    counter = Counter(n * subscribers)

    async def handler(event: OrderPlaced) -> None:
        counter.hit()

    handlers = [handler] * subscribers
    started = time.perf_counter()
    for i in range(n):
        event = OrderPlaced(order_id=i, sku="sku-1", quantity=1)
        for h in handlers:
            await h(event)
    await counter.done.wait()
    return time.perf_counter() - started


async def run_sagaflow(n: int, subscribers: int) -> float:
    counter = Counter(n * subscribers)
    bus = EventBus(registry=REGISTRY)
    for i in range(subscribers):

        async def handler(event: OrderPlaced) -> None:
            counter.hit()

        bus.subscribe(OrderPlaced, handler, group=f"bench-{i}")
    async with bus:
        started = time.perf_counter()
        for i in range(n):
            await bus.publish(OrderPlaced(order_id=i, sku="sku-1", quantity=1))
        await counter.done.wait()
        elapsed = time.perf_counter() - started
    assert bus.stats.handled == n * subscribers
    return elapsed


async def run_blinker(n: int, subscribers: int) -> float:
    import blinker

    counter = Counter(n * subscribers)
    signal = blinker.Signal()
    receivers = []
    for _ in range(subscribers):

        def receiver(sender: object, **kw: object) -> None:
            counter.hit()

        receivers.append(receiver)  # blinker keeps weak references
        signal.connect(receiver)
    started = time.perf_counter()
    for i in range(n):
        signal.send(OrderPlaced(order_id=i, sku="sku-1", quantity=1))
    await counter.done.wait()
    return time.perf_counter() - started


async def run_pyee(n: int, subscribers: int) -> float:
    from pyee.asyncio import AsyncIOEventEmitter

    counter = Counter(n * subscribers)
    emitter = AsyncIOEventEmitter()
    for _ in range(subscribers):

        async def listener(event: OrderPlaced) -> None:
            counter.hit()

        emitter.on("order.placed", listener)
    started = time.perf_counter()
    for i in range(n):
        emitter.emit("order.placed", OrderPlaced(order_id=i, sku="sku-1", quantity=1))
    await counter.done.wait()
    return time.perf_counter() - started


async def run_bubus(n: int, subscribers: int) -> float:
    import logging

    from bubus import BaseEvent
    from bubus import EventBus as BubusBus

    logging.getLogger("bubus").setLevel(logging.ERROR)

    class BubusOrderPlaced(BaseEvent):  # type: ignore[misc]
        order_id: int
        sku: str
        quantity: int

    counter = Counter(n * subscribers)
    bus = BubusBus(name="bench")
    for index in range(subscribers):

        async def handler(event: BubusOrderPlaced) -> None:
            counter.hit()

        handler.__name__ = handler.__qualname__ = f"handler_{index}"  # bubus warns on reuse
        bus.on(BubusOrderPlaced, handler)
    started = time.perf_counter()
    for i in range(n):
        await bus.dispatch(BubusOrderPlaced(order_id=i, sku="sku-1", quantity=1))
    await counter.done.wait()
    elapsed = time.perf_counter() - started
    await bus.stop(clear=True)
    return elapsed


CONTENDERS: dict[str, tuple[Runner, int]] = {
    # name: (runner, events divisor: slow peers get fewer events for the same wall time)
    "direct": (run_direct, 1),
    "sagaflow": (run_sagaflow, 1),
    "blinker": (run_blinker, 1),
    "pyee": (run_pyee, 1),
    "bubus": (run_bubus, 20),
}


async def measure(chosen: list[str], n: int, subscribers: int, rounds: int) -> dict[str, float]:
    rates: dict[str, list[float]] = {name: [] for name in chosen}
    for _ in range(rounds):
        for name in chosen:
            runner, divisor = CONTENDERS[name]
            events = max(n // divisor, 100)
            gc.collect()
            try:
                elapsed = await runner(events, subscribers)
            except ImportError as exc:
                print(f"  {name}: skipped ({exc})")
                rates.pop(name, None)
                chosen = [c for c in chosen if c != name]
                continue
            rates[name].append(events / elapsed)
    return {name: statistics.median(values) for name, values in rates.items() if values}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5, help="rounds; medians are reported")
    parser.add_argument("--only", default="", help="comma-separated contenders")
    args = parser.parse_args()
    chosen = [c for c in args.only.split(",") if c] or list(CONTENDERS)
    print(
        f"events={args.events} rounds={args.runs} "
        f"(median events/s; bubus gets events/{CONTENDERS['bubus'][1]})"
    )
    for subscribers in (1, 4):
        results = await measure(chosen, args.events, subscribers, args.runs)
        print(f"\n{subscribers} subscriber(s)")
        base = results.get("direct")
        ours = results.get("sagaflow")
        for name, rate in results.items():
            line = f"  {name:<9} {rate:>12,.0f} ev/s"
            if base:
                line += f"   {rate / base:6.3f} x direct"
            if ours and name != "sagaflow":
                line += f"   sagaflow = {ours / rate:7.2f} x {name}"
            print(line)


if __name__ == "__main__":
    asyncio.run(main())
