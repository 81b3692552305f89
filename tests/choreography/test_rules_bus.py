"""Rules of the event bus that no other test exercised, each through the public API.

Every test names the rule it checks (module docstrings of
``sagaflow.choreography``, docs/choreography.md) and fails if the rule breaks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from sagaflow.choreography import (
    DeadLetter,
    HandleContext,
    MemoryDeadLetterStore,
    MemoryInbox,
    Middleware,
)
from sagaflow.envelope import Envelope
from sagaflow.errors import (
    ConfigurationError,
    MessageTooLargeError,
    NonRetryableError,
    TransportClosedError,
    TransportUnavailableError,
)
from sagaflow.events import Event
from sagaflow.retry import RetryPolicy
from sagaflow.serialization import JsonSerializer
from sagaflow.transports.memory import MemoryTransport

from ._support import REGISTRY, OrderPlaced, PaymentTaken, make_bus, memory, wait_for


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


# -- settling --------------------------------------------------------------------------


class _Proxy:
    """A delivery whose settlements the test can refuse (the broker connection drops)."""

    def __init__(self, inner: Any, transport: RefusingSettle) -> None:
        self._inner = inner
        self._transport = transport
        self.message = inner.message
        self.attempt = inner.attempt

    async def _maybe_refuse(self, name: str) -> None:
        if name in self._transport.refuse:
            self._transport.refuse.discard(name)
            raise TransportUnavailableError(f"{name} refused")

    async def ack(self) -> None:
        await self._maybe_refuse("ack")
        await self._inner.ack()

    async def nack(self, *, delay: float = 0.0) -> None:
        await self._maybe_refuse("nack")
        await self._inner.nack(delay=delay)

    async def dead_letter(self, reason: str) -> None:
        await self._maybe_refuse("dead_letter")
        await self._inner.dead_letter(reason)


class RefusingSettle(MemoryTransport):
    """Refuses the next settlement of each kind named in ``refuse`` (once each)."""

    def __init__(self, *refuse: str) -> None:
        super().__init__()
        self.refuse = set(refuse)

    def subscribe(self, topic: str, *, group: str) -> AsyncIterator[Any]:  # type: ignore[override]
        inner = super().subscribe(topic, group=group)

        async def proxied() -> AsyncIterator[Any]:
            try:
                async for delivery in inner:
                    yield _Proxy(delivery, self)
            finally:
                await inner.aclose()

        return proxied()


async def test_a_refused_ack_is_counted_and_consumption_goes_on() -> None:
    # Rule (Pipeline.process): never raises; a transport refusing to settle is
    # counted in stats.settle_errors and the next deliveries are handled. The
    # unacked delivery is not lost: it stays with the transport.
    transport = RefusingSettle("ack")
    seen: list[str] = []
    bus = make_bus(transport=transport)
    bus.subscribe(OrderPlaced, lambda e: seen.append(e.order_id), group="g")
    async with bus:
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.publish(OrderPlaced(order_id="2"))
        await wait_for(lambda: len(seen) == 2)
        assert bus.stats.settle_errors == 1
        assert transport.in_flight("t.order.placed.v1", group="g") == 1  # "1", unacked
    assert seen == ["1", "2"]
    assert bus.stats.handled == 2


async def test_a_refused_nack_and_dead_letter_are_counted_not_raised() -> None:
    # Rule (Pipeline): a refused nack or dead-letter is counted, never raised,
    # and the dead letter is stored before the transport is asked (never lost).
    transport = RefusingSettle("nack", "dead_letter")
    calls: list[str] = []

    async def failing(event: OrderPlaced) -> None:
        calls.append(event.order_id)
        if event.order_id == "retry":
            raise ConnectionError("later")  # retried, then nacked: refused
        raise NonRetryableError("bad")  # dead-lettered: refused by the transport

    async with make_bus(transport=transport, retry=RetryPolicy.no_retry()) as bus:
        bus.subscribe(OrderPlaced, failing, group="g")
        await bus.publish(OrderPlaced(order_id="retry"))
        await bus.publish(OrderPlaced(order_id="bad"))
        await bus.publish(OrderPlaced(order_id="bad-2"))
        await wait_for(lambda: bus.stats.settle_errors == 2 and len(calls) == 3)
        letters = await bus.dead_letters.list(group="g")
    assert bus.stats.redeliveries == 1
    assert [letter.reason.startswith("non-retryable") for letter in letters] == [True, True]
    assert bus.stats.dead_lettered == 2


async def test_a_failing_on_dead_letter_hook_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    # Rule (EventBus on_dead_letter): called after the letter is stored; a hook
    # that raises neither loses the letter nor stops the consumer.
    def hook(letter: DeadLetter) -> None:
        raise RuntimeError("pager down")

    seen: list[str] = []

    async def handler(event: OrderPlaced) -> None:
        if event.order_id == "bad":
            raise NonRetryableError("bad")
        seen.append(event.order_id)

    async with make_bus(on_dead_letter=hook) as bus:
        bus.subscribe(OrderPlaced, handler, group="g")
        await bus.publish(OrderPlaced(order_id="bad"))
        await bus.publish(OrderPlaced(order_id="ok"))
        await bus.join()
        letters = await bus.dead_letters.list()
    assert seen == ["ok"]
    assert len(letters) == 1
    assert len(memory(bus).dead_letters(group="g")) == 1
    assert "on_dead_letter hook failed" in caplog.text


# -- replay ----------------------------------------------------------------------------


async def test_replay_keeps_the_letter_when_the_store_refuses_the_new_one() -> None:
    # Rule (EventBus.replay): on failure the letter is replaced by one with the
    # new reason; nothing is lost. When the store cannot take the new letter,
    # the old one stays and replay reports failure.
    class Flaky(MemoryDeadLetterStore):
        broken = False

        async def add(self, letter: DeadLetter) -> None:
            if self.broken:
                raise OSError("disk full")
            await super().add(letter)

    store = Flaky()
    async with make_bus(dead_letters=store) as bus:
        bus.subscribe(OrderPlaced, _always_fails, group="g")
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.join()
        [letter] = await store.list()
        store.broken = True
        assert not await bus.replay(letter.id)
    assert await store.list() == [letter]


async def _always_fails(event: OrderPlaced) -> None:
    raise NonRetryableError("still broken")


# -- lifecycle -------------------------------------------------------------------------


class GatedDeclare(MemoryTransport):
    """Declaring a group waits for ``gate`` (a slow broker)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.declaring = asyncio.Event()

    async def declare(self, topic: str, *, group: str) -> None:
        self.declaring.set()
        await self.gate.wait()
        await super().declare(topic, group=group)


