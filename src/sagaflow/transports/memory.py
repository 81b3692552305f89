"""`MemoryTransport`: an in-process transport with real broker semantics.

It is the default transport of the event bus and the reference implementation of
the transport contract. It behaves like a broker with consumer groups, so that a
test passing against it means something for Redis, NATS or RabbitMQ:

* fan-out across groups, competing consumers within a group;
* per-group delivery counts (``attempt``), incremented on each delivery;
* ``nack(delay=...)`` hides the message from the group for ``delay`` seconds,
  measured by the injected `Clock`;
* deliveries left unsettled when their iterator is closed (a consumer stopping or
  dying) go back to the front of their group's queue and are delivered again;
* ``dead_letter`` parks the message with its reason (see `dead_letters`);
* a body larger than ``max_payload`` is refused before anything is queued.

Nothing survives the process (``features.persistent`` is false). Everything runs on
one event loop; the transport is not thread-safe.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from sagaflow.clock import Clock, SystemClock
from sagaflow.errors import ConfigurationError, MessageTooLargeError, TransportClosedError
from sagaflow.transports.base import Message, TransportFeatures, validate_name

__all__ = ["MemoryDeadLetter", "MemoryDelivery", "MemoryTransport"]

DEFAULT_MAX_PAYLOAD = 1024 * 1024


@dataclass(frozen=True, slots=True)
class MemoryDeadLetter:
    """A message parked by `MemoryDelivery.dead_letter`.

    Attributes:
        topic: The topic it was published on.
        group: The consumer group that gave up on it.
        message: The message, unchanged.
        reason: Why it was dead-lettered.
        attempt: The delivery count when it was dead-lettered.
    """

    topic: str
    group: str
    message: Message
    reason: str
    attempt: int


class _Entry:
    """One message in one group's queue, with its delivery count."""

    __slots__ = ("deliveries", "message", "seq")

    def __init__(self, message: Message, seq: int) -> None:
        self.message = message
        self.seq = seq
        self.deliveries = 0


