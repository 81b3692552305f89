from __future__ import annotations

from collections.abc import Sequence

import pytest

from sagaflow.choreography import (
    DeadLetter,
    DeadLetterStore,
    MemoryDeadLetterStore,
    MemoryInbox,
)
from sagaflow.errors import ConfigurationError, NonRetryableError
from sagaflow.retry import RetryPolicy

from ._support import OrderPlaced, PaymentTaken, make_bus, memory


class Flaky:
    """Fails the first ``failures`` calls, then succeeds."""

    def __init__(self, failures: int, error: type[Exception] = ValueError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0
        self.succeeded: list[str] = []

    async def __call__(self, event: OrderPlaced) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        self.succeeded.append(event.order_id)


async def test_in_process_retry_then_success() -> None:
    handler = Flaky(2)
    async with make_bus() as bus:
        bus.subscribe(OrderPlaced, handler, group="g")
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.join()
    assert handler.succeeded == ["1"]
    assert bus.stats.retries == 2
    assert bus.stats.redeliveries == 0
    assert bus.stats.handled == 1


async def test_redelivery_after_retries_run_out() -> None:
    handler = Flaky(4)  # 3 attempts in delivery 1, success on delivery 2's 2nd
    async with make_bus() as bus:
        bus.subscribe(OrderPlaced, handler, group="g")
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.join()
    assert handler.succeeded == ["1"]
    assert bus.stats.redeliveries == 1
    assert bus.stats.dead_lettered == 0


async def test_dead_letter_after_the_delivery_cap() -> None:
    handler = Flaky(100)
    letters: list[DeadLetter] = []
    async with make_bus(on_dead_letter=letters.append) as bus:
        bus.subscribe(OrderPlaced, handler, group="g")
        envelope = await bus.publish(OrderPlaced(order_id="1"))
        await bus.join()
        [letter] = await bus.dead_letters.list()
        parked = memory(bus).dead_letters(group="g")
    assert handler.calls == 9  # 3 deliveries x 3 attempts
    assert letter.id == f"g/{envelope.id}"
    assert letter.group == "g"
    assert letter.topic == "t.order.placed.v1"
    assert letter.deliveries == 3
    assert letter.attempts == 3
    assert letter.error == {"type": "builtins.ValueError", "message": "failure 9"}
    assert letter.event_type == "t.order.placed.v1"
    assert "failed on 3 deliveries" in letter.reason
    assert letter.message.id == envelope.id
    assert letters == [letter]
    assert [p.message.id for p in parked] == [envelope.id]
    assert parked[0].reason == letter.reason
    assert bus.stats.dead_lettered == 1


async def test_non_retryable_error_is_dead_lettered_at_once() -> None:
    handler = Flaky(1, error=NonRetryableError)
    async with make_bus() as bus:
        bus.subscribe(OrderPlaced, handler, group="g")
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.join()
        [letter] = await bus.dead_letters.list(group="g")
    assert handler.calls == 1
    assert letter.deliveries == 1
    assert letter.attempts == 1
    assert letter.reason.startswith("non-retryable error after 1 attempt(s)")
    assert letter.error is not None
    assert letter.error["type"] == "sagaflow.errors.NonRetryableError"


async def test_give_up_on_errors_skip_redelivery() -> None:
    handler = Flaky(5, error=KeyError)
    retry = RetryPolicy(max_attempts=3, initial_delay=0, give_up_on=(KeyError,))
    async with make_bus() as bus:
        bus.subscribe(OrderPlaced, handler, group="g", retry=retry)
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.join()
    assert handler.calls == 1
    assert bus.stats.dead_lettered == 1


async def test_unlimited_redelivery_keeps_trying() -> None:
    handler = Flaky(12)
    forever = RetryPolicy(max_attempts=None, initial_delay=0, jitter=False)
    async with make_bus() as bus:
        bus.subscribe(OrderPlaced, handler, group="g", redelivery=forever)
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.join()
    assert handler.succeeded == ["1"]
    assert bus.stats.redeliveries == 4


async def test_inbox_drops_duplicates_per_group() -> None:
    calls: list[str] = []
    inbox = MemoryInbox()
    async with make_bus(inbox=inbox) as bus:
        bus.subscribe(OrderPlaced, lambda e: calls.append("a"), group="a")
        bus.subscribe(OrderPlaced, lambda e: calls.append("b"), group="b")
        await bus.publish(OrderPlaced(order_id="1"), id="same-id")
        await bus.publish(OrderPlaced(order_id="1"), id="same-id")
        await bus.join()
    assert sorted(calls) == ["a", "b"]
    assert bus.stats.duplicates == 2
    assert await inbox.seen("a", "same-id")
    assert len(inbox) == 2


async def test_inbox_marks_only_after_success() -> None:
    inbox = MemoryInbox()
    handler = Flaky(3)  # fails delivery 1 entirely
    async with make_bus(inbox=inbox) as bus:
        bus.subscribe(OrderPlaced, handler, group="g")
        envelope = await bus.publish(OrderPlaced(order_id="1"))
        await bus.join()
    assert await inbox.seen("g", envelope.id)
    assert handler.succeeded == ["1"]


async def test_custom_inbox_protocol_is_used() -> None:
    class RecordingInbox:
        def __init__(self) -> None:
            self.marked: set[tuple[str, str]] = set()

        async def seen(self, group: str, event_id: str) -> bool:
            return (group, event_id) in self.marked

        async def mark(self, group: str, event_id: str) -> None:
            self.marked.add((group, event_id))

    inbox = RecordingInbox()
    calls = []
    async with make_bus(inbox=inbox) as bus:
        bus.subscribe(OrderPlaced, calls.append, group="g")
        await bus.publish(OrderPlaced(order_id="1"), id="x")
        await bus.publish(OrderPlaced(order_id="1"), id="x")
        await bus.join()
    assert len(calls) == 1
    assert inbox.marked == {("g", "x")}


def test_memory_inbox_window() -> None:
    inbox = MemoryInbox(max_entries=2)
    inbox.mark_nowait("g", "1")
    inbox.mark_nowait("g", "2")
    inbox.mark_nowait("g", "3")
    assert not inbox.seen_nowait("g", "1")
    assert inbox.seen_nowait("g", "3")
    with pytest.raises(ConfigurationError):
        MemoryInbox(max_entries=0)


async def test_replay_after_fix_removes_the_letter() -> None:
    broken = True
    handled: list[str] = []

    async def handle(event: OrderPlaced) -> None:
        if broken:
            raise NonRetryableError("bug")
        handled.append(event.order_id)

    async with make_bus() as bus:
        bus.subscribe(OrderPlaced, handle, group="g")
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.publish(OrderPlaced(order_id="2"))
        await bus.join()
        letters = await bus.dead_letters.list(group="g")
        assert len(letters) == 2
        assert not await bus.replay(letters[0].id)  # still broken
        again = await bus.dead_letters.get(letters[0].id)
        assert again is not None
        assert again.reason.startswith("replay failed")
        assert again.deliveries == 2
        assert (await bus.dead_letters.list(limit=1))[0].id == letters[1].id  # replaced: moved last
        broken = False
        assert await bus.replay_all(group="g") == 2
        assert await bus.dead_letters.list() == []
        with pytest.raises(KeyError):
            await bus.replay("g/nope")
    assert sorted(handled) == ["1", "2"]


async def test_replay_needs_a_matching_subscription() -> None:
    async with make_bus() as bus:
        bus.subscribe(OrderPlaced, Flaky(100, NonRetryableError), group="g")
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.join()
        [letter] = await bus.dead_letters.list()
    other = make_bus(dead_letters=bus.dead_letters)
    other.subscribe(PaymentTaken, lambda e: None, group="g")
    with pytest.raises(ConfigurationError):
        await other.replay(letter.id)


async def test_replay_on_a_fresh_bus_sharing_the_store() -> None:
    store = MemoryDeadLetterStore()
    async with make_bus(dead_letters=store) as bus:
        bus.subscribe(OrderPlaced, Flaky(100, NonRetryableError), group="g")
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.join()
    fixed = make_bus(dead_letters=store)
    seen: list[str] = []
    fixed.subscribe(OrderPlaced, lambda e: seen.append(e.order_id), group="g")
    assert await fixed.replay_all() == 1
    assert seen == ["1"]
    assert len(store) == 0


async def test_failing_dead_letter_store_keeps_the_message() -> None:
    class BrokenStore(MemoryDeadLetterStore):
        async def add(self, letter: DeadLetter) -> None:
            raise OSError("disk full")

    handler = Flaky(1, error=NonRetryableError)
    once = RetryPolicy(max_attempts=2, initial_delay=0)
    async with make_bus(dead_letters=BrokenStore(), redelivery=once) as bus:
        bus.subscribe(OrderPlaced, handler, group="g")
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.join()
    # Not dead-lettered (the store failed): nacked instead, then handled.
    assert handler.succeeded == ["1"]
    assert bus.stats.dead_lettered == 0


async def test_store_protocol() -> None:
    store: DeadLetterStore = MemoryDeadLetterStore()
    assert isinstance(store, DeadLetterStore)
    assert await store.get("x") is None
    assert not await store.remove("x")
    items: Sequence[DeadLetter] = await store.list(limit=1)
    assert list(items) == []


async def test_settle_errors_are_counted_not_raised() -> None:
    async with make_bus() as bus:
        bus.subscribe(OrderPlaced, lambda e: None, group="g")
        await bus.start()
        transport = memory(bus)
        await bus.publish(OrderPlaced(order_id="1"))
        await transport.close()  # the ack will be refused
        await bus.stop(timeout=1)
    assert bus.stats.settle_errors <= 1