async def test_join_waits_for_subscriptions_made_while_running() -> None:
    # Rule (EventBus.join): returns when every group of the bus is idle; a
    # subscription still starting counts as busy.
    transport = GatedDeclare()
    transport.gate.set()
    async with make_bus(transport=transport) as bus:
        bus.subscribe(OrderPlaced, lambda e: None, group="first")
        await bus.start()
        transport.gate.clear()
        bus.subscribe(PaymentTaken, lambda e: None, group="late")
        joining = asyncio.ensure_future(bus.join(timeout=10))
        await asyncio.wait_for(transport.declaring.wait(), 5)
        await asyncio.sleep(0.02)
        assert not joining.done()
        transport.gate.set()
        await joining


async def test_stop_cancels_subscriptions_still_starting() -> None:
    # Rule (EventBus.stop): shuts down gracefully; a subscription whose group
    # is still being declared is abandoned, and no consumer is left running.
    transport = GatedDeclare()
    transport.gate.set()
    bus = make_bus(transport=transport)
    await bus.start()
    transport.gate.clear()
    bus.subscribe(OrderPlaced, lambda e: None, group="late")
    await asyncio.wait_for(transport.declaring.wait(), 5)
    await asyncio.wait_for(bus.stop(), 5)
    assert consumer_tasks() == []
    assert not [t for t in asyncio.all_tasks() if "_start_subscription" in repr(t)]


async def test_join_needs_a_memory_transport() -> None:
    # Rule (EventBus.join): only meaningful with a MemoryTransport (possibly
    # wrapped, exposed as ``inner``); anything else is a ConfigurationError.
    class Wrapper:
        def __init__(self, inner: object) -> None:
            self.inner = inner

    class Elsewhere:
        pass

    bus = make_bus(transport=Wrapper(Elsewhere()), close_transport=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="MemoryTransport"):
        await bus.join()
    wrapped = make_bus(transport=Wrapper(MemoryTransport()))  # type: ignore[arg-type]
    await wrapped.join(timeout=1)


async def test_stop_while_waiting_for_a_slot_loses_nothing() -> None:
    # Rule (Consumer): at most ``concurrency`` events at once; stopping cancels
    # an intake waiting for a slot, and every delivery not handled goes back to
    # the transport (nothing lost).
    gate = asyncio.Event()
    started: list[str] = []

    async def slow(event: OrderPlaced) -> None:
        started.append(event.order_id)
        await gate.wait()

    transport = MemoryTransport()
    bus = make_bus(transport=transport)
    bus.subscribe(OrderPlaced, slow, group="g", concurrency=2)
    await bus.start()
    for n in range(4):
        await bus.publish(OrderPlaced(order_id=str(n)))
    await wait_for(lambda: len(started) == 2)
    await bus.stop(timeout=0.05)
    assert len(started) == 2
    assert transport.pending("t.order.placed.v1", group="g") == 4
    await transport.close()