class _Group:
    """A consumer group on one topic: its ready queue and its idle consumers."""

    __slots__ = ("consumers", "held", "name", "ready", "topic", "waiters")

    def __init__(self, topic: str, name: str) -> None:
        self.topic = topic
        self.name = name
        # Messages delivered and not settled yet, or waiting out a nack delay.
        self.held = 0
        self.ready: deque[_Entry] = deque()
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.consumers = 0

    def push(self, entry: _Entry, *, front: bool = False) -> None:
        if front:
            self.ready.appendleft(entry)
        else:
            self.ready.append(entry)
        self.wake_one()

    def wake_one(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def wake_all(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


class MemoryDelivery:
    """One delivery of a message to one consumer; see `sagaflow.transports.base.Delivery`."""

    __slots__ = ("_consumer", "_entry", "attempt", "message", "settled")

    def __init__(self, consumer: _Subscription, entry: _Entry) -> None:
        self._consumer = consumer
        self._entry = entry
        self.message = entry.message
        self.attempt = entry.deliveries
        self.settled = False

    def _settle(self) -> bool:
        # Settling twice is a no-op; settling after close is refused like any call.
        if self.settled:
            return False
        self._consumer.transport._check_open()
        self.settled = True
        self._consumer.unsettled.discard(self)
        self._consumer.group.held -= 1
        return True

    async def ack(self) -> None:
        """Settle successfully: never delivered to this group again."""
        self._settle()

    async def nack(self, *, delay: float = 0.0) -> None:
        """Redeliver to the group after ``delay`` seconds (at the back of the queue)."""
        if self._settle():
            self._consumer.transport._requeue(self._consumer.group, self._entry, delay)

    async def dead_letter(self, reason: str) -> None:
        """Park the message with ``reason``; see `MemoryTransport.dead_letters`."""
        if self._settle():
            group = self._consumer.group
            self._consumer.transport._dead.append(
                MemoryDeadLetter(group.topic, group.name, self._entry.message, reason, self.attempt)
            )

    def __repr__(self) -> str:
        return f"<MemoryDelivery id={self.message.id!r} attempt={self.attempt}>"


class _Subscription:
    """The async iterator returned by `MemoryTransport.subscribe` (one consumer)."""

    __slots__ = ("closed", "group", "transport", "unsettled", "waiter")

    def __init__(self, transport: MemoryTransport, group: _Group) -> None:
        self.transport = transport
        self.group = group
        self.unsettled: set[MemoryDelivery] = set()
        self.closed = False
        self.waiter: asyncio.Future[None] | None = None
        group.consumers += 1

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> MemoryDelivery:
        group = self.group
        transport = self.transport
        while True:
            if self.closed or transport._closed:
                await self.aclose()
                raise StopAsyncIteration
            if group.ready:
                entry = group.ready.popleft()
                entry.deliveries += 1
                group.held += 1
                delivery = MemoryDelivery(self, entry)
                self.unsettled.add(delivery)
                return delivery
            waiter = self.waiter = asyncio.get_running_loop().create_future()
            group.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                # A wake-up meant for us must not be lost with us.
                if waiter.done() and not waiter.cancelled():
                    group.wake_one()
                raise
            finally:
                self.waiter = None

    async def aclose(self) -> None:
        """Stop consuming; unsettled deliveries go back to the group, at the front."""
        if self.closed:
            return
        self.closed = True
        self.group.consumers -= 1
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)  # a task blocked in __anext__ sees the close
        pending = [d for d in self.unsettled if not d.settled]
        self.unsettled.clear()
        # Oldest delivery first in the queue again, to keep the group's order.
        for delivery in sorted(pending, key=_arrival, reverse=True):
            delivery.settled = True
            self.group.held -= 1
            self.group.push(delivery._entry, front=True)


def _arrival(delivery: MemoryDelivery) -> int:
    return delivery._entry.seq


class MemoryTransport:
    """An in-process broker with consumer groups; see the module docstring.

    Args:
        max_payload: Largest body accepted by `publish`, in bytes.
        clock: Times ``nack`` delays (inject a fake clock in tests).
        yield_backlog: `publish` yields to the event loop once when a consuming
            group has this many messages waiting, so that consumers keep up
            with a publisher that never awaits anything else.
    """

    def __init__(
        self,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        clock: Clock | None = None,
        yield_backlog: int = 128,
    ) -> None:
        if max_payload < 1:
            raise ConfigurationError(f"max_payload must be >= 1, got {max_payload}")
        if yield_backlog < 1:
            raise ConfigurationError(f"yield_backlog must be >= 1, got {yield_backlog}")
        self._yield_backlog = yield_backlog
        self.features = TransportFeatures(
            persistent=False,
            ordered=True,
            competing_consumers=True,
            native_delay=False,
            native_dead_letter=True,
            max_payload=max_payload,
        )
        self._clock = clock or SystemClock()
        self._topics: dict[str, dict[str, _Group]] = {}
        self._dead: list[MemoryDeadLetter] = []
        self._timers: set[asyncio.Task[None]] = set()
        self._closed = False
        self._seq = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<MemoryTransport {state} topics={len(self._topics)}>"

    @property
    def closed(self) -> bool:
        """Whether `close` was called."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise TransportClosedError("the memory transport is closed")

    async def declare(self, topic: str, *, group: str) -> None:
        """Create ``group`` on ``topic`` now, so it keeps messages published from now on."""
        self._check_open()
        self._group(topic, group)

    def _group(self, topic: str, group: str) -> _Group:
        groups = self._topics.get(topic)
        if groups is None:
            validate_name("topic", topic)
            groups = self._topics[topic] = {}
        found = groups.get(group)
        if found is None:
            validate_name("group", group)
            found = groups[group] = _Group(topic, group)
        return found

    async def publish(self, messages: Sequence[Message]) -> None:
        """Queue ``messages`` for every group of their topics, in order.

        The whole batch is checked first: one oversized message rejects it all.
        A topic without groups drops its messages (groups see messages published
        after they first subscribed).

        Raises:
            MessageTooLargeError: A body is larger than ``features.max_payload``.
            TransportClosedError: The transport is closed.
        """
        self._check_open()
        limit = self.features.max_payload
        for message in messages:
            if len(message.body) > limit:
                raise MessageTooLargeError(len(message.body), limit)
            if message.topic not in self._topics:
                validate_name("topic", message.topic)
        topics = self._topics
        backlog = 0
        for message in messages:
            groups = topics.get(message.topic)
            if not groups:
                continue
            self._seq += 1
            for group in groups.values():
                group.push(_Entry(message, self._seq))
                if group.consumers:
                    backlog = max(backlog, len(group.ready))
        if backlog >= self._yield_backlog:
            # A publisher that never awaits anything else would starve the
            # consumers and grow the queues without bound. Yield once so that they
            # drain: memory stays bounded, and short-lived objects die young (far
            # less garbage-collector work). Yielding cannot deadlock, unlike
            # blocking until the queue shrinks.
            await asyncio.sleep(0)

    def subscribe(self, topic: str, *, group: str) -> _Subscription:
        """Return an iterator of deliveries of ``topic`` for consumer ``group``.

        The group exists from this call on. Several iterators on one group compete
        for its messages. Close the iterator (``aclose``) to stop consuming: its
        unsettled deliveries are delivered again.

        Raises:
            TransportClosedError: The transport is closed.
        """
        self._check_open()
        return _Subscription(self, self._group(topic, group))

    def _requeue(self, group: _Group, entry: _Entry, delay: float) -> None:
        if delay <= 0:
            group.push(entry)
            return
        group.held += 1
        task = asyncio.get_running_loop().create_task(self._later(group, entry, delay))
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def _later(self, group: _Group, entry: _Entry, delay: float) -> None:
        try:
            await self._clock.sleep(delay)
        finally:
            group.held -= 1
        if not self._closed:
            group.push(entry)

    def dead_letters(
        self, *, topic: str | None = None, group: str | None = None
    ) -> list[MemoryDeadLetter]:
        """Return the dead-lettered messages, oldest first, optionally filtered."""
        return [
            d
            for d in self._dead
            if (topic is None or d.topic == topic) and (group is None or d.group == group)
        ]

    def pending(self, topic: str, *, group: str) -> int:
        """Return how many messages wait in ``group``'s queue (not counting in-flight)."""
        groups = self._topics.get(topic)
        found = groups.get(group) if groups else None
        return len(found.ready) if found else 0

    def in_flight(self, topic: str, *, group: str) -> int:
        """Return the messages of ``group`` not settled yet: queued, delivered or delayed."""
        groups = self._topics.get(topic)
        found = groups.get(group) if groups else None
        return len(found.ready) + found.held if found else 0

    async def close(self) -> None:
        """End every subscription and cancel pending redelivery timers; idempotent."""
        if self._closed:
            return
        self._closed = True
        for groups in self._topics.values():
            for group in groups.values():
                group.wake_all()
        timers = list(self._timers)
        for task in timers:
            task.cancel()
        if timers:
            await asyncio.gather(*timers, return_exceptions=True)
