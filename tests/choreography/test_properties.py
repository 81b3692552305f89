"""Property: whatever the failures, every event ends handled once per group or dead-lettered."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sagaflow.errors import NonRetryableError
from sagaflow.retry import RetryPolicy

from ._support import OrderPlaced, make_bus

RETRY = RetryPolicy(max_attempts=2, initial_delay=0.0, jitter=False)
REDELIVERY = RetryPolicy(max_attempts=3, initial_delay=0.0, jitter=False)
CALLS_BEFORE_DEAD = 2 * 3
GROUPS = ("inventory", "billing")


@dataclass(frozen=True)
class Plan:
    """How the handler of one group behaves for one event: fail N times, maybe fatally."""

    failures: int
    fatal: bool


plans = st.builds(Plan, failures=st.integers(0, CALLS_BEFORE_DEAD + 1), fatal=st.booleans())
scenarios = st.lists(
    st.tuples(st.tuples(plans, plans), st.booleans()),  # per-group plans, published twice?
    min_size=1,
    max_size=8,
)


async def run(scenario: list[tuple[tuple[Plan, Plan], bool]], concurrency: int) -> None:
    calls: dict[tuple[str, str], int] = {}
    successes: dict[tuple[str, str], int] = {}
    plan_of: dict[tuple[str, str], Plan] = {}

    def handler(group: str):  # type: ignore[no-untyped-def]
        async def handle(event: OrderPlaced) -> None:
            key = (group, event.order_id)
            calls[key] = calls.get(key, 0) + 1
            plan = plan_of[key]
            if calls[key] <= plan.failures:
                await asyncio.sleep(0)  # let other events interleave
                raise (NonRetryableError if plan.fatal else ValueError)(f"call {calls[key]}")
            successes[key] = successes.get(key, 0) + 1

        return handle

    async with make_bus(retry=RETRY, redelivery=REDELIVERY) as bus:
        for group in GROUPS:
            bus.subscribe(OrderPlaced, handler(group), group=group, concurrency=concurrency)
        ids = []
        for n, (group_plans, twice) in enumerate(scenario):
            order_id = f"o{n}"
            for group, plan in zip(GROUPS, group_plans, strict=True):
                plan_of[(group, order_id)] = plan
            envelope = await bus.publish(OrderPlaced(order_id=order_id))
            if twice:  # a producer retry: same event id again
                await bus.publish(OrderPlaced(order_id=order_id), id=envelope.id)
            ids.append((order_id, envelope.id))
        await bus.join(timeout=20)
        letters = {(d.group, d.message.id): d for d in await bus.dead_letters.list()}

        for (order_id, event_id), (_, twice) in zip(ids, scenario, strict=True):
            for group in GROUPS:
                key = (group, order_id)
                if twice and (group, event_id) in letters and successes.get(key):
                    # The second copy succeeded after the first was parked: the
                    # stale letter replays as a duplicate, without a second call.
                    before = calls[key]
                    assert await bus.replay(letters[(group, event_id)].id)
                    assert calls[key] == before

    for (order_id, event_id), (_, twice) in zip(ids, scenario, strict=True):
        for group in GROUPS:
            key = (group, order_id)
            plan = plan_of[key]
            dead = (group, event_id) in letters
            handled = successes.get(key, 0)
            # Nothing lost, nothing handled twice.
            assert handled <= 1, (key, plan, handled)
            assert handled == 1 or dead, (key, plan, handled, dead)
            if twice:
                continue  # the second copy runs the handler again: the plan shifts
            assert (handled == 1) != dead, (key, plan, handled, dead)
            if plan.failures == 0:
                assert handled == 1
            elif plan.fatal:
                assert dead
                assert calls[key] == 1
            else:
                assert dead == (plan.failures >= CALLS_BEFORE_DEAD)
            if dead:
                letter = letters[(group, event_id)]
                assert letter.reason
                assert letter.error is not None
                assert letter.error["type"].endswith(("ValueError", "NonRetryableError"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios, concurrency=st.sampled_from([1, 3]))
def test_every_event_is_handled_once_or_dead_lettered(
    scenario: list[tuple[tuple[Plan, Plan], bool]], concurrency: int
) -> None:
    asyncio.run(run(scenario, concurrency))
