"""A subscription and its handler pipeline: decode → middleware → inbox → retry → handler.

One `Pipeline` per subscription turns a transport `Delivery` into exactly one
settlement:

* **ack** when the handler succeeded, when the inbox says the group already
  handled the event, or when the event is of a registered type this
  subscription does not handle (a topic shared by several types);
* **nack with a delay** when the handler failed beyond its in-process retries
  and the subscription's ``redelivery`` policy allows another delivery;
* **dead-letter** (stored first, then settled with the transport) when the
  message cannot be decoded, when the error is not retryable, or when the
  redelivery policy gives up.

Never ack-first: a crash before settling leaves the delivery to be redelivered.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sagaflow.choreography.context import CURRENT
from sagaflow.choreography.dead_letters import DeadLetter, DeadLetterStore, error_data
from sagaflow.choreography.inbox import Inbox, MemoryInbox
from sagaflow.choreography.middleware import HandleContext, Middleware, chain_handle
from sagaflow.clock import Clock
from sagaflow.errors import NonRetryableError
from sagaflow.events import Event
from sagaflow.retry import RetryPolicy
from sagaflow.serialization import Serializer
from sagaflow.transports.base import Delivery

__all__ = ["BusStats", "Pipeline", "Subscription"]

logger = logging.getLogger("sagaflow.choreography")

_MAX_TYPE_SHOWN = 200


@dataclass(slots=True)
class BusStats:
    """Counters kept by an `EventBus` (read them; do not write them).

    Attributes:
        published: Events accepted by the transport.
        handled: Deliveries whose handler succeeded.
        duplicates: Deliveries dropped by the inbox as already handled.
        skipped: Deliveries of registered types that the subscription does not handle.
        retries: In-process handler retries.
        redeliveries: Deliveries nacked for redelivery after their retries ran out.
        dead_lettered: Deliveries dead-lettered (including undecodable ones).
        undecodable: Deliveries that could not be decoded (hostile or corrupt input).
        unrouted: Published events of a type no subscription of this bus handles.
        settle_errors: Acks, nacks or dead-letters the transport refused.
    """

    published: int = 0
    handled: int = 0
    duplicates: int = 0
    skipped: int = 0
    retries: int = 0
    redeliveries: int = 0
    dead_lettered: int = 0
    undecodable: int = 0
    unrouted: int = 0
    settle_errors: int = 0


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Subscription:
    """A handler subscribed to an event class for a consumer group.

    Built by `EventBus.subscribe`; the fields are the options given there.

    Attributes:
        event_type: The event class; subclasses are delivered too.
        handler: The function called with each event (sync or async).
        group: The consumer group: competing consumers inside it, fan-out across.
        retry: In-process retries of the handler for one delivery.
        redelivery: Redeliveries after the in-process retries ran out;
            ``max_attempts`` caps the delivery count before dead-lettering.
        concurrency: How many events of this subscription are handled at once.
        ordered_by_key: Handle events with the same partition key one at a time,
            in delivery order.
        emits: The event classes the handler may publish, as declared with
            ``emits=``; ``None`` when undeclared. Read by the topology checks
            and diagrams (`sagaflow.observability.topology`); never enforced.
    """

    event_type: type[Event]
    handler: Callable[[Any], object]
    group: str
    retry: RetryPolicy
    redelivery: RetryPolicy
    concurrency: int = 1
    ordered_by_key: bool = False
    emits: tuple[type[Event], ...] | None = None

    @property
    def is_async(self) -> bool:
        """Whether the handler is a coroutine function (else it runs in a thread)."""
        return _is_async(self.handler)

    @property
    def name(self) -> str:
        """A readable name: ``group:handler``."""
        return f"{self.group}:{getattr(self.handler, '__qualname__', repr(self.handler))}"


def _is_async(handler: Callable[..., object]) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(handler, "__call__", None)  # noqa: B004 - callable objects
    return call is not None and inspect.iscoroutinefunction(call)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class Pipeline:
    """Runs deliveries of one subscription through the handler pipeline and settles them."""

    __slots__ = (
        "_call",
        "_handle",
        "_in_flight",
        "_memory_inbox",
        "clock",
        "dead_letters",
        "event_type",
        "group",
        "inbox",
        "on_dead_letter",
        "rng",
        "serializer",
        "stats",
        "subscription",
    )

    def __init__(
        self,
        subscription: Subscription,
        *,
        serializer: Serializer,
        inbox: Inbox,
        dead_letters: DeadLetterStore,
        middleware: Sequence[Middleware],
        clock: Clock,
        rng: random.Random,
        stats: BusStats,
        on_dead_letter: Callable[[DeadLetter], object] | None = None,
    ) -> None:
        self.subscription = subscription
        self.event_type = subscription.event_type
        self.group = subscription.group
        self.serializer = serializer
        self.inbox = inbox
        self.dead_letters = dead_letters
        self.clock = clock
        self.rng = rng
        self.stats = stats
        self.on_dead_letter = on_dead_letter
        self._call = _caller(subscription.handler)
        # The in-memory inbox answers synchronously: skip two coroutines per event.
        self._memory_inbox = inbox if type(inbox) is MemoryInbox else None
        self._in_flight: dict[str, asyncio.Future[None]] = {}
        core = self._serialized_core if subscription.concurrency > 1 else self._core
        self._handle = chain_handle(middleware, core)

    async def process(self, delivery: Delivery, *, replay: bool = False) -> bool:
        """Handle one delivery and settle it; return whether it was acked.

        Never raises (a failing handler, bad input, a refusing transport are all
        settled or logged); cancellation propagates and leaves the delivery
        unsettled, to be redelivered.
        """
        try:
            try:
                envelope = self.serializer.decode(delivery.message)
            except Exception as exc:
                # Whatever the input, it is parked with its reason, never dropped.
                self.stats.undecodable += 1
                await self._give_up(delivery, exc, f"undecodable message: {_describe(exc)}", 0)
                return False
            if not isinstance(envelope.event, self.event_type):
                # A registered type this subscription does not handle: the topic is
                # shared with other types (see EventBus topic_for).
                self.stats.skipped += 1
                return await self._settle(delivery.ack())
            ctx = HandleContext(envelope, self.group, delivery.attempt)
            try:
                await self._handle(ctx)
            except Exception as exc:
                await self._failed(delivery, ctx, exc, replay)
                return False
            if ctx.duplicate:
                self.stats.duplicates += 1
            else:
                self.stats.handled += 1
            try:
                await delivery.ack()
            except Exception as exc:
                self._settle_failed(exc)
                return False
            return True
        except Exception:
            # Last resort (a bug): one bad delivery must never end consumption,
            # nor sit unsettled until the consumer stops. Hand it back for later.
            logger.exception("unexpected error handling a delivery of group %r", self.group)
            delay = self.subscription.redelivery.delay(delivery.attempt, self.rng)
            await self._settle(delivery.nack(delay=delay))
            return False

    async def _serialized_core(self, ctx: HandleContext) -> None:
        # With concurrency > 1, two copies of one event (a producer retry, a
        # redelivery) could both pass the inbox check before either marks it.
        # Copies of one event id therefore run one after the other here; the
        # later one then finds the inbox mark and is dropped as a duplicate.
        in_flight = self._in_flight
        event_id = ctx.envelope.id
        while (other := in_flight.get(event_id)) is not None:
            await asyncio.shield(other)
        done = asyncio.get_running_loop().create_future()
        in_flight[event_id] = done
        try:
            await self._core(ctx)
        finally:
            del in_flight[event_id]
            done.set_result(None)

    async def _core(self, ctx: HandleContext) -> None:
        envelope = ctx.envelope
        group = self.group
        memory = self._memory_inbox
        seen = (
            memory.seen_nowait(group, envelope.id)
            if memory is not None
            else await self.inbox.seen(group, envelope.id)
        )
        if seen:
            ctx.duplicate = True
            return
        token = CURRENT.set(envelope)
        try:
            ctx.attempts = 1
            started = self.clock.monotonic() if self.subscription.retry.deadline else 0.0
            try:
                await self._call(envelope.event)
            except Exception as exc:
                await self._retry(ctx, exc, started)
            except asyncio.CancelledError as exc:
                raise _cancelled_by_handler(exc) from exc
        finally:
            CURRENT.reset(token)
        if memory is not None:
            memory.mark_nowait(group, envelope.id)
        else:
            await self.inbox.mark(group, envelope.id)

    async def _retry(self, ctx: HandleContext, error: Exception, started: float) -> None:
        """Retry the handler after ``error`` per the retry policy; raise when it gives up."""
        policy = self.subscription.retry
        event = ctx.envelope.event
        while True:
            elapsed = self.clock.monotonic() - started if policy.deadline else 0.0
            if not policy.should_retry(error, attempt=ctx.attempts, elapsed=elapsed):
                raise error
            self.stats.retries += 1
            await self.clock.sleep(policy.delay(ctx.attempts, self.rng))
            ctx.attempts += 1
            try:
                await self._call(event)
                return
            except Exception as exc:
                error = exc
            except asyncio.CancelledError as exc:
                raise _cancelled_by_handler(exc) from exc

    async def _failed(
        self, delivery: Delivery, ctx: HandleContext, error: Exception, replay: bool
    ) -> None:
        envelope = ctx.envelope
        # Failures that will be retried are routine: INFO. Dead letters are WARNING.
        logger.info(
            "handler of group %r failed on %s %s (delivery %d, %d attempts): %s",
            self.group,
            envelope.type,
            envelope.id,
            delivery.attempt,
            ctx.attempts,
            type(error).__name__,
        )
        sub = self.subscription
        if replay:
            reason = f"replay failed: {_describe(error)}"
        elif not sub.retry.is_retryable(error):
            reason = f"non-retryable error after {ctx.attempts} attempt(s): {_describe(error)}"
        else:
            elapsed = self.clock.now() - envelope.time.timestamp()
            if sub.redelivery.should_retry(error, attempt=delivery.attempt, elapsed=elapsed):
                self.stats.redeliveries += 1
                delay = sub.redelivery.delay(delivery.attempt, self.rng)
                await self._settle(delivery.nack(delay=delay))
                return
            reason = (
                f"handler failed on {delivery.attempt} deliveries "
                f"({ctx.attempts} attempt(s) in the last): {_describe(error)}"
            )
        await self._give_up(delivery, error, reason, ctx.attempts)

    async def _give_up(
        self, delivery: Delivery, error: BaseException, reason: str, attempts: int
    ) -> None:
        message = delivery.message
        event_type = message.headers.get("ce-type")
        letter = DeadLetter(
            id=f"{self.group}/{message.id}",
            group=self.group,
            topic=message.topic,
            message=message,
            reason=reason,
            error=error_data(error),
            event_type=event_type[:_MAX_TYPE_SHOWN] if event_type is not None else None,
            deliveries=delivery.attempt,
            attempts=attempts,
            time=self.clock.now(),
        )
        try:
            await self.dead_letters.add(letter)
        except Exception:
            # Keep the message with the transport rather than lose it.
            logger.exception("could not store dead letter %s; redelivering", letter.id)
            delay = self.subscription.redelivery.delay(delivery.attempt, self.rng)
            await self._settle(delivery.nack(delay=delay))
            return
        self.stats.dead_lettered += 1
        logger.warning("dead-lettered %s for group %r", letter.id, self.group)
        await self._settle(delivery.dead_letter(reason))
        if self.on_dead_letter is not None:
            try:
                self.on_dead_letter(letter)
            except Exception:
                logger.exception("on_dead_letter hook failed")

    async def _settle(self, settlement: Awaitable[None]) -> bool:
        try:
            await settlement
        except Exception as exc:
            self._settle_failed(exc)
            return False
        return True

    def _settle_failed(self, error: Exception) -> None:
        self.stats.settle_errors += 1
        logger.warning("transport refused to settle a delivery: %s", type(error).__name__)


def _cancelled_by_handler(error: asyncio.CancelledError) -> NonRetryableError:
    """Return the failure to record for a `CancelledError` raised by a handler.

    Re-raises ``error`` when this task is being cancelled (the bus is stopping:
    the delivery stays unsettled, to be redelivered). Raised by the handler (or a
    library under it) while nobody cancelled the task, it is a failure instead:
    let through, it would end the consumer and leave the delivery unsettled.
    """
    task = asyncio.current_task()
    if task is None or task.cancelling():
        raise error
    detail = f": {error}" if str(error) else ""
    return NonRetryableError(f"the handler raised CancelledError without being cancelled{detail}")


def _caller(handler: Callable[[Any], object]) -> Callable[[Event], Awaitable[object]]:
    if _is_async(handler):
        return handler  # type: ignore[return-value]

    async def call_in_thread(event: Event) -> object:
        # Sync handlers may block: keep them off the event loop. to_thread copies
        # the context, so current_envelope() works inside them.
        return await asyncio.to_thread(handler, event)

    return call_in_thread
