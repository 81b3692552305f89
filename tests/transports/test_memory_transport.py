from __future__ import annotations

import asyncio
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sagaflow.errors import ConfigurationError, TransportClosedError
from sagaflow.testing.transport_contract import TransportContract, unique_name
from sagaflow.transports.base import Message
from sagaflow.transports.memory import MemoryDelivery, MemoryTransport


class TestMemoryTransport(TransportContract):
    quiet_period = 0.1
    redelivery_timeout = 2.0

    async def make_transport(self) -> MemoryTransport:
        return MemoryTransport(max_payload=64 * 1024)


def msg(topic: str, n: int) -> Message:
    return Message(id=f"m{n}", topic=topic, body=str(n).encode())


async def test_messages_before_the_group_exists_are_not_kept() -> None:
    transport = MemoryTransport()
    await transport.publish([msg("t", 1)])
    consumer = transport.subscribe("t", group="g")
    await transport.publish([msg("t", 2)])
    delivery = await anext(consumer)
    assert delivery.message.id == "m2"
    assert transport.pending("t", group="g") == 0
    await transport.close()


async def test_unsettled_deliveries_return_in_order_at_the_front() -> None:
    transport = MemoryTransport()
    consumer = transport.subscribe("t", group="g")
    await transport.publish([msg("t", i) for i in range(4)])
    first = await anext(consumer)
    second = await anext(consumer)
    await consumer.aclose()
    await consumer.aclose()  # idempotent
    assert transport.pending("t", group="g") == 4
    again = transport.subscribe("t", group="g")
    got = [(await anext(again)) for _ in range(4)]
    assert [d.message.id for d in got] == ["m0", "m1", "m2", "m3"]
    assert [d.attempt for d in got] == [2, 2, 1, 1]
    await first.ack()  # settled by the close: no-op, no error
    await second.nack()
    assert transport.pending("t", group="g") == 0
    await transport.close()


async def test_closing_an_iterator_wakes_its_waiting_task() -> None:
    transport = MemoryTransport()
    consumer = transport.subscribe("t", group="g")
    waiting = asyncio.ensure_future(anext(consumer))
    await asyncio.sleep(0)
    await consumer.aclose()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 1)
    await transport.close()


async def test_cancelled_waiter_passes_its_wakeup_on() -> None:
    transport = MemoryTransport()
    a = transport.subscribe("t", group="g")
    b = transport.subscribe("t", group="g")
    task_a = asyncio.ensure_future(anext(a))
    task_b = asyncio.ensure_future(anext(b))
    await asyncio.sleep(0)
    await transport.publish([msg("t", 1)])  # wakes a ...
    task_a.cancel()  # ... which dies before taking it
    delivery = await asyncio.wait_for(task_b, 1)
    assert delivery.message.id == "m1"
    await transport.close()


async def test_settling_after_close_is_refused_and_timers_stop() -> None:
    transport = MemoryTransport()
    consumer = transport.subscribe("t", group="g")
    await transport.publish([msg("t", 1), msg("t", 2)])
    first = await anext(consumer)
    second = await anext(consumer)
    await first.nack(delay=60)
    await transport.close()
    with pytest.raises(TransportClosedError):
        await second.ack()
    with pytest.raises(TransportClosedError):
        await transport.declare("t", group="g")
    assert "closed" in repr(transport)


async def test_dead_letters_are_listed_with_reason() -> None:
    transport = MemoryTransport()
    topic, group = unique_name("t"), unique_name("g")
    consumer = transport.subscribe(topic, group=group)
    await transport.publish([msg(topic, 1)])
    delivery = await anext(consumer)
    await delivery.dead_letter("bad input")
    [letter] = transport.dead_letters(topic=topic)
    assert (letter.group, letter.reason, letter.attempt) == (group, "bad input", 1)
    assert transport.dead_letters(group="other") == []
    assert "attempt=1" in repr(delivery)
    await transport.close()


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        MemoryTransport(max_payload=0)


