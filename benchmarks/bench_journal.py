"""What the flow journal costs: the bus and the orchestrator with and without it.

Each scenario runs in the same process and round, with and without a
`Journaling` (contenders take turns within each round, so a load change on the
shared machine hits them all); figures are medians over the rounds, and the
ratio is journaled / plain throughput (1.00 = free).

* bus:          N events published to an in-memory EventBus, 1 subscriber group;
                with the journal: 2 entries per event (publish, handle).
* orchestrator: N three-step sagas on the in-memory store, run 50 at a time;
                with the journal: 8 entries per saga (start, 3 x step
                started/succeeded, finish).

Journals: ``memory`` (what recording costs on the hot path) and ``sqlite``
(a file in a temporary directory, written in batches in the background; the
timed run includes the final flush, so the disk cost is counted). Besides the
ratio, each line gives the added cost in microseconds per event (per saga):
against a broker round trip or a handler doing real work, that is the figure
to weigh.

Run:  .venv/bin/python benchmarks/bench_journal.py [--events N] [--sagas N] [--runs R]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import BaseModel

from sagaflow import MemorySagaStore, Orchestrator, Saga, Step, StepContext
from sagaflow.choreography import EventBus
from sagaflow.events import Event, EventRegistry
from sagaflow.observability import Journaling, MemoryJournal
from sagaflow.observability.sqlite import SqliteJournal

REGISTRY = EventRegistry()


class OrderPlaced(Event, type="bench.journal.order.placed.v1", registry=REGISTRY):
    order_id: int


class State(BaseModel):
    n: int = 0


async def step(ctx: StepContext[State]) -> None:
    return None


SAGA = Saga(
    "bench",
    state=State,
    steps=[
        Step("one", step, compensate=step),
        Step("two", step, compensate=step),
        Step("three", step, compensate=step),
    ],
)

MakeJournaling = Callable[[], Journaling | None]


async def bus_run(n: int, make: MakeJournaling) -> float:
    journaling = make()
    done = asyncio.Event()
    count = 0

    async def handler(event: OrderPlaced) -> None:
        nonlocal count
        count += 1
        if count == n:
            done.set()

    middleware = [journaling] if journaling is not None else []
    bus = EventBus(registry=REGISTRY, middleware=middleware)
    bus.subscribe(OrderPlaced, handler, group="bench")
    async with bus:
        started = time.perf_counter()
        for i in range(n):
            await bus.publish(OrderPlaced(order_id=i))
        await done.wait()
        if journaling is not None:
            await journaling.close()
        elapsed = time.perf_counter() - started
    return n / elapsed


async def orchestrator_run(n: int, make: MakeJournaling) -> float:
    journaling = make()
    hooks = [journaling.hooks] if journaling is not None else []
    async with Orchestrator(MemorySagaStore(), hooks=hooks) as orchestrator:
        started = time.perf_counter()
        for first in range(0, n, 50):
            await asyncio.gather(
                *(orchestrator.run(SAGA, State(n=i)) for i in range(first, min(n, first + 50)))
            )
        if journaling is not None:
            await journaling.close()
        elapsed = time.perf_counter() - started
    return n / elapsed


def contenders(directory: Path) -> dict[str, MakeJournaling]:
    files = iter(range(1_000_000))
    return {
        "plain": lambda: None,
        "memory journal": lambda: Journaling(MemoryJournal()),
        "sqlite journal": lambda: Journaling(
            SqliteJournal(str(directory / f"journal-{next(files)}.db"))
        ),
    }


async def measure(
    name: str, run: Callable[[int, MakeJournaling], Awaitable[float]], n: int, runs: int
) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as tmp:
        makers = contenders(Path(tmp))
        results: dict[str, list[float]] = {key: [] for key in makers}
        await run(max(n // 10, 10), makers["plain"])  # warm up
        for _ in range(runs):
            for key, make in makers.items():
                gc.collect()
                results[key].append(await run(n, make))
    base = statistics.median(results["plain"])
    unit = "events/s" if name == "bus" else "sagas/s"
    print(f"\n{name} ({n} per run, median of {runs})")
    for key, values in results.items():
        median = statistics.median(values)
        # The absolute cost says more than the ratio once a real broker or real
        # work sets the pace: it is what each event (saga) pays for its entries.
        extra = (1 / median - 1 / base) * 1e6
        print(
            f"  {key:<16} {median:>10,.0f} {unit}   ratio {median / base:.2f}   "
            f"+{extra:6.1f} us per {unit.split('/')[0][:-1]}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--sagas", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    await measure("bus", bus_run, args.events, args.runs)
    await measure("orchestrator", orchestrator_run, args.sagas, args.runs)


if __name__ == "__main__":
    asyncio.run(main())
