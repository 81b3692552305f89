"""`EventBus`: publish typed events and handle them reliably, with no coordinator.

Each event type travels on its own topic (its wire name, optionally prefixed or
mapped with ``topic_for``). A subscription consumes, for its consumer group, the
topics of every registered class that is its event class or derives from it.
Delivery is at-least-once; the handler pipeline (see
`sagaflow.choreography.subscription`) turns it into "handled once per group, or
dead-lettered with the reason".

Example:
    >>> import asyncio
    >>> from sagaflow.events import Event, EventRegistry
    >>> registry = EventRegistry()
    >>> class Pinged(Event, type="doc.pinged.v1", registry=registry):
    ...     n: int
    >>> async def main() -> list[int]:
    ...     seen: list[int] = []
    ...     async with EventBus(registry=registry) as bus:
    ...         @bus.handler(Pinged, group="doc")
    ...         async def on_ping(event: Pinged) -> None:
    ...             seen.append(event.n)
    ...         await bus.publish(Pinged(n=1))
    ...         await bus.join()
    ...     return seen
    >>> asyncio.run(main())
    [1]
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TypeVar

from sagaflow.choreography.consumer import Consumer, Limiter
from sagaflow.choreography.context import CURRENT
from sagaflow.choreography.dead_letters import (
    DeadLetter,
    DeadLetterStore,
    MemoryDeadLetterStore,
)
from sagaflow.choreography.inbox import Inbox, MemoryInbox
from sagaflow.choreography.middleware import Middleware, chain_publish
from sagaflow.choreography.subscription import BusStats, Pipeline, Subscription
from sagaflow.clock import Clock, SystemClock
from sagaflow.envelope import (
    CONTENT_TYPE_JSON,
    NO_HEADERS,
    Envelope,
    check_headers,
    make_envelope,
    new_event_id,
)
from sagaflow.errors import ConfigurationError, TransportClosedError
from sagaflow.events import Event, EventRegistry, default_registry
from sagaflow.retry import RetryPolicy
from sagaflow.serialization import JsonSerializer, Serializer
from sagaflow.transports.base import Message, Transport, validate_name
from sagaflow.transports.memory import MemoryTransport

__all__ = ["DEFAULT_REDELIVERY", "EventBus"]

logger = logging.getLogger("sagaflow.choreography")

E = TypeVar("E", bound=Event)
R = TypeVar("R")

DEFAULT_REDELIVERY = RetryPolicy(max_attempts=5, initial_delay=1.0, max_delay=60.0)
"""Default redelivery policy: five deliveries in all, 1 s then doubling up to 60 s."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


def default_group(handler: Callable[..., object]) -> str:
    """Return a group name derived from the handler's module and qualified name."""
    raw = f"{getattr(handler, '__module__', '')}.{getattr(handler, '__qualname__', 'handler')}"
    raw = raw.replace("<locals>", "locals").replace("<lambda>", "lambda")
    name = _UNSAFE.sub("-", raw).strip("-._")[:200]
    return validate_name("group", name or "handler")


def _check_emits(emits: Iterable[type[Event]] | None) -> tuple[type[Event], ...] | None:
    if emits is None:
        return None
    declared = tuple(emits)
    for cls in declared:
        if not (isinstance(cls, type) and issubclass(cls, Event)):
            raise ConfigurationError(f"emits= takes Event subclasses, got {cls!r}")
    return declared


class _ReplayDelivery:
    """A stand-in delivery for `EventBus.replay`: settlement is recorded, not sent."""

    __slots__ = ("acked", "attempt", "message")

    def __init__(self, letter: DeadLetter) -> None:
        self.message: Message = letter.message
        self.attempt = letter.deliveries + 1
        self.acked = False

    async def ack(self) -> None:
        self.acked = True

    async def nack(self, *, delay: float = 0.0) -> None:
        return None

    async def dead_letter(self, reason: str) -> None:
        return None


