"""Orchestrator throughput: sagaflow vs a hand-written saga vs python-cqrs, same run.

The flow: reserve stock, charge payment, create shipment, notify (trivial async
steps), in memory, with a hook attached to sagaflow's orchestrator. Rows:

* hand-written: awaits and try/except, nothing logged or validated (the limit);
* hand + log: the same by hand plus the work sagaflow's guarantees require (a
  record before and after each step in five appends, pydantic validation of the
  state after each update, the hook): the floor for any library that keeps them;
* sagaflow, and python-cqrs's saga with its in-memory storage.

Measured:

* sequential: one saga after another;
* concurrent: batches of 1,000 sagas with ``asyncio.gather``;
* failure path: step 3 fails, two compensations run;
* peak memory (tracemalloc) with 10,000 sagas in flight.

Run:  .venv/bin/python benchmarks/bench_orchestrator.py [--quick] [--max-finished N|none]
(python-cqrs comes with ``pip install -e ".[bench]"``; without it that column is skipped.)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel

from sagaflow import Orchestrator, RetryPolicy, Saga, SagaHooks, SagaStatus, Step, StepKind
from sagaflow.stores import MemorySagaStore


class OrderState(BaseModel):
    order_id: str
    reservation: str | None = None
    payment: str | None = None
    shipment: str | None = None


class Boom(Exception):
    pass


# --- sagaflow ---------------------------------------------------------------------


def sagaflow_saga(fail_shipping: bool) -> Saga[OrderState]:
    async def reserve(ctx):
        return {"reservation": "r"}

    async def release(ctx):
        return None

    async def charge(ctx):
        return {"payment": "p"}

    async def refund(ctx):
        return None

    async def ship(ctx):
        if fail_shipping:
            raise Boom("shipping down")
        return {"shipment": "s"}

    async def notify(ctx):
        return None

    no_retry = RetryPolicy.no_retry()
    return Saga(
        "order",
        state=OrderState,
        retry=no_retry,
        steps=[
            Step("reserve_stock", reserve, compensate=release),
            Step("charge_payment", charge, compensate=refund),
            Step("create_shipment", ship, kind=StepKind.PIVOT),
            Step("notify", notify, kind=StepKind.RETRIABLE, retry=no_retry),
        ],
    )


class CountingHooks(SagaHooks):
    def __init__(self) -> None:
        self.steps = 0
        self.sagas = 0

    def step_succeeded(self, saga_id: str, step: str, attempt: int) -> None:
        self.steps += 1

    def saga_finished(self, result) -> None:
        self.sagas += 1


# MemorySagaStore options (--max-finished); empty: the library's defaults.
STORE_OPTIONS: dict[str, int | None] = {}


def make_sagaflow(fail: bool) -> Callable[[], Awaitable[object]]:
    orchestrator = Orchestrator(MemorySagaStore(**STORE_OPTIONS), hooks=[CountingHooks()])
    saga = sagaflow_saga(fail)
    expected = SagaStatus.COMPENSATED if fail else SagaStatus.COMPLETED

    async def one() -> object:
        result = await orchestrator.run(saga, OrderState(order_id="o"))
        assert result.status is expected
        return result

    return one


# --- hand-written: the limit -------------------------------------------------------


def make_hand(fail: bool) -> Callable[[], Awaitable[object]]:
    async def reserve(state):
        state["reservation"] = "r"

    async def release(state):
        state["reservation"] = None

    async def charge(state):
        state["payment"] = "p"

    async def refund(state):
        state["payment"] = None

    async def ship(state):
        if fail:
            raise Boom("shipping down")
        state["shipment"] = "s"

    async def notify(state):
        return None

    async def one() -> object:
        state = {"order_id": "o"}
        done = []
        try:
            await reserve(state)
            done.append(release)
            await charge(state)
            done.append(refund)
            await ship(state)
        except Boom:
            for undo in reversed(done):
                await undo(state)
            return state
        await notify(state)
        return state

    return one


# --- hand-written with a log: the floor for sagaflow's guarantees -------------------


def make_hand_logged(fail: bool) -> Callable[[], Awaitable[object]]:
    """The flow by hand, doing the work sagaflow must do and nothing else.

    A record before and after every step (and at start and end), written to a
    dict-backed log in one append per store write (five, as sagaflow batches
    them), the initial state dumped as JSON, the state validated by pydantic after
    each update, the counting hook called. No retry policy, leases, fencing,
    status tracking, step context or result object: what is left of sagaflow's
    cost beyond this row is its generality.
    """
    validate = OrderState.__pydantic_validator__.validate_python
    logs: dict[str, list[tuple[object, ...]]] = {}
    hooks = CountingHooks()
    ids = iter(range(10**12))

    async def reserve(state):
        return {"reservation": "r"}

    async def release(state):
        return None

    async def charge(state):
        return {"payment": "p"}

    async def refund(state):
        return None

    async def ship(state):
        if fail:
            raise Boom("shipping down")
        return {"shipment": "s"}

    async def notify(state):
        return None

    steps = (("reserve", reserve, release), ("charge", charge, refund), ("ship", ship, None))

    async def append(saga_id: str, records: list[tuple[object, ...]]) -> None:
        logs[saga_id].extend(records)

    async def one() -> object:
        saga_id = f"s{next(ids)}"
        state = OrderState(order_id="o")
        pending: list[tuple[object, ...]] = [
            ("saga_started", time.time(), state.model_dump(mode="json"))
        ]
        logs[saga_id] = []
        if len(logs) > 1_000:  # keep as many finished sagas as MemorySagaStore does
            del logs[next(iter(logs))]
        done = []
        try:
            for name, action, undo in steps:
                pending.append(("started", name, time.time()))
                await append(saga_id, pending)
                pending = []
                updates = await action(state)
                if updates:
                    state = validate({**state.__dict__, **updates})
                pending.append(("completed", name, time.time(), updates))
                hooks.step_succeeded(saga_id, name, 1)
                if undo is not None:
                    done.append((name, undo))
        except Boom as exc:
            pending.append(("failed", "ship", time.time(), {"type": "Boom", "message": str(exc)}))
            for name, undo in reversed(done):
                pending.append(("compensation_started", name, time.time()))
                await append(saga_id, pending)
                pending = [("compensation_completed", name, time.time(), await undo(state))]
            pending.append(("saga_compensated", time.time()))
            await append(saga_id, pending)
            hooks.saga_finished(None)
            return state
        pending.append(("started", "notify", time.time()))
        await append(saga_id, pending)
        await notify(state)
        pending = [("completed", "notify", time.time(), None), ("saga_completed", time.time())]
        await append(saga_id, pending)
        hooks.step_succeeded(saga_id, "notify", 1)
        hooks.saga_finished(None)
        return state

    return one


# --- python-cqrs -------------------------------------------------------------------


def make_cqrs(fail: bool) -> Callable[[], Awaitable[object]] | None:
    try:
        import dataclasses

        from cqrs.handlers.saga import SagaStepHandler
        from cqrs.saga.models import SagaContext
        from cqrs.saga.saga import Saga as CqrsSaga
        from cqrs.saga.storage.memory import MemorySagaStorage
    except ImportError:
        return None

    @dataclasses.dataclass
    class Ctx(SagaContext):
        order_id: str
        reservation: str | None = None
        payment: str | None = None
        shipment: str | None = None

    class Reserve(SagaStepHandler[Ctx, None]):
        async def act(self, context):
            context.reservation = "r"
            return self._generate_step_result(None)

        async def compensate(self, context):
            context.reservation = None

    class Charge(SagaStepHandler[Ctx, None]):
        async def act(self, context):
            context.payment = "p"
            return self._generate_step_result(None)

        async def compensate(self, context):
            context.payment = None

    class Ship(SagaStepHandler[Ctx, None]):
        async def act(self, context):
            if fail:
                raise Boom("shipping down")
            context.shipment = "s"
            return self._generate_step_result(None)

        async def compensate(self, context):
            return None

    class Notify(SagaStepHandler[Ctx, None]):
        async def act(self, context):
            return self._generate_step_result(None)

        async def compensate(self, context):
            return None

    class OrderSaga(CqrsSaga[Ctx]):
        steps = [Reserve, Charge, Ship, Notify]

    class Container:
        async def resolve(self, type_):
            return type_()

    saga = OrderSaga()
    container = Container()
    storage = MemorySagaStorage()

    async def one() -> object:
        try:
            async with saga.transaction(
                context=Ctx(order_id="o"),
                container=container,  # type: ignore[arg-type]
                storage=storage,
                compensation_retry_count=1,
                compensation_retry_delay=0,
            ) as transaction:
                async for _ in transaction:
                    pass
        except Boom:
            pass
        return None

    return one


# --- harness -----------------------------------------------------------------------


def rate_of(total: int, body: Callable[[], Awaitable[None]]) -> float:
    """Sagas per second of one run of ``body`` (``total`` sagas), on a new event loop."""
    gc.collect()
    start = time.perf_counter()
    asyncio.run(body())
    return total / (time.perf_counter() - start)


def sequential(
    make: Callable[[bool], Callable[[], Awaitable[object]] | None], fail: bool, n: int
) -> float | None:
    if make(fail) is None:
        return None

    async def body() -> None:
        one = make(fail)
        assert one is not None
        for _ in range(n):
            await one()

    return rate_of(n, body)


def concurrent(make, fail: bool, batch: int, batches: int) -> float | None:
    if make(fail) is None:
        return None

    async def body() -> None:
        one = make(fail)
        for _ in range(batches):
            await asyncio.gather(*(one() for _ in range(batch)))

    return rate_of(batch * batches, body)


def interleaved(
    runs: int, makers: dict[str, Any], one_run: Callable[[Any], float | None]
) -> dict[str, list[float] | None]:
    """``runs`` rounds, each running every implementation once, in turn.

    The machine is shared and its speed drifts within seconds: comparing
    implementations inside one round, then taking the median over rounds, keeps
    a slow spell from landing on one implementation only.
    """
    rates: dict[str, list[float] | None] = {name: [] for name in makers}
    for _ in range(runs):
        for name, make in makers.items():
            rate = one_run(make)
            if rate is None:
                rates[name] = None
            elif (kept := rates[name]) is not None:
                kept.append(rate)
    return rates


def peak_memory_in_flight(count: int) -> tuple[float, float]:
    """Peak traced memory (MiB) with ``count`` sagas parked inside their second step."""

    async def body() -> None:
        gate = asyncio.Event()

        async def reserve(ctx):
            return {"reservation": "r"}

        async def release(ctx):
            return None

        async def charge(ctx):
            await gate.wait()
            return {"payment": "p"}

        saga = Saga(
            "order",
            state=OrderState,
            steps=[
                Step("reserve_stock", reserve, compensate=release),
                Step("charge_payment", charge, compensate=release),
            ],
        )
        orchestrator = Orchestrator(hooks=[CountingHooks()])
        tasks = [
            asyncio.ensure_future(orchestrator.run(saga, OrderState(order_id=str(i))))
            for i in range(count)
        ]
        while len(orchestrator._active) < count:
            await asyncio.sleep(0.01)
        peak_holder.append(tracemalloc.get_traced_memory())
        gate.set()
        await asyncio.gather(*tasks)
        await orchestrator.close()

    peak_holder: list[tuple[int, int]] = []
    tracemalloc.start()
    asyncio.run(body())
    tracemalloc.stop()
    current, peak = peak_holder[0]
    return current / 2**20, peak / 2**20


def report(title: str, rates: dict[str, list[float] | None]) -> None:
    """Print median rates, and ratios as medians of the per-round ratios."""
    limit = rates["hand-written"]
    ours = rates["sagaflow"]
    assert limit is not None
    assert ours is not None

    def ratio(a: list[float], b: list[float]) -> float:
        return statistics.median(x / y for x, y in zip(a, b, strict=True))

    print(f"\n{title}")
    print(f"  {'implementation':<14} {'sagas/s':>12} {'vs hand-written':>16} {'sagaflow is':>12}")
    for name, runs in rates.items():
        if runs is None:
            print(f"  {name:<14} {'(not installed)':>12}")
            continue
        versus = f"{ratio(ours, runs):.2f}x" if name not in ("sagaflow", "hand-written") else ""
        print(
            f"  {name:<14} {statistics.median(runs):12,.0f} "
            f"{ratio(runs, limit):15.3f}x {versus:>12}"
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer sagas, for a smoke run")
    parser.add_argument(
        "--max-finished",
        type=lambda value: None if value == "none" else int(value),
        default=argparse.SUPPRESS,
        help="finished sagas MemorySagaStore keeps (default: its own; 'none' keeps all)",
    )
    args = parser.parse_args()
    runs = 3 if args.quick else 5
    if hasattr(args, "max_finished"):
        STORE_OPTIONS["max_finished"] = args.max_finished
    n = 2_000 if args.quick else 20_000
    batches = 2 if args.quick else 10
    makers = {
        "hand-written": make_hand,
        "hand + log": make_hand_logged,
        "sagaflow": make_sagaflow,
        "python-cqrs": make_cqrs,
    }
    print(
        f"python {sys.version.split()[0]}; medians of {runs} interleaved rounds "
        "(ratios: median of the ratios within each round)"
    )
    for title, fail in (("happy path", False), ("failure path (step 3 fails)", True)):
        report(
            f"{title}, sequential ({n:,} sagas)",
            interleaved(runs, makers, lambda make, fail=fail: sequential(make, fail, n)),
        )
        report(
            f"{title}, 1,000 concurrent ({batches} batches)",
            interleaved(
                runs, makers, lambda make, fail=fail: concurrent(make, fail, 1_000, batches)
            ),
        )
    current, peak = peak_memory_in_flight(2_000 if args.quick else 10_000)
    count = 2_000 if args.quick else 10_000
    print(
        f"\nmemory with {count:,} sagas in flight: {current:.1f} MiB held, peak {peak:.1f} MiB "
        f"({current * 2**20 / count / 1024:.1f} KiB per saga)"
    )


if __name__ == "__main__":
    main()
