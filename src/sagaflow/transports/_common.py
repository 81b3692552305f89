"""Helpers shared by the broker transports (private).

Nothing here imports a broker client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from sagaflow.errors import MessageTooLargeError, TransportClosedError, TransportError
from sagaflow.retry import RetryPolicy
from sagaflow.transports.base import Message, TransportFeatures, validate_name

logger = logging.getLogger("sagaflow.transports")

T = TypeVar("T")
D = TypeVar("D")


class _HasClosed(Protocol):
    _closed: asyncio.Event


TransportT = TypeVar("TransportT", bound=_HasClosed)
SubT = TypeVar("SubT")
# How a broker names a received message for settling it: a stream entry id, a row seq.
K = TypeVar("K")
DeliveryT = TypeVar("DeliveryT", bound="BrokerDelivery[Any, Any]")
KeyedSubT = TypeVar("KeyedSubT", bound="KeyedSubscription[Any, Any]")
AckerT = TypeVar("AckerT", bound="WriteBehindAcks[Any]")

# Reconnect forever with capped, jittered backoff: a broker restart must not end a
# subscription, and full jitter keeps many consumers from reconnecting in lockstep.
RECONNECT_POLICY = RetryPolicy(max_attempts=None, initial_delay=0.05, max_delay=5.0)

# Publishes retry a few times on a lost connection, then surface the error.
PUBLISH_RETRY_POLICY = RetryPolicy(max_attempts=4, initial_delay=0.05, max_delay=1.0)


def broker_features(max_payload: int, *, persistent: bool = True) -> TransportFeatures:
    """Return the `TransportFeatures` of a broker transport.

    Every broker here keeps a group's messages in order, shares them between the
    group's consumers, and delays and dead-letters in the broker; whether messages
    survive a restart depends on the broker (Redis: on its persistence settings).
    """
    return TransportFeatures(
        persistent=persistent,
        ordered=True,
        competing_consumers=True,
        native_delay=True,
        native_dead_letter=True,
        max_payload=max_payload,
    )


def check_messages(messages: Sequence[Message], max_payload: int) -> None:
    """Validate topics and sizes of ``messages`` before anything is sent.

    Raises:
        ConfigurationError: A topic name is unsafe.
        MessageTooLargeError: A body exceeds ``max_payload``.
    """
    for message in messages:
        validate_name("topic", message.topic)
        if len(message.body) > max_payload:
            raise MessageTooLargeError(len(message.body), max_payload)


def ensure_open(closed: bool, name: str) -> None:
    """Raise `TransportClosedError` when the transport ``name`` is closed."""
    if closed:
        raise TransportClosedError(f"{name} is closed")


def check_subscription(topic: str, group: str, closed: bool, name: str) -> None:
    """Check the arguments of ``subscribe`` and ``declare`` on the transport ``name``.

    Raises:
        ConfigurationError: ``topic`` or ``group`` is not a safe name.
        TransportClosedError: The transport is closed.
    """
    validate_name("topic", topic)
    validate_name("group", group)
    ensure_open(closed, name)


async def wait_or_closed(awaitable: Awaitable[T], closed: asyncio.Event) -> tuple[bool, T | None]:
    """Await ``awaitable`` unless ``closed`` is set first.

    Returns:
        ``(True, result)`` when the awaitable finished first, ``(False, None)`` when
        the transport closed first; the awaitable is then cancelled.
    """
    task = asyncio.ensure_future(awaitable)
    closer = asyncio.ensure_future(closed.wait())
    try:
        await asyncio.wait({task, closer}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        closer.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    return False, None


async def sleep_or_closed(seconds: float, closed: asyncio.Event) -> bool:
    """Sleep ``seconds``; return early (``False``) when ``closed`` is set."""
    try:
        await asyncio.wait_for(closed.wait(), timeout=seconds)
    except TimeoutError:
        return True
    return False


async def pause_to_reconnect(failures: int, closed: asyncio.Event, problem: str) -> None:
    """Log ``problem``, then wait the reconnect delay after ``failures`` failures in a row.

    The wait ends early when ``closed`` is set, so a transport closes promptly.
    """
    delay = RECONNECT_POLICY.delay(failures)
    logger.warning("%s; retrying in %.2fs", problem, delay)
    await sleep_or_closed(delay, closed)


async def retry_publish(
    operation: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[BaseException], ...],
    policy: RetryPolicy = PUBLISH_RETRY_POLICY,
) -> T:
    """Run ``operation``, retrying on connection errors ``retry_on`` per ``policy``.

    The last error propagates; the caller translates it at its boundary.
    """
    attempt = 1
    while True:
        try:
            return await operation()
        except retry_on as exc:
            if not policy.should_retry(exc, attempt=attempt, elapsed=0.0):
                raise
            await asyncio.sleep(policy.delay(attempt))
            attempt += 1


class PullIterator(Generic[D]):
    """Cancellation-safe async iterator over batches fetched by a transport.

    An async generator is finalised when a pending ``__anext__`` is cancelled (for
    instance by ``asyncio.wait_for``), which would end a subscription on the first
    timeout. Here each fetch runs in its own task: cancelling ``__anext__`` leaves
    the fetch running and the next call picks up its result, so nothing that was
    received is dropped.

    Args:
        fetch: Returns the next batch (maybe empty); handles reconnection itself.
        closed: The transport's closed event; the iterator ends when it is set.
        release: Called on `aclose` with the received, unconsumed deliveries; hands
            those and every delivery handed out but not settled back to the broker.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[list[D]]],
        closed: asyncio.Event,
        release: Callable[[list[D]], Awaitable[None]],
    ) -> None:
        self._fetch = fetch
        self._closed = closed
        self._release = release
        self._buffer: deque[D] = deque()
        self._task: asyncio.Task[list[D]] | None = None
        self._stopped = False

    def __aiter__(self) -> PullIterator[D]:
        return self

    async def __anext__(self) -> D:
        while True:
            if self._stopped or self._closed.is_set():
                raise StopAsyncIteration
            if self._buffer:
                return self._buffer.popleft()
            if self._task is None:
                self._task = asyncio.ensure_future(self._fetch())
            finished, _ = await wait_or_closed(asyncio.shield(self._task), self._closed)
            if not finished:
                raise StopAsyncIteration
            task, self._task = self._task, None
            self._buffer.extend(task.result())

    async def settle_in_flight(self, wait: float) -> list[D]:
        """Wait (bounded) for a running fetch; return every received, unconsumed item."""
        items = list(self._buffer)
        self._buffer.clear()
        task, self._task = self._task, None
        if task is not None:
            # A failed fetch delivered nothing; a timed-out one is recovered by the broker.
            with contextlib.suppress(Exception):
                items.extend(await asyncio.wait_for(task, wait))
        return items

    async def aclose(self) -> None:
        """Stop iterating and hand every received, unconsumed delivery back."""
        if self._stopped:
            return
        self._stopped = True
        items = await self.settle_in_flight(wait=10.0)
        if not self._closed.is_set():  # close() itself hands everything back
            await self._release(items)