async def test_publish_yields_to_consumers_when_backlogged() -> None:
    with pytest.raises(ConfigurationError):
        MemoryTransport(yield_backlog=0)
    transport = MemoryTransport(yield_backlog=4)
    consumer = transport.subscribe("t", group="g")
    taken: list[str] = []

    async def consume() -> None:
        async for delivery in consumer:
            taken.append(delivery.message.id)
            await delivery.ack()

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0)
    for n in range(20):
        await transport.publish([msg("t", n)])  # never awaits anything else
    # The consumer ran while we published: the queue never grew past the threshold.
    assert len(taken) >= 16
    await transport.close()
    await task


# --- the transport against a simple model: nothing lost, nothing doubled ----------

GROUPS = ("a", "b")
CONSUMERS = 2

ops = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 3)),
        st.tuples(st.sampled_from(["take", "ack", "nack", "dead", "close"]), st.integers(0, 3)),
    ),
    max_size=40,
)


async def run(program: list[tuple[str, int]]) -> None:
    transport = MemoryTransport(yield_backlog=10_000)
    consumers = {
        (g, c): transport.subscribe("topic", group=g) for g in GROUPS for c in range(CONSUMERS)
    }
    held: dict[tuple[str, int], list[MemoryDelivery]] = {key: [] for key in consumers}
    # The model: per group, the ready queue (message numbers) and delivery counts.
    ready: dict[str, deque[int]] = {g: deque() for g in GROUPS}
    counts: dict[tuple[str, int], int] = {}
    outcome: dict[tuple[str, int], str] = {}
    published = 0

    for op, arg in program:
        key = (GROUPS[arg % 2], (arg // 2) % CONSUMERS)
        group = key[0]
        if op == "publish":
            batch = list(range(published, published + arg))
            published += arg
            await transport.publish(
                [Message(id=str(n), topic="topic", body=str(n).encode()) for n in batch]
            )
            for g in GROUPS:
                ready[g].extend(batch)
        elif op == "take" and ready[group]:
            delivery = await asyncio.wait_for(anext(consumers[key]), 1)
            expected = ready[group].popleft()
            counts[(group, expected)] = counts.get((group, expected), 0) + 1
            assert delivery.message.id == str(expected)  # FIFO within a group
            assert delivery.attempt == counts[(group, expected)]
            held[key].append(delivery)
        elif op in ("ack", "nack", "dead") and held[key]:
            delivery = held[key].pop(0)
            number = int(delivery.message.id)
            if op == "ack":
                await delivery.ack()
                outcome[(group, number)] = "acked"
            elif op == "nack":
                await delivery.nack()
                ready[group].append(number)
            else:
                await delivery.dead_letter("model")
                outcome[(group, number)] = "dead"
        elif op == "close":
            await consumers[key].aclose()
            back = sorted(int(d.message.id) for d in held[key])
            ready[group].extendleft(reversed(back))  # oldest first, at the front
            held[key] = []
            consumers[key] = transport.subscribe("topic", group=group)

    # Drain: everything still queued or held ends acked, once.
    for key, deliveries in held.items():
        for delivery in deliveries:
            await delivery.ack()
            outcome[(key[0], int(delivery.message.id))] = "acked"
    for group in GROUPS:
        assert transport.pending("topic", group=group) == len(ready[group])
        while ready[group]:
            delivery = await asyncio.wait_for(anext(consumers[(group, 0)]), 1)
            assert delivery.message.id == str(ready[group].popleft())
            await delivery.ack()
            outcome[(group, int(delivery.message.id))] = "acked"
        assert transport.in_flight("topic", group=group) == 0
    assert set(outcome) == {(g, n) for g in GROUPS for n in range(published)}
    dead = {(d.group, int(d.message.id)) for d in transport.dead_letters()}
    assert dead == {key for key, value in outcome.items() if value == "dead"}
    await transport.close()


@settings(max_examples=150, deadline=None)
@given(program=ops)
def test_memory_transport_matches_the_model(program: list[tuple[str, int]]) -> None:
    asyncio.run(run(program))