class ClosingIterators(MemoryTransport):
    """Subscriptions end with TransportClosedError; closing them fails."""

    def __init__(self) -> None:
        super().__init__()
        self.subscriptions = 0

    def subscribe(self, topic: str, *, group: str) -> AsyncIterator[Any]:  # type: ignore[override]
        self.subscriptions += 1
        return _Ending()


class _Ending:
    def __aiter__(self) -> _Ending:
        return self

    async def __anext__(self) -> Any:
        raise TransportClosedError("connection closed by the broker")

    async def aclose(self) -> None:
        raise OSError("socket already gone")


async def test_a_closed_subscription_ends_its_consumer_and_a_failing_close_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Rule (Consumer): a transport that closes the subscription ends the
    # consumer (no resubscribe loop against a closed transport), and stop()
    # still completes when closing the iterator fails (logged, not raised).
    transport = ClosingIterators()
    bus = make_bus(transport=transport)
    bus.subscribe(OrderPlaced, lambda e: None, group="g")
    await bus.start()
    await wait_for(lambda: consumer_tasks() == [])
    await asyncio.wait_for(bus.stop(), 5)
    assert transport.subscriptions == 1
    assert "closing a subscription failed: OSError" in caplog.text


# -- small public pieces ---------------------------------------------------------------


async def test_memory_inbox_mark_is_the_awaitable_form() -> None:
    # Rule (Inbox protocol): mark records the pair, idempotently, per group.
    inbox = MemoryInbox(max_entries=None)
    await inbox.mark("g", "e1")
    await inbox.mark("g", "e1")
    assert await inbox.seen("g", "e1")
    assert not await inbox.seen("h", "e1")
    assert len(inbox) == 1


async def test_middleware_calling_the_base_hooks_passes_through() -> None:
    # Rule (Middleware): both hooks pass through unless overridden; an override
    # delegating to super() behaves like the base class.
    class Counting(Middleware):
        def __init__(self) -> None:
            self.publishes = 0
            self.handles = 0

        async def on_publish(self, envelopes: Sequence[Envelope[Event]], call_next: Any) -> None:
            self.publishes += 1
            await super().on_publish(envelopes, call_next)

        async def on_handle(self, ctx: HandleContext, call_next: Any) -> None:
            self.handles += 1
            assert "HandleContext t.order.placed.v1" in repr(ctx)
            await super().on_handle(ctx, call_next)

    counting = Counting()
    seen: list[str] = []
    async with make_bus(middleware=[counting]) as bus:
        bus.subscribe(OrderPlaced, lambda e: seen.append(e.order_id), group="g")
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.join()
    assert (counting.publishes, counting.handles, seen) == (1, 1, ["1"])


async def test_replay_never_drops_a_letter_no_subscription_handles() -> None:
    # Rule (EventBus.replay): the letter is removed only when its event was
    # handled (or found handled). A bus whose subscription of the letter's group
    # consumes its (shared) topic for another type used to ack it unhandled:
    # replay returned True and the letter was gone.
    store = MemoryDeadLetterStore()
    async with make_bus(dead_letters=store, topic_for=lambda name: "t.shared") as bus:
        bus.subscribe(PaymentTaken, _always_fails, group="g")
        await bus.publish(PaymentTaken(order_id="1"))
        await bus.join()
    [letter] = await store.list()
    seen: list[OrderPlaced] = []
    other = make_bus(dead_letters=store, topic_for=lambda name: "t.shared")
    other.subscribe(OrderPlaced, seen.append, group="g")
    with pytest.raises(ConfigurationError, match=r"handles t\.payment\.taken\.v1"):
        await other.replay(letter.id)
    assert await store.list() == [letter]
    assert other.stats.skipped == 0
    # The service that handles the type replays it.
    fixed = make_bus(dead_letters=store, topic_for=lambda name: "t.shared")
    handled: list[PaymentTaken] = []
    fixed.subscribe(PaymentTaken, handled.append, group="g")
    assert await fixed.replay(letter.id)
    assert [e.order_id for e in handled] == ["1"]
    assert await store.list() == []