class BrokerDelivery(Generic[TransportT, SubT]):
    """What every broker delivery shares: its fields and the settle-once guard.

    The first of `ack`, `nack` or `dead_letter` settles the delivery and reaches the
    broker; later calls are no-ops (the `Delivery` contract). Settling after the
    transport closed raises, because the broker has taken the message back already.
    A subclass sets ``transport_name`` and implements how settling reaches its
    broker: `_forget` (drop the delivery from the subscription's bookkeeping),
    `_send_ack`, `_send_nack` and `_send_dead_letter`.

    Args:
        transport: The transport that received the delivery.
        sub: The transport's record of the subscription it was received on.
        message: The delivered message.
        attempt: The broker's delivery count for this message and group.
    """

    __slots__ = ("_attempt", "_message", "_settled", "_sub", "_transport")

    transport_name: ClassVar[str]

    def __init__(self, transport: TransportT, sub: SubT, message: Message, attempt: int) -> None:
        self._transport = transport
        self._sub = sub
        self._message = message
        self._attempt = attempt
        self._settled = False

    @property
    def message(self) -> Message:
        """The delivered message."""
        return self._message

    @property
    def attempt(self) -> int:
        """How many times this message has been delivered to this group (1 the first time)."""
        return self._attempt

    def _settle(self) -> bool:
        """Mark settled; ``False`` when it already was (the caller then does nothing)."""
        if self._settled:
            return False
        ensure_open(self._transport._closed.is_set(), self.transport_name)
        self._settled = True
        self._forget()
        return True

    async def dead_letter_if_over(self, max_deliveries: int) -> bool:
        """Dead-letter a new delivery made more than ``max_deliveries`` times.

        The transport's own safety net, checked before a delivery is handed out: a
        message that keeps killing its consumer would otherwise loop forever. Unlike
        `dead_letter` it does not check that the transport is open, since the
        delivery was just received.

        Returns:
            ``True`` when the delivery was dead-lettered (do not hand it out).
        """
        if self._attempt <= max_deliveries:
            return False
        await self.dead_letter_received(f"delivered {self._attempt} times (max {max_deliveries})")
        return True

    async def dead_letter_received(self, reason: str) -> None:
        """Dead-letter a delivery just received, before it is handed out.

        Used for deliveries over the delivery cap and for malformed messages. A
        failure to dead-letter is logged, not raised: it must not end the consumer's
        iteration, and the broker still holds the message (pending, leased or
        requeued), so it comes back and dead-lettering is tried again.
        """
        self._settled = True
        self._forget()
        try:
            await self._send_dead_letter(reason)
        except TransportError as exc:
            logger.warning(
                "%s could not dead-letter a message (%s); it will come back",
                self.transport_name,
                type(exc).__name__,
            )

    def _forget(self) -> None:
        raise NotImplementedError

    async def _send_ack(self) -> None:
        raise NotImplementedError

    async def _send_nack(self, delay: float) -> None:
        raise NotImplementedError

    async def _send_dead_letter(self, reason: str) -> None:
        raise NotImplementedError

    async def ack(self) -> None:
        """Settle successfully: the message is not delivered to this group again."""
        if self._settle():
            await self._send_ack()

    async def nack(self, *, delay: float = 0.0) -> None:
        """Settle unsuccessfully: redeliver to the group after ``delay`` seconds."""
        if self._settle():
            await self._send_nack(delay)

    async def dead_letter(self, reason: str) -> None:
        """Move the message to the dead-letter place with ``reason``; never redelivered."""
        if self._settle():
            await self._send_dead_letter(reason)