class EventBus:
    """Publishes events and runs subscribed handlers through a reliable pipeline.

    Use it as an async context manager (``async with EventBus() as bus``), or call
    `start` and `stop`. `publish` starts a bus that has subscriptions and was
    never started, so that no subscribed group misses the first events.

    Args:
        transport: Moves the messages (default: a new `MemoryTransport`).
        registry: Event classes by wire name (default: the serializer's, else the
            default registry).
        serializer: Encodes and decodes messages (default: `JsonSerializer` over
            ``registry``); give one with a `HmacSigner` to sign.
        source: The CloudEvents ``source`` of published events (this service).
        inbox: Deduplicates deliveries per group (default: a `MemoryInbox`).
        dead_letters: Where dead letters are kept (default: in memory).
        retry: Default in-process retry policy of handlers.
        redelivery: Default redelivery policy; its ``max_attempts`` caps the
            deliveries of one event to one group before it is dead-lettered.
        middleware: Publish and handle hooks, the first one outermost.
        clock: Times retries and redelivery delays.
        rng: Random source for backoff jitter (seed it for reproducible tests).
        topic_for: Maps a wire name to its topic (default: the wire name).
        on_unrouted: Called with the envelope of each published event that no
            subscription of this bus handles (also counted in ``stats.unrouted``).
            Without it, the first unrouted publish of each type is logged at
            WARNING; with it, at DEBUG (a process whose events other processes
            consume passes ``on_unrouted=lambda envelope: None``).
        on_dead_letter: Called with each `DeadLetter` after it is stored.
        close_transport: Close the transport on `stop`; default: only when the bus
            created it.
        shutdown_timeout: The ``timeout`` used by ``async with`` on exit.
    """

    def __init__(
        self,
        transport: Transport | None = None,
        *,
        registry: EventRegistry | None = None,
        serializer: Serializer | None = None,
        source: str = "sagaflow",
        inbox: Inbox | None = None,
        dead_letters: DeadLetterStore | None = None,
        retry: RetryPolicy | None = None,
        redelivery: RetryPolicy | None = None,
        middleware: Sequence[Middleware] = (),
        clock: Clock | None = None,
        rng: random.Random | None = None,
        topic_for: Callable[[str], str] | None = None,
        on_unrouted: Callable[[Envelope[Event]], object] | None = None,
        on_dead_letter: Callable[[DeadLetter], object] | None = None,
        close_transport: bool | None = None,
        shutdown_timeout: float = 30.0,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.transport: Transport = transport or MemoryTransport(clock=self.clock)
        if registry is None:
            # A serializer given without a registry brings its own.
            registry = getattr(serializer, "registry", None)
        self.registry: EventRegistry = registry if registry is not None else default_registry
        self.serializer: Serializer = serializer or JsonSerializer(self.registry)
        self.source = source
        self.inbox: Inbox = inbox if inbox is not None else MemoryInbox()
        self.dead_letters: DeadLetterStore = (
            dead_letters if dead_letters is not None else MemoryDeadLetterStore()
        )
        self.retry = retry or RetryPolicy()
        self.redelivery = redelivery or DEFAULT_REDELIVERY
        self.middleware = tuple(middleware)
        self.rng = rng or random.Random()
        self.stats = BusStats()
        self.on_unrouted = on_unrouted
        self.on_dead_letter = on_dead_letter
        self.shutdown_timeout = shutdown_timeout
        self._topic_for = topic_for
        self._close_transport = transport is None if close_transport is None else close_transport
        self._subscriptions: list[Subscription] = []
        self._pipelines: dict[Subscription, Pipeline] = {}
        self._limiters: dict[Subscription, Limiter] = {}
        self._consumers: dict[tuple[Subscription, str], Consumer] = {}
        self._topics: dict[str, str] = {}
        self._routes: dict[type[Event], bool] = {}
        self._starting: set[asyncio.Task[None]] = set()
        self._warned_unrouted: set[str] = set()
        self._publish = chain_publish(self.middleware, self._send)
        self._plain_publish = self._publish == self._send
        self._state = "new"

    def __repr__(self) -> str:
        return (
            f"<EventBus {self._state} subscriptions={len(self._subscriptions)} "
            f"transport={type(self.transport).__name__}>"
        )

    # -- subscribing ---------------------------------------------------------------

    @property
    def subscriptions(self) -> Sequence[Subscription]:
        """Every subscription of this bus, in the order they were made."""
        return tuple(self._subscriptions)

    def subscribe(
        self,
        event_type: type[E],
        handler: Callable[[E], object],
        *,
        group: str | None = None,
        retry: RetryPolicy | None = None,
        redelivery: RetryPolicy | None = None,
        concurrency: int = 1,
        ordered_by_key: bool = False,
        emits: Iterable[type[Event]] | None = None,
    ) -> Subscription:
        """Call ``handler`` with every event of ``event_type`` (or a subclass) for ``group``.

        Args:
            event_type: An event class; abstract base classes receive every
                registered subclass.
            handler: An ``async def`` function, or a plain function (run in a
                worker thread). Its return value is ignored; raising fails the
                delivery.
            group: The consumer group (default: derived from the handler's name).
                Buses in several processes that share a group share its events.
            retry: In-process retries for one delivery (default: the bus's).
            redelivery: Redelivery policy (default: the bus's).
            concurrency: Events of this subscription handled at once.
            ordered_by_key: Handle events with the same partition key one at a
                time, in order (see `Consumer`).
            emits: The event classes the handler may publish (documentation for
                topology checks and diagrams; not enforced). Give ``()`` for a
                handler that publishes nothing.

        Returns:
            The subscription.

        Raises:
            ConfigurationError: Bad options, or another subscription of this bus
                uses the same group for overlapping event types or for types
                sharing a topic (they would compete for the same events).
        """
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise ConfigurationError(f"subscribe() needs an Event subclass, got {event_type!r}")
        if not callable(handler):
            raise ConfigurationError(f"handler must be callable, got {handler!r}")
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency}")
        if self._state == "stopped":
            raise TransportClosedError("the event bus is stopped")
        name = validate_name("group", group) if group is not None else default_group(handler)
        self._check_group(name, event_type)
        declared = _check_emits(emits)
        subscription = Subscription(
            event_type=event_type,
            handler=handler,
            group=name,
            retry=retry or self.retry,
            redelivery=redelivery or self.redelivery,
            concurrency=concurrency,
            ordered_by_key=ordered_by_key,
            emits=declared,
        )
        self._subscriptions.append(subscription)
        self._routes.clear()
        if self._state == "running":
            self._spawn_start(subscription)
        return subscription

    def handler(
        self,
        event_type: type[E],
        *,
        group: str | None = None,
        retry: RetryPolicy | None = None,
        redelivery: RetryPolicy | None = None,
        concurrency: int = 1,
        ordered_by_key: bool = False,
        emits: Iterable[type[Event]] | None = None,
    ) -> Callable[[Callable[[E], R]], Callable[[E], R]]:
        """Decorator form of `subscribe`; returns the function unchanged.

        Example::

            @bus.handler(OrderPlaced, group="inventory", emits=[StockReserved])
            async def reserve_stock(event: OrderPlaced) -> None: ...
        """

        def decorate(function: Callable[[E], R]) -> Callable[[E], R]:
            self.subscribe(
                event_type,
                function,
                group=group,
                retry=retry,
                redelivery=redelivery,
                concurrency=concurrency,
                ordered_by_key=ordered_by_key,
                emits=emits,
            )
            return function

        return decorate

    def _check_group(self, group: str, event_type: type[Event]) -> None:
        topics: set[str] | None = None
        for other in self._subscriptions:
            if other.group != group:
                continue
            if issubclass(event_type, other.event_type) or issubclass(other.event_type, event_type):
                raise ConfigurationError(
                    f"group {group!r} already handles {other.event_type.__qualname__} on this bus; "
                    "two handlers in one group would compete for the same events: "
                    "give each its own group"
                )
            if topics is None:
                topics = set(self._topics_of_type(event_type))
            # Disjoint types on one topic (see topic_for) compete too: each
            # consumer would ack, as not its type, the other's events.
            shared = topics.intersection(self._topics_of_type(other.event_type))
            if shared:
                raise ConfigurationError(
                    f"group {group!r} already consumes topic {min(shared)!r} for "
                    f"{other.event_type.__qualname__} on this bus; two handlers in one group "
                    "would compete for its events: give each its own group"
                )

    def topic_for(self, type_name: str) -> str:
        """Return the topic carrying events with wire name ``type_name``."""
        topic = self._topics.get(type_name)
        if topic is None:
            raw = self._topic_for(type_name) if self._topic_for else type_name
            topic = self._topics[type_name] = validate_name("topic", raw)
        return topic

    def _topics_of(self, subscription: Subscription) -> list[str]:
        return self._topics_of_type(subscription.event_type)

    def _topics_of_type(self, event_type: type[Event]) -> list[str]:
        names = self.registry.subclasses_of(event_type)
        return sorted({self.topic_for(name) for name in names})

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe every handler to the transport; idempotent.

        When it returns, every group exists on the transport (where the transport
        can say so), so no event published afterwards is missed. Calling it again
        on a running bus waits for subscriptions made since to be ready.

        Raises:
            TransportError: The transport refused a subscription; nothing is left
                running and the bus can be started again.
            TransportClosedError: The bus was stopped.
        """
        if self._state == "running":
            # Subscriptions made while running start in the background: wait for them.
            if self._starting:
                await asyncio.gather(*list(self._starting))
            return
        if self._state == "stopped":
            raise TransportClosedError("the event bus is stopped")
        self._state = "running"
        try:
            for subscription in self._subscriptions:
                await self._start_subscription(subscription)
        except BaseException:
            # A transport refusing one group must not leave a half-started bus
            # (consumers running after a failed ``async with``, a group never
            # consumed): undo what started, so that start() can be called again.
            await self._undo_start()
            raise

    async def _undo_start(self) -> None:
        consumers = list(self._consumers.values())
        self._consumers.clear()
        self._routes.clear()
        self._state = "new"
        for consumer in consumers:
            consumer.stop_intake()
            consumer.cancel()
        await asyncio.gather(*[t for c in consumers for t in c.tasks], return_exceptions=True)
        for consumer in consumers:
            await consumer.close()

    def _spawn_start(self, subscription: Subscription) -> None:
        task = asyncio.get_running_loop().create_task(self._start_subscription(subscription))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _start_subscription(self, subscription: Subscription) -> None:
        for topic in self._topics_of(subscription):
            await self._start_consumer(subscription, topic)

    async def _start_consumer(self, subscription: Subscription, topic: str) -> None:
        if (subscription, topic) in self._consumers:
            return
        pipeline = self._pipelines.get(subscription) or self._make_pipeline(subscription)
        consumer = Consumer(
            pipeline,
            self.transport,
            topic,
            limiter=self._limiters[subscription],
            clock=self.clock,
        )
        # Registered before the first await: a concurrent start of the same pair returns.
        self._consumers[(subscription, topic)] = consumer
        try:
            declare = getattr(self.transport, "declare", None)
            if declare is not None:
                await declare(topic, group=subscription.group)
            consumer.start()
        except BaseException:
            # Not consuming: forget it, so that the next start or publish tries again.
            self._consumers.pop((subscription, topic), None)
            raise

    async def stop(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - a drain budget, not a call timeout
        """Shut down gracefully; idempotent.

        Stops taking deliveries, lets the handlers in flight finish for up to
        ``timeout`` seconds (default: ``shutdown_timeout``), cancels those still
        running (their deliveries stay unsettled and will be redelivered), closes
        the subscriptions, then the transport when the bus owns it.
        """
        if self._state == "stopped":
            return
        self._state = "stopped"
        limit = self.shutdown_timeout if timeout is None else timeout
        for task in list(self._starting):
            task.cancel()
        consumers = list(self._consumers.values())
        for consumer in consumers:
            consumer.stop_intake()
        await self._drain(consumers, limit)
        for consumer in consumers:
            await consumer.close()
        if self._close_transport:
            await self.transport.close()

    async def _drain(self, consumers: list[Consumer], limit: float) -> None:
        tasks = [task for consumer in consumers for task in consumer.tasks]
        if tasks:
            try:
                async with self.clock.timeout(limit):
                    await asyncio.wait(tasks)
            except TimeoutError:
                logger.warning(
                    "stop: %d task(s) still busy after %.1f s; cancelling", len(tasks), limit
                )
        for consumer in consumers:
            consumer.cancel()
        remaining = [task for consumer in consumers for task in consumer.tasks]
        if remaining:
            await asyncio.gather(*remaining, return_exceptions=True)
        # Reap intake tasks cancelled while idle, so that nothing is left pending.
        await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> EventBus:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- publishing ----------------------------------------------------------------

    def envelope(
        self,
        event: E,
        *,
        id: str | None = None,
        subject: str | None = None,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        traceparent: str | None = None,
    ) -> Envelope[E]:
        """Return the envelope `publish` would send for ``event`` with these options.

        Inside a handler, the correlation id and traceparent default to those of
        the event being handled, and the causation id to its id.
        """
        parent = CURRENT.get()
        if parent is not None:
            correlation_id = correlation_id or parent.correlation_id
            causation_id = causation_id or parent.id
            traceparent = traceparent or parent.traceparent
        type_name = self.registry.type_of(type(event))
        event_id = id or new_event_id()
        if headers:
            check_headers(headers)
            headers = dict(headers)
        # Same result as Envelope.wrap, minus a layer of keyword passing: this
        # runs once per published event.
        return make_envelope(
            event,
            event_id,
            type_name,
            self.source,
            datetime.fromtimestamp(self.clock.now(), UTC),
            correlation_id or event_id,
            subject,
            CONTENT_TYPE_JSON,
            causation_id,
            traceparent,
            key,
            headers or NO_HEADERS,
        )

    async def publish(
        self,
        event: E,
        *,
        id: str | None = None,
        subject: str | None = None,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        traceparent: str | None = None,
    ) -> Envelope[E]:
        """Publish one event and return its envelope once the transport accepted it.

        Args:
            event: An instance of a registered (non-abstract) event class.
            id: Event id (default: a new UUID); the inbox deduplicates on it, so
                publishing twice with one id is handled once per group.
            subject: CloudEvents subject (what the event is about).
            key: Partition key (ordering and routing).
            headers: Free application headers.
            correlation_id: Flow id (default: inherited inside a handler, else the
                event's own id).
            causation_id: Causing event id (default: inherited inside a handler).
            traceparent: W3C trace context (default: inherited inside a handler).

        Raises:
            ConfigurationError: The event class is not registered, or a header
                name is reserved.
            MessageTooLargeError: The encoded event is over the size limit.
            TransportError: The transport refused the message.
        """
        envelope = self.envelope(
            event,
            id=id,
            subject=subject,
            key=key,
            headers=headers,
            correlation_id=correlation_id,
            causation_id=causation_id,
            traceparent=traceparent,
        )
        routed = self._routes.get(type(event))
        fast = self._plain_publish and self._state == "running" and not self._starting
        if routed is not None and fast:
            # The common case, spelled out: a running bus, a known type, no publish
            # middleware. Same steps as _send, without its loops and lists.
            topic = self._topics.get(envelope.type) or self.topic_for(envelope.type)
            await self.transport.publish((self.serializer.encode(envelope, topic=topic),))
            self.stats.published += 1
            if not routed:
                self._unrouted(envelope)
            return envelope
        await self._publish_envelopes((envelope,))
        return envelope

    async def publish_many(
        self,
        events: Iterable[Event | Envelope[Event]],
        *,
        correlation_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[Envelope[Event]]:
        """Publish several events in one transport call, in order.

        Items may be events (wrapped with the given options) or envelopes built
        with `envelope` (sent as they are). Nothing is sent if any item fails to
        encode.
        """
        envelopes: list[Envelope[Event]] = [
            item
            if isinstance(item, Envelope)
            else self.envelope(item, correlation_id=correlation_id, headers=headers)
            for item in events
        ]
        if envelopes:
            await self._publish_envelopes(envelopes)
        return envelopes

    async def _publish_envelopes(self, envelopes: Sequence[Envelope[Event]]) -> None:
        if self._state != "running":
            if self._state == "new" and self._subscriptions:
                await self.start()
        elif self._starting:
            await asyncio.gather(*list(self._starting))
        await self._publish(envelopes)

    async def _send(self, envelopes: Sequence[Envelope[Event]]) -> None:
        encode = self.serializer.encode
        routes = self._routes
        topics = self._topics
        messages = []
        unrouted = False
        for envelope in envelopes:
            cls = type(envelope.event)
            routed = routes.get(cls)
            if routed is None:
                routed = await self._route(cls, envelope.type)
            unrouted = unrouted or not routed
            topic = topics.get(envelope.type) or self.topic_for(envelope.type)
            messages.append(encode(envelope, topic=topic))
        await self.transport.publish(messages)
        self.stats.published += len(messages)
        if unrouted:
            for envelope in envelopes:
                if not routes.get(type(envelope.event)):
                    self._unrouted(envelope)

    async def _route(self, cls: type[Event], type_name: str) -> bool:
        """Work out (and cache) whether a local subscription handles ``cls``.

        A class registered after a subscription to one of its bases started gets
        a consumer here, before its first event is published.
        """
        matching = [s for s in self._subscriptions if issubclass(cls, s.event_type)]
        if self._state == "running":
            topic = self.topic_for(type_name)
            for subscription in matching:
                await self._start_consumer(subscription, topic)
        self._routes[cls] = bool(matching)
        return bool(matching)

    def _unrouted(self, envelope: Envelope[Event]) -> None:
        self.stats.unrouted += 1
        # Warn once per type: a publish-only service would otherwise log every event.
        # A bus given on_unrouted says it expects unrouted events (other processes
        # consume them): DEBUG only.
        warn = self.on_unrouted is None and envelope.type not in self._warned_unrouted
        level = logging.WARNING if warn else logging.DEBUG
        self._warned_unrouted.add(envelope.type)
        logger.log(
            level, "published %s %s: no subscription on this bus", envelope.type, envelope.id
        )
        if self.on_unrouted is not None:
            try:
                self.on_unrouted(envelope)
            except Exception:
                logger.exception("on_unrouted hook failed")

    # -- waiting and dead letters ----------------------------------------------------

    async def join(self, timeout: float | None = 30.0, *, poll: float = 0.005) -> None:  # noqa: ASYNC109
        """Wait until every published event has been handled or settled (for tests).

        Only meaningful with a `MemoryTransport`, whose queues it inspects: it
        returns when no group of this bus has a message waiting or in flight.

        Raises:
            TimeoutError: Still busy after ``timeout`` seconds.
        """
        transport = self.transport
        # Wrappers (fault injection, instrumentation) expose what they wrap as `inner`.
        while not isinstance(transport, MemoryTransport) and hasattr(transport, "inner"):
            transport = transport.inner
        if not isinstance(transport, MemoryTransport):
            raise ConfigurationError("join() needs a MemoryTransport")
        # Real time on purpose: this polls in real time, and a fake clock that
        # jumps ahead while the loop is idle would end the wait too early.
        async with asyncio.timeout(timeout):
            # Polling is deliberate: the state spans many groups and timers, and
            # this helper is for tests, not for the hot path.
            while self._busy(transport):  # noqa: ASYNC110
                await asyncio.sleep(poll)

    def _busy(self, transport: MemoryTransport) -> bool:
        if self._starting:
            return True
        return any(
            transport.in_flight(topic, group=subscription.group)
            for subscription, topic in self._consumers
        )

    async def replay(self, letter_id: str) -> bool:
        """Run a dead letter through its group's handler pipeline again, in this process.

        On success the letter is removed. On failure it is replaced by a letter
        with the new reason. The inbox still applies: a letter whose event the
        group handled meanwhile is simply removed.

        Returns:
            Whether the event was handled (or found already handled).

        Raises:
            KeyError: No letter with that id.
            ConfigurationError: No subscription of this bus consumes the letter's
                group and topic and handles its event type.
        """
        letter = await self.dead_letters.get(letter_id)
        if letter is None:
            raise KeyError(letter_id)
        pipeline = self._pipeline_for(letter)
        delivery = _ReplayDelivery(letter)
        await pipeline.process(delivery, replay=True)
        if delivery.acked:
            await self.dead_letters.remove(letter.id)
            return True
        return False

    async def replay_all(self, *, group: str | None = None) -> int:
        """Replay every stored dead letter this bus can replay; return how many succeeded.

        A dead-letter store may be shared by services: letters that no
        subscription of this bus handles (another service's groups or types) are
        left in the store for that service, not replayed and not counted.

        Args:
            group: Only letters of this consumer group.
        """
        done = 0
        for letter in list(await self.dead_letters.list(group=group)):
            if not self._can_replay(letter):
                continue
            if await self.replay(letter.id):
                done += 1
        return done

    def _can_replay(self, letter: DeadLetter) -> bool:
        try:
            self._pipeline_for(letter)
        except ConfigurationError:
            return False
        return True

    def _pipeline_for(self, letter: DeadLetter) -> Pipeline:
        # A letter of an unknown type is replayed where its topic is consumed (it
        # is dead-lettered again there, undecodable).
        cls = None
        if letter.event_type is not None and letter.event_type in self.registry:
            cls = self.registry.get(letter.event_type)
        for subscription in self._subscriptions:
            if subscription.group != letter.group:
                continue
            if letter.topic not in self._topics_of(subscription):
                continue
            # On a shared topic the group's subscription may handle other types:
            # replayed there, the event would be acked unhandled and the letter lost.
            if cls is not None and not issubclass(cls, subscription.event_type):
                continue
            return self._pipelines.get(subscription) or self._make_pipeline(subscription)
        raise ConfigurationError(
            f"no subscription of this bus handles {letter.event_type or 'the events'} "
            f"of topic {letter.topic!r} for group {letter.group!r}"
        )

    def _make_pipeline(self, subscription: Subscription) -> Pipeline:
        pipeline = self._pipelines[subscription] = Pipeline(
            subscription,
            serializer=self.serializer,
            inbox=self.inbox,
            dead_letters=self.dead_letters,
            middleware=self.middleware,
            clock=self.clock,
            rng=self.rng,
            stats=self.stats,
            on_dead_letter=self.on_dead_letter,
        )
        self._limiters[subscription] = Limiter(subscription.concurrency)
        return pipeline