async def test_replay_all_on_a_shared_store_leaves_other_services_letters() -> None:
    # Rule (EventBus.replay_all): a dead-letter store shared by services holds
    # letters of groups this bus does not consume; replay_all replays its own
    # and leaves the rest. It used to stop with a ConfigurationError at the
    # first foreign letter, after replaying only some of its own.
    store = MemoryDeadLetterStore()
    async with make_bus(dead_letters=store) as failing:
        failing.subscribe(OrderPlaced, _always_fails, group="billing")
        failing.subscribe(PaymentTaken, _always_fails, group="shipping")
        failing.subscribe(OrderPlaced, _always_fails, group="shipping")
        await failing.publish(OrderPlaced(order_id="1"))
        await failing.publish(PaymentTaken(order_id="2"))
        await failing.join()
    assert len(await store.list()) == 3
    handled: list[str] = []
    shipping = make_bus(dead_letters=store)
    shipping.subscribe(OrderPlaced, lambda e: handled.append(e.order_id), group="shipping")
    shipping.subscribe(PaymentTaken, lambda e: handled.append(e.order_id), group="shipping")
    assert await shipping.replay_all() == 2
    assert sorted(handled) == ["1", "2"]
    [left] = await store.list()
    assert left.group == "billing"


# -- publishing ------------------------------------------------------------------------


async def test_unrouted_publishes_warn_once_per_type_and_quietly_with_a_hook(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Rule (EventBus on_unrouted): without a hook the first unrouted publish of
    # each type is logged at WARNING (then DEBUG); with a hook, only DEBUG.
    caplog.set_level(logging.DEBUG, logger="sagaflow.choreography")
    async with make_bus() as bus:
        for n in range(3):
            await bus.publish(PaymentTaken(order_id=str(n)))
        await bus.publish(OrderPlaced(order_id="1"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().split()[1] for r in warnings] == [
        "t.payment.taken.v1",
        "t.order.placed.v1",
    ]
    assert bus.stats.unrouted == 4
    caplog.clear()
    async with make_bus(on_unrouted=lambda envelope: None) as quiet:
        await quiet.publish(PaymentTaken(order_id="1"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert quiet.stats.unrouted == 1


async def test_publish_many_sends_nothing_if_one_item_fails_to_encode() -> None:
    # Rule (EventBus.publish_many): one transport call, and nothing is sent if
    # any item fails to encode.
    seen: list[str] = []
    serializer = JsonSerializer(REGISTRY, max_size=200)
    async with make_bus(serializer=serializer) as bus:
        bus.subscribe(OrderPlaced, lambda e: seen.append(e.order_id), group="g")
        with pytest.raises(MessageTooLargeError):
            await bus.publish_many([OrderPlaced(order_id="small"), OrderPlaced(order_id="x" * 500)])
        await bus.publish(OrderPlaced(order_id="after"))
        await bus.join()
    assert seen == ["after"]
    assert bus.stats.published == 1


async def test_in_process_retries_keep_the_order_of_a_key() -> None:
    # Rule (Consumer, ordered_by_key): events sharing a key are handled one at
    # a time, in delivery order, and in-process retries keep that order.
    handled: list[int] = []
    failed_once: set[int] = set()

    async def flaky(event: OrderPlaced) -> None:
        if event.total % 2 == 0 and event.total not in failed_once:
            failed_once.add(event.total)
            raise ConnectionError("try again")
        handled.append(event.total)

    retry = RetryPolicy(max_attempts=3, initial_delay=0.005, jitter=False)
    async with make_bus(retry=retry) as bus:
        bus.subscribe(OrderPlaced, flaky, group="g", concurrency=4, ordered_by_key=True)
        for n in range(8):
            await bus.publish(OrderPlaced(order_id="o", total=n), key="o")
        await bus.join()
    assert handled == list(range(8))
    assert bus.stats.retries == 4
    assert bus.stats.redeliveries == 0


async def test_a_retry_predicate_that_raises_dead_letters_the_event() -> None:
    # Rule (RetryPolicy.retry_if): a predicate that raises means "do not retry",
    # so the failing event takes its final path, the dead letters, instead of
    # being handed back to the transport forever.
    def broken(error: BaseException) -> bool:
        raise KeyError("bug in the predicate")

    async def fails(event: OrderPlaced) -> None:
        raise ConnectionError("reset")

    policy = RetryPolicy(max_attempts=5, initial_delay=0, retry_if=broken)
    async with make_bus(retry=policy) as bus:
        bus.subscribe(OrderPlaced, fails, group="g")
        await bus.publish(OrderPlaced(order_id="o1"))
        await bus.join(timeout=10)
        [letter] = await bus.dead_letters.list(group="g")
    assert letter.attempts == 1
    assert letter.error is not None
    assert letter.error["type"] == "builtins.ConnectionError"