@dataclass(eq=False, kw_only=True)
class KeyedSubscription(Generic[K, DeliveryT]):
    """Bookkeeping of a subscription whose broker settles messages by key, acks behind.

    Redis settles a stream entry by its id, PostgreSQL a claimed row by its seq; both
    transports write acks behind (`WriteBehindAcks`) and hand every received,
    unsettled key back on release. A transport's subscription adds its own fields.

    Attributes:
        sizer: The adaptive read size.
        outstanding: Keys received and not settled yet.
        delivered: Deliveries handed out and not settled yet, by key.
        ack_buffer: Keys acked but not yet sent to the broker.
        flush_task: The pending timed flush of ``ack_buffer``.
        failures: Failed reads in a row (the reconnect backoff's attempt).
        iterator: The iterator handed to the subscriber.
    """

    sizer: BatchSizer = field(default_factory=lambda: BatchSizer(1))
    outstanding: set[K] = field(default_factory=set)
    delivered: dict[K, DeliveryT] = field(default_factory=dict)
    ack_buffer: list[K] = field(default_factory=list)
    flush_task: asyncio.Task[None] | None = None
    failures: int = 0
    iterator: PullIterator[DeliveryT] | None = None

    def take_acks(self) -> list[K]:
        """Empty ``ack_buffer``; return what it held (put it back if sending fails)."""
        acks, self.ack_buffer = self.ack_buffer, []
        return acks


class KeyedDelivery(BrokerDelivery[AckerT, KeyedSubT], Generic[AckerT, KeyedSubT, K]):
    """A delivery settled by its broker key; its ack is written behind.

    A subclass implements `_send_nack` and `_send_dead_letter`.

    Args:
        transport: The transport that received the delivery.
        sub: The transport's record of the subscription it was received on.
        key: The broker's key of the message (stream entry id, row seq).
        message: The delivered message.
        attempt: The broker's delivery count for this message and group.
    """

    __slots__ = ("_key",)

    def __init__(
        self, transport: AckerT, sub: KeyedSubT, key: K, message: Message, attempt: int
    ) -> None:
        super().__init__(transport, sub, message, attempt)
        self._key = key

    def _forget(self) -> None:
        self._sub.outstanding.discard(self._key)
        self._sub.delivered.pop(self._key, None)

    async def _send_ack(self) -> None:
        # Write-behind: the ack goes with the next read or within the flush interval.
        self._transport._queue_ack(self._sub, self._key)


