"""Helpers shared by the broker transports (private).

Nothing here imports a broker client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, Protocol, TypeVar

from sagaflow.errors import MessageTooLargeError, TransportClosedError
from sagaflow.retry import RetryPolicy
from sagaflow.transports.base import Message, validate_name

logger = logging.getLogger("sagaflow.transports")

T = TypeVar("T")
D = TypeVar("D")


class _HasClosed(Protocol):
    _closed: asyncio.Event


TransportT = TypeVar("TransportT", bound=_HasClosed)
SubT = TypeVar("SubT")

# Reconnect forever with capped, jittered backoff: a broker restart must not end a
# subscription, and full jitter keeps many consumers from reconnecting in lockstep.
RECONNECT_POLICY = RetryPolicy(max_attempts=None, initial_delay=0.05, max_delay=5.0)

# Publishes retry a few times on a lost connection, then surface the error.
PUBLISH_RETRY_POLICY = RetryPolicy(max_attempts=4, initial_delay=0.05, max_delay=1.0)


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
