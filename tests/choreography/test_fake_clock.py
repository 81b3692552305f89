"""Retry backoff and redelivery delays run on the bus's clock: a fake clock makes them instant."""

from __future__ import annotations

import time

from sagaflow.retry import RetryPolicy
from sagaflow.testing.clock import FakeClock

from ._support import OrderPlaced, make_bus


async def test_hours_of_backoff_take_no_real_time() -> None:
    clock = FakeClock(auto_advance=True)
    calls: list[float] = []

    async def always_fails(event: OrderPlaced) -> None:
        calls.append(clock.monotonic())
        raise ConnectionError("down")

    slow_retry = RetryPolicy(max_attempts=3, initial_delay=600, max_delay=7200, jitter=False)
    slow_redelivery = RetryPolicy(max_attempts=2, initial_delay=3600, max_delay=7200, jitter=False)
    started = time.monotonic()
    published_at = clock.now()
    async with make_bus(clock=clock, retry=slow_retry, redelivery=slow_redelivery) as bus:
        bus.subscribe(OrderPlaced, always_fails, group="g")
        envelope = await bus.publish(OrderPlaced(order_id="1"))
        await bus.join(timeout=10)
        [letter] = await bus.dead_letters.list()
    assert time.monotonic() - started < 5
    # Attempts at 0, 600, 1800 (backoff), then redelivered after 3600 s: 5400, 6000, 7200.
    assert calls == [0.0, 600.0, 1800.0, 5400.0, 6000.0, 7200.0]
    assert letter.deliveries == 2
    assert letter.time == clock.now()
    assert envelope.time.timestamp() == published_at  # envelope time comes from the clock too
