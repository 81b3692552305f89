r"""RabbitMQ transport: a topic exchange, one quorum queue per (topic, group).

Install with ``pip install "sagaflow[rabbitmq]"``. URLs:
``amqp://user:password@host:5672/vhost`` or ``amqps://`` for TLS (query parameters
such as ``cafile``, ``certfile`` and ``keyfile`` are passed to aio-pika).

Layout (``prefix`` defaults to ``sagaflow``)::

    exchange {prefix}               topic exchange; routing key = topic
    queue    {prefix}:{topic}:{group}      quorum queue bound with key = topic
    exchange {prefix}.dlx           topic exchange for dead letters
    queue    {prefix}.dlq:{topic}   classic queue bound to the DLX with key = topic
    queue    {prefix}:{topic}:{group}.delay.{ms}   retry queue (TTL, then back)

* **Publish**: persistent messages, publisher confirms (a batch is pipelined and
  every confirm awaited) and ``mandatory``: a message no queue receives raises
  `PublishError` instead of vanishing. ``message_id`` carries the message id.
* **Consume**: manual ack, ``prefetch`` unacknowledged messages at most per
  subscription (small by default, so competing consumers share a burst).
* **Attempt** = the transport's own ``sagaflow-retries`` header (retries it made)
  + the quorum queue's ``x-delivery-count`` (deliveries returned by crashes,
  closes or rejects) + 1.
* **nack(delay)** publishes a copy with ``sagaflow-retries + 1`` (confirmed), then
  acks the original, so a crash in between duplicates rather than loses. Without a
  delay the copy goes straight back to the group's queue; with one it goes to a
  per-delay classic queue whose ``x-message-ttl`` dead-letters it back to the
  group's queue (one queue per delay value avoids head-of-line blocking; unused
  ones expire). Retries are not ``basic.nack``\\ s: a requeueing nack would redeliver
  at once, and RabbitMQ 4 does not count it toward the quorum delivery limit.
* **Dead letter**: publish to the DLX with ``sagaflow-reason`` (confirmed), then ack.
  The quorum queue also has ``x-dead-letter-exchange`` = the DLX and
  ``x-delivery-limit`` = ``max_deliveries``, so a message that keeps killing its
  consumer (each crash returns it, counting a delivery) is dead-lettered by the
  broker itself; the transport applies the same cap to its own retries.
* **Close / stopped iterator**: unsettled deliveries are rejected with requeue
  (``basic.reject`` counts toward the delivery limit), so they are redelivered at
  once to another consumer.
* Reconnection is aio-pika's robust connection (it restores channels, queues and
  consumers); a settle whose channel died is ignored, as the broker redelivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sagaflow._optional import require
from sagaflow._urls import mask_url
from sagaflow.errors import ConfigurationError, PublishError, TransportUnavailableError
from sagaflow.transports._common import (
    BatchSizer,
    BrokerDeadLetter,
    BrokerDelivery,
    PullIterator,
    broker_features,
    check_messages,
    check_subscription,
    ensure_open,
    logger,
)
from sagaflow.transports.base import Delivery, Message, validate_name

_aio_pika = require("aio_pika", "rabbitmq")
_pika_exc = require("aio_pika.exceptions", "rabbitmq")
_aiormq_exc = require("aiormq.exceptions", "rabbitmq")

__all__ = ["RabbitMQTransport"]

_RETRIES = "sagaflow-retries"
_KEY = "sagaflow-key"
_REASON = "sagaflow-reason"
_GROUP = "sagaflow-group"
_ATTEMPT = "sagaflow-attempt"
# Headers the broker adds; not part of the user's message.
_BROKER_HEADERS = frozenset(
    {
        "x-delivery-count",
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
    }
)
_INTERNAL = frozenset({_RETRIES, _KEY, _REASON, _GROUP, _ATTEMPT})
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    _aiormq_exc.AMQPConnectionError,
    _aiormq_exc.ChannelInvalidStateError,
    _pika_exc.ChannelClosed,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)

_PUBLISH_FAILURES: tuple[type[BaseException], ...] = (
    PublishError,
    TransportUnavailableError,
    *_CONNECTION_ERRORS,
)


def _text(value: Any, *, lenient: bool = False) -> str:
    """Header value as text; bytes that are not UTF-8 raise, or with ``lenient`` are escaped."""
    if isinstance(value, bytes):
        return value.decode(errors="backslashreplace") if lenient else value.decode()
    return str(value)


def _int(value: Any) -> int:
    try:
        return int(_text(value))
    except (TypeError, ValueError):
        return 0


@dataclass(eq=False)
class _Subscription:
    topic: str
    group: str
    queue_name: str
    inbox: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    channel: Any = None
    queue: Any = None
    consumer_tag: str | None = None
    outstanding: dict[int, _RabbitDelivery] = field(default_factory=dict)
    iterator: PullIterator[_RabbitDelivery] | None = None


class _RabbitDelivery(BrokerDelivery["RabbitMQTransport", _Subscription]):
    """One AMQP delivery from a group's queue.

    ``attempt`` counts deliveries of the message to the group: the retry copies the
    transport published before plus the broker's count for this copy.
    """

    __slots__ = ("_incoming", "_malformed", "_retries")

    transport_name = "RabbitMQTransport"

    def __init__(self, transport: RabbitMQTransport, sub: _Subscription, incoming: Any) -> None:
        raw = dict(incoming.headers or {})
        retries = _int(raw.get(_RETRIES, 0))
        attempt = retries + _int(raw.get("x-delivery-count", 0)) + 1
        if incoming.redelivered and "x-delivery-count" not in raw:
            attempt = max(attempt, retries + 2)
        # Why the message cannot be handed out (it is dead-lettered instead), if so.
        self._malformed: str | None = None
        try:
            message = self._decode(sub, incoming, raw, lenient=False)
        except UnicodeDecodeError:
            self._malformed = "malformed message: a header is not UTF-8 text"
            message = self._decode(sub, incoming, raw, lenient=True)
        super().__init__(transport, sub, message, attempt)
        self._incoming = incoming
        self._retries = retries

    @staticmethod
    def _decode(
        sub: _Subscription, incoming: Any, raw: dict[str, Any], *, lenient: bool
    ) -> Message:
        headers = {
            k: _text(v, lenient=lenient)
            for k, v in raw.items()
            if k not in _BROKER_HEADERS and k not in _INTERNAL
        }
        key = raw.get(_KEY)
        return Message(
            id=incoming.message_id or "",
            topic=sub.topic,
            body=incoming.body,
            headers=headers,
            key=_text(key, lenient=lenient) if key is not None else None,
        )

    def _forget(self) -> None:
        self._sub.outstanding.pop(id(self), None)

    async def _send_ack(self) -> None:
        await self._transport._quietly(self._incoming.ack())

    async def _send_nack(self, delay: float) -> None:
        # Publishes a retry copy (after ``delay`` seconds, via a TTL queue), then acks.
        await self._transport._retry(self, delay)

    async def _send_dead_letter(self, reason: str) -> None:
        # Publishes to the dead-letter exchange, then acks.
        await self._transport._dead_letter(self, reason)


class RabbitMQTransport:
    """Transport over RabbitMQ quorum queues (see the module docstring).

    Args:
        url: ``amqp://`` or ``amqps://`` URL; credentials are never logged.
        prefix: Prefix of exchange and queue names.
        prefetch: Unacknowledged messages one subscription may hold.
        batch_size: Most deliveries handed over per internal read.
        block: Seconds one internal read waits (latency of noticing close).
        max_deliveries: Deliveries before a message is dead-lettered (by the broker's
            quorum delivery limit for crashes, by the transport for retries).
        max_payload: Largest body accepted, in bytes.
        mandatory: Refuse (`PublishError`) messages no queue is bound to receive.
        connect_options: Extra keyword arguments for ``aio_pika.connect_robust``.
    """

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        prefix: str = "sagaflow",
        prefetch: int = 10,
        batch_size: int = 200,
        block: float = 0.5,
        max_deliveries: int = 25,
        max_payload: int = 8 * 1024 * 1024,
        mandatory: bool = True,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        if prefetch < 1 or batch_size < 1 or block <= 0 or max_deliveries < 1:
            raise ConfigurationError(
                "prefetch, batch_size, block and max_deliveries must be positive"
            )
        validate_name("prefix", prefix)
        self._url = url
        self._prefix = prefix
        self._prefetch = prefetch
        self._batch = batch_size
        self._block = block
        self._max_deliveries = max_deliveries
        self._mandatory = mandatory
        self._connect_options = connect_options or {}
        self.features = broker_features(max_payload)
        self._connection: Any = None
        self._publish_channel: Any = None
        self._exchange: Any = None
        self._dlx: Any = None
        self._lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._subs: set[_Subscription] = set()
        self._declared: set[str] = set()

    def __repr__(self) -> str:
        return f"RabbitMQTransport({mask_url(self._url)!r})"

    # --- naming ------------------------------------------------------------------------

    def queue_name(self, topic: str, group: str) -> str:
        """Return the name of ``group``'s queue on ``topic``."""
        name = f"{self._prefix}:{topic}:{group}"
        if len(name) > 200:  # AMQP names are at most 255 bytes; leave room for suffixes
            digest = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()
            name = f"{self._prefix}:{digest}"
        return name

    def dead_letter_queue(self, topic: str) -> str:
        """Return the name of ``topic``'s dead-letter queue."""
        return f"{self._prefix}.dlq:{topic}"

    # --- connection --------------------------------------------------------------------

    async def _connect(self) -> None:
        if self._exchange is not None:
            return
        async with self._lock:
            ensure_open(self._closed.is_set(), "RabbitMQTransport")
            if self._exchange is not None:
                return
            try:
                self._connection = await _aio_pika.connect_robust(
                    self._url, timeout=10, **self._connect_options
                )
                channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=self._mandatory
                )
                self._exchange = await channel.declare_exchange(
                    self._prefix, _aio_pika.ExchangeType.TOPIC, durable=True
                )
                self._dlx = await channel.declare_exchange(
                    f"{self._prefix}.dlx", _aio_pika.ExchangeType.TOPIC, durable=True
                )
                self._publish_channel = channel
            except _CONNECTION_ERRORS as exc:
                raise TransportUnavailableError(
                    f"RabbitMQ at {mask_url(self._url)} is unreachable: {type(exc).__name__}"
                ) from exc

    async def _declare(self, topic: str, group: str) -> Any:
        """Declare (idempotently) the group's quorum queue and the topic's DLQ."""
        await self._connect()
        channel = self._publish_channel
        dlq_name = self.dead_letter_queue(topic)
        if dlq_name not in self._declared:
            dlq = await channel.declare_queue(
                dlq_name, durable=True, arguments={"x-queue-type": "classic"}
            )
            await dlq.bind(self._dlx, routing_key=topic)
            self._declared.add(dlq_name)
        name = self.queue_name(topic, group)
        queue = await channel.declare_queue(name, durable=True, arguments=self._queue_args())
        if name not in self._declared:
            await queue.bind(self._exchange, routing_key=topic)
            self._declared.add(name)
        return queue

    def _queue_args(self) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": f"{self._prefix}.dlx",
            "x-delivery-limit": self._max_deliveries,
        }

    async def declare(self, topic: str, *, group: str) -> None:
        """Declare ``group``'s queue on ``topic`` now: messages published from now on reach it."""
        check_subscription(topic, group, self._closed.is_set(), "RabbitMQTransport")
        try:
            await self._declare(topic, group)
        except _CONNECTION_ERRORS as exc:
            raise TransportUnavailableError(
                f"RabbitMQ unreachable while declaring: {type(exc).__name__}"
            ) from exc

    # --- publish -----------------------------------------------------------------------

    def _amqp_message(self, message: Message, extra: dict[str, Any] | None = None) -> Any:
        headers: dict[str, Any] = dict(message.headers)
        if message.key is not None:
            headers[_KEY] = message.key
        headers.update(extra or {})
        return _aio_pika.Message(
            body=message.body,
            headers=headers,
            message_id=message.id,
            delivery_mode=_aio_pika.DeliveryMode.PERSISTENT,
            timestamp=time.time(),
        )

    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish ``messages`` (persistent, mandatory) and await every confirm.

        Raises:
            MessageTooLargeError: A body exceeds ``features.max_payload`` (nothing sent).
            PublishError: The broker returned (unroutable) or nacked a message.
            TransportUnavailableError: The broker could not be reached.
            TransportClosedError: The transport is closed.
        """
        ensure_open(self._closed.is_set(), "RabbitMQTransport")
        check_messages(messages, self.features.max_payload)
        if not messages:
            return
        await self._connect()
        await self._confirm(
            [
                self._exchange.publish(
                    self._amqp_message(m), routing_key=m.topic, mandatory=self._mandatory
                )
                for m in messages
            ]
        )

    async def _confirm(self, publishes: list[Any]) -> None:
        """Await pipelined publishes; translate failures at the boundary."""
        results = await asyncio.gather(*publishes, return_exceptions=True)
        for result in results:
            if isinstance(result, _pika_exc.DeliveryError):
                raise PublishError(
                    "RabbitMQ did not accept a message (unroutable: no queue is bound to its "
                    "topic, or nacked)"
                ) from result
            if isinstance(result, _CONNECTION_ERRORS):
                raise TransportUnavailableError(
                    f"RabbitMQ at {mask_url(self._url)} did not confirm: {type(result).__name__}"
                ) from result
            if isinstance(result, BaseException):
                raise PublishError(f"RabbitMQ publish failed: {type(result).__name__}") from result

    # --- subscribe ---------------------------------------------------------------------

    def subscribe(self, topic: str, *, group: str) -> AsyncIterator[Delivery]:
        """Iterate deliveries of ``topic`` for ``group`` (see the module docstring).

        Raises:
            ConfigurationError: ``topic`` or ``group`` is not a safe name.
            TransportClosedError: The transport is closed.
        """
        check_subscription(topic, group, self._closed.is_set(), "RabbitMQTransport")
        sub = _Subscription(topic=topic, group=group, queue_name=self.queue_name(topic, group))
        sizer = BatchSizer(self._batch)
        sub.iterator = PullIterator(
            lambda: self._fetch(sub, sizer), self._closed, lambda items: self._release(sub)
        )
        self._subs.add(sub)
        return sub.iterator

    async def _start(self, sub: _Subscription) -> None:
        await self._declare(sub.topic, sub.group)
        # A channel per subscription: its own prefetch, and closing it returns exactly
        # this subscription's unacknowledged messages.
        sub.channel = await self._connection.channel(publisher_confirms=False)
        await sub.channel.set_qos(prefetch_count=self._prefetch)
        sub.queue = await sub.channel.declare_queue(
            sub.queue_name, durable=True, arguments=self._queue_args()
        )
        sub.consumer_tag = await sub.queue.consume(sub.inbox.put, no_ack=False)

    async def _fetch(self, sub: _Subscription, sizer: BatchSizer) -> list[_RabbitDelivery]:
        if sub.channel is None:
            try:
                await self._start(sub)
            except _PUBLISH_FAILURES as exc:
                logger.warning("RabbitMQ subscription failed (%s); retrying", type(exc).__name__)
                sub.channel = None
                await asyncio.sleep(self._block)
                return []
        try:
            first = await asyncio.wait_for(sub.inbox.get(), self._block)
        except TimeoutError:
            return []
        incoming = [first]
        while len(incoming) < sizer.current and not sub.inbox.empty():
            incoming.append(sub.inbox.get_nowait())
        sizer.update(len(incoming))
        out = []
        for raw in incoming:
            delivery = _RabbitDelivery(self, sub, raw)
            if delivery._malformed is not None:
                # Dead-letter it with the reason: never drop it, never crash on it.
                await delivery.dead_letter_received(delivery._malformed)
                continue
            if await delivery.dead_letter_if_over(self._max_deliveries):
                continue
            sub.outstanding[id(delivery)] = delivery
            out.append(delivery)
        return out

    # --- settling ----------------------------------------------------------------------

    async def _quietly(self, operation: Any) -> None:
        try:
            await operation
        except _CONNECTION_ERRORS as exc:
            # The channel died: the broker already requeued the delivery.
            logger.debug("settle on a dead channel ignored (%s)", type(exc).__name__)

    async def _retry(self, delivery: _RabbitDelivery, delay: float) -> None:
        sub = delivery._sub
        # The copy is a new message (its x-delivery-count starts again): carry the count.
        extra = {_RETRIES: delivery.attempt}
        copy = self._amqp_message(delivery.message, extra)
        try:
            await self._connect()
            if delay <= 0:
                target = sub.queue_name
            else:
                target = await self._delay_queue(sub, delay)
            await self._confirm(
                [
                    self._publish_channel.default_exchange.publish(
                        copy, routing_key=target, mandatory=True
                    )
                ]
            )
        except _PUBLISH_FAILURES:
            # Not retried yet: give it back to the queue instead (counts a delivery).
            await self._quietly(delivery._incoming.reject(requeue=True))
            raise
        await self._quietly(delivery._incoming.ack())

    async def _delay_queue(self, sub: _Subscription, delay: float) -> str:
        ms = max(1, round(delay * 1000))
        name = f"{sub.queue_name}.delay.{ms}"
        if name not in self._declared:
            await self._publish_channel.declare_queue(
                name,
                durable=True,
                arguments={
                    "x-queue-type": "classic",
                    "x-message-ttl": ms,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": sub.queue_name,
                    # Unused retry queues disappear (after their messages moved on).
                    "x-expires": ms + 600_000,
                },
            )
            self._declared.add(name)
        return name

    async def _dead_letter(self, delivery: _RabbitDelivery, reason: str) -> None:
        sub = delivery._sub
        extra = {
            _REASON: reason,
            _GROUP: sub.group,
            _ATTEMPT: str(delivery.attempt),
            "sagaflow-failed-at": str(time.time()),
        }
        copy = self._amqp_message(delivery.message, extra)
        try:
            await self._connect()
            await self._confirm([self._dlx.publish(copy, routing_key=sub.topic, mandatory=True)])
        except _PUBLISH_FAILURES:
            await self._quietly(delivery._incoming.reject(requeue=True))
            raise
        await self._quietly(delivery._incoming.ack())

    async def _release(self, sub: _Subscription) -> None:
        """Stop ``sub``: reject (requeue) every unsettled delivery; close its channel."""
        self._subs.discard(sub)
        if sub.queue is not None and sub.consumer_tag is not None:
            with contextlib.suppress(Exception):
                await sub.queue.cancel(sub.consumer_tag)
        deliveries = list(sub.outstanding.values())
        sub.outstanding.clear()
        while not sub.inbox.empty():
            deliveries.append(_RabbitDelivery(self, sub, sub.inbox.get_nowait()))
        for delivery in deliveries:
            delivery._settled = True
            await self._quietly(delivery._incoming.reject(requeue=True))
        if sub.channel is not None:
            # Closing the channel returns anything still in flight to us.
            with contextlib.suppress(Exception):
                await sub.channel.close()
            sub.channel = None

    # --- dead letters ------------------------------------------------------------------

    async def dead_letters(
        self, topic: str, *, group: str | None = None, limit: int = 100
    ) -> list[BrokerDeadLetter]:
        """Return up to ``limit`` dead letters of ``topic`` (of ``group``), oldest first.

        Reads the DLQ without consuming it (messages are returned to the queue).
        """
        ensure_open(self._closed.is_set(), "RabbitMQTransport")
        validate_name("topic", topic)
        await self._connect()
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            queue = await channel.declare_queue(
                self.dead_letter_queue(topic), durable=True, arguments={"x-queue-type": "classic"}
            )
            held = []
            out: list[BrokerDeadLetter] = []
            while len(out) < limit:
                incoming = await queue.get(no_ack=False, fail=False)
                if incoming is None:
                    break
                held.append(incoming)
                letter = self._dead_letter_from(topic, incoming)
                if group is None or letter.group == group:
                    out.append(letter)
            return out
        finally:
            # Closing the channel puts every message back, in its original position.
            with contextlib.suppress(Exception):
                await channel.close()

    @staticmethod
    def _dead_letter_from(topic: str, incoming: Any) -> BrokerDeadLetter:
        raw = dict(incoming.headers or {})
        reason = _text(
            raw.get(_REASON) or f"broker: {_text(raw.get('x-first-death-reason', ''))}",
            lenient=True,
        )
        group = _text(raw.get(_GROUP, ""), lenient=True)
        if not group and raw.get("x-first-death-queue"):
            group = _text(raw["x-first-death-queue"]).rsplit(":", 1)[-1]
        attempt = _int(raw.get(_ATTEMPT) or raw.get("x-delivery-count", 0))
        headers = {
            k: _text(v, lenient=True)
            for k, v in raw.items()
            if k not in _BROKER_HEADERS and k not in _INTERNAL and k != "sagaflow-failed-at"
        }
        key = raw.get(_KEY)
        message = Message(
            id=incoming.message_id or "",
            topic=topic,
            body=incoming.body,
            headers=headers,
            key=_text(key, lenient=True) if key is not None else None,
        )
        return BrokerDeadLetter(
            topic=topic,
            group=group,
            message=message,
            reason=reason,
            attempt=attempt,
            ref=str(incoming.delivery_tag),
        )

    # --- close -------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop subscriptions, requeue unsettled deliveries, close the connection."""
        if self._closed.is_set():
            return
        self._closed.set()
        for sub in list(self._subs):
            if sub.iterator is not None:
                await sub.iterator.settle_in_flight(wait=self._block + 2)
            with contextlib.suppress(Exception):
                await self._release(sub)
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