class WriteBehindAcks(Generic[KeyedSubT]):
    """Write-behind acks and release, mixed into a transport of `KeyedSubscription` s.

    ``ack()`` only queues the key: the transport sends queued acks with its next read
    (same round trip), after ``_ack_flush_interval`` seconds, or on release. A crash
    in between redelivers the message, which at-least-once allows. A transport sets
    ``_ack_flush_interval``, ``_subs`` and ``_closed``, names the errors of a failed
    ack send in ``_ack_errors`` and its command in ``_ack_command`` (for the log), and
    implements `_send_acks` and `_hand_back`.
    """

    _closed: asyncio.Event
    _subs: set[KeyedSubT]
    _ack_flush_interval: float
    _ack_errors: ClassVar[tuple[type[BaseException], ...]]
    _ack_command: ClassVar[str]

    def _queue_ack(self, sub: KeyedSubT, key: object) -> None:
        sub.ack_buffer.append(key)
        if sub.flush_task is None or sub.flush_task.done():
            sub.flush_task = asyncio.create_task(self._flush_later(sub))

    async def _flush_later(self, sub: KeyedSubT) -> None:
        await asyncio.sleep(self._ack_flush_interval)
        await self._flush_acks(sub)

    async def _flush_acks(self, sub: KeyedSubT) -> None:
        acks = sub.take_acks()
        if not acks:
            return
        try:
            await self._send_acks(sub, acks)
        except self._ack_errors as exc:
            # Unsent acks only cause redelivery (at-least-once); keep them for later.
            sub.ack_buffer.extend(acks)
            logger.warning("%s failed (%s); will retry", self._ack_command, type(exc).__name__)

    async def _send_acks(self, sub: KeyedSubT, keys: list[Any]) -> None:
        """Settle ``keys`` of ``sub`` successfully in the broker."""
        raise NotImplementedError

    async def _hand_back(self, sub: KeyedSubT, keys: list[Any]) -> None:
        """Make the unsettled ``keys`` of ``sub`` deliverable to its group again, now."""
        raise NotImplementedError

    async def _release(self, sub: KeyedSubT, _items: object = None) -> None:
        """Stop ``sub``: send its acks, hand every unsettled message back to the group, now.

        Deliveries it handed out become settled: settling them later is a no-op.
        """
        self._subs.discard(sub)
        if sub.flush_task is not None:
            sub.flush_task.cancel()
        for delivery in sub.delivered.values():
            delivery._settled = True
        sub.delivered.clear()
        await self._flush_acks(sub)
        if sub.outstanding:
            keys = sorted(sub.outstanding)
            sub.outstanding.clear()
            await self._hand_back(sub, keys)


@dataclass(frozen=True, slots=True)
class BrokerDeadLetter:
    """A message a consumer group gave up on, as stored in a broker's dead-letter place.

    Attributes:
        topic: The topic it was published on.
        group: The consumer group that dead-lettered it.
        message: The message, unchanged.
        reason: Why it was dead-lettered.
        attempt: The delivery count when it was dead-lettered.
        ref: The broker's id of the dead-letter record (stream entry id, sequence,
            row id), for deleting it after a replay.
    """

    topic: str
    group: str
    message: Message
    reason: str
    attempt: int
    ref: str


class BatchSizer:
    """Adaptive read size: small while a backlog is shallow, growing while it is deep.

    A consumer that always asked for ``maximum`` messages would take a whole burst
    and starve the other consumers of its group; one that asked for one at a time
    would pay a round trip per message. Doubling after every full read and falling
    back after a short one gives both fairness and throughput.
    """

    __slots__ = ("current", "maximum", "minimum")

    def __init__(self, maximum: int, minimum: int = 8) -> None:
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self.current = self.minimum

    def update(self, received: int) -> None:
        """Record how many messages the last read returned."""
        if received >= self.current:
            self.current = min(self.current * 2, self.maximum)
        else:
            self.current = self.minimum
