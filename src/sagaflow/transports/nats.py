r"""NATS JetStream transport: a stream per topic, a durable pull consumer per group.

Install with ``pip install "sagaflow[nats]"``. URLs: ``nats://[user:password@]host:4222``
or ``tls://host:4222`` (pass an ``ssl.SSLContext`` through ``connect_options={"tls":
ctx}`` for client certificates); several servers may be given comma-separated.

Layout::

    stream  {stream_prefix}{topic}_{hash}   subject {subject_prefix}.{topic}
    stream  {stream_prefix}DLQ              subjects {subject_prefix}_dlq.>
    durable consumer {group}_{hash} on the topic's stream (one per sagaflow group)

* Streams use **limits retention** on file storage, created idempotently (an
  existing stream's configuration is left as the operator set it). Bound them with
  ``max_age`` and/or ``max_bytes``; ``max_bytes`` uses ``DiscardPolicy.NEW``, so a
  full stream refuses publishes (`PublishError`) instead of silently dropping
  messages a group has not read. Interest retention (drop a message once every
  group acked it) is available with ``retention="interest"``, but on
  nats-server 2.9 it lost acknowledged publishes made while the server was
  restarting (consumers not yet recovered means "no interest"), so it is not the
  default.
* Consumers are **durable pull consumers** with ``AckPolicy.EXPLICIT`` (set
  explicitly), ``DeliverPolicy.NEW`` (a group sees what is published after it first
  subscribed), ``AckWait = ack_wait`` (a dead consumer's messages come back after
  that long: keep it above the slowest handler) and ``MaxDeliver = max_deliveries + 1``
  (never unlimited). The extra delivery lets the transport itself dead-letter a
  message that reached ``max_deliveries`` (e.g. one that kills its consumer), since
  the server would otherwise just stop delivering it, silently.
* ``ack`` after the handler; ``nack(delay)`` is ``NAK`` with the delay (done by
  the server); ``dead_letter`` publishes to the DLQ stream with ``Sagaflow-Reason``,
  waits for the server's ack, then ``TERM``\\ s the original.
* **Attempt** is the server's ``num_delivered``.
* Publishes carry ``Nats-Msg-Id`` = message id, so a retried publish is deduplicated
  inside the stream's duplicate window (two minutes by default); the inbox still
  dedupes redeliveries. A batch is pipelined (async publishes awaited together).
* Reconnection is nats-py's (forever, with its wait); subscriptions re-create their
  pull subscription with backoff when the server lost it.
* **Close** NAKs delivered-but-unsettled messages so they are redelivered at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sagaflow._optional import require
from sagaflow._urls import mask_url
from sagaflow.errors import (
    ConfigurationError,
    PublishError,
    TransportUnavailableError,
)
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
    pause_to_reconnect,
    retry_publish,
)
from sagaflow.transports.base import Delivery, Message, validate_name

_nats = require("nats", "nats")
_errors = require("nats.errors", "nats")
_js_errors = require("nats.js.errors", "nats")
_api = require("nats.js.api", "nats")

__all__ = ["NatsJetStreamTransport"]

_MSG_ID = "Nats-Msg-Id"
_KEY = "Sagaflow-Key"
_REASON = "Sagaflow-Reason"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# Connection-level failures worth retrying after a pause.
_RETRYABLE: tuple[type[BaseException], ...] = (
    _errors.ConnectionClosedError,
    _errors.TimeoutError,
    _errors.NoServersError,
    _errors.OutboundBufferLimitError,
    _errors.ConnectionReconnectingError,
    _js_errors.NoStreamResponseError,
    _js_errors.ServiceUnavailableError,
    asyncio.TimeoutError,
    OSError,
)


# JetStream's error for a write its stream's store refused: with max_bytes (and
# DiscardPolicy.NEW) "maximum bytes exceeded". Sent as a 503 like a passing outage,
# but it is a refusal.
_STREAM_STORE_FAILED = 10077


def _settle_refused_publishes(js: Any) -> None:
    """Make a refused pipelined publish fail at once instead of timing out.

    nats-py (up to 2.16 at least) handles the reply to ``publish_async`` with
    ``APIError.from_error``, which raises the server's error instead of returning
    it, so the publish's future is never settled and the caller waits for its
    timeout. Wrapping the reply handler (before the first ``publish_async``
    subscribes it) settles that future with the error. A nats-py without these
    attributes is left as it is.
    """
    handle = getattr(js, "_handle_async_reply", None)
    if handle is None or not hasattr(js, "_publish_async_futures"):
        return

    async def handle_async_reply(msg: Any) -> None:
        try:
            await handle(msg)
        except _js_errors.APIError as error:
            # The reply subject ends with the publish's token (no dots in it).
            token = msg.subject.rsplit(".", 1)[-1]
            future = (getattr(js, "_publish_async_futures", None) or {}).get(token)
            if future is not None and not future.done():
                future.set_exception(error)

    js._handle_async_reply = handle_async_reply


def _token(name: str) -> str:
    """A stream/consumer-safe, collision-free name for a topic or group."""
    digest = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', name)}_{digest}"


@dataclass(eq=False)
class _Subscription:
    topic: str
    group: str
    stream: str
    subject: str
    durable: str
    psub: Any = None
    sizer: BatchSizer = field(default_factory=lambda: BatchSizer(1))
    last_pull: float = 0.0
    outstanding: dict[int, Any] = field(default_factory=dict)
    failures: int = 0
    iterator: PullIterator[_NatsDelivery] | None = None


class _NatsDelivery(BrokerDelivery["NatsJetStreamTransport", _Subscription]):
    """One JetStream delivery; ``attempt`` is the server's delivery count."""

    __slots__ = ("_msg",)

    transport_name = "NatsJetStreamTransport"

    def __init__(
        self, transport: NatsJetStreamTransport, sub: _Subscription, msg: Any, message: Message
    ) -> None:
        super().__init__(transport, sub, message, int(msg.metadata.num_delivered))
        self._msg = msg

    def _forget(self) -> None:
        self._sub.outstanding.pop(id(self), None)

    async def _send_ack(self) -> None:
        await self._transport._guard(self._msg.ack())

    async def _send_nack(self, delay: float) -> None:
        # NAK with a delay; the server redelivers the message once it has passed.
        await self._transport._guard(self._msg.nak(delay=delay if delay > 0 else None))

    async def _send_dead_letter(self, reason: str) -> None:
        # Publishes to the DLQ stream, then TERMs the original.
        await self._transport._dead_letter(self, reason)


class NatsJetStreamTransport:
    """Transport over NATS JetStream (see the module docstring).

    Args:
        url: ``nats://`` or ``tls://`` URL (comma-separated for a cluster).
        stream_prefix: Prefix of stream names.
        subject_prefix: First subject token of every topic.
        batch_size: Messages requested per pull.
        block: Seconds one pull waits for messages.
        ack_wait: Seconds before the server redelivers an unacknowledged message.
        max_deliveries: Deliveries before the transport dead-letters a message.
        max_ack_pending: Unacknowledged messages the server hands one group at a time.
        max_payload: Largest body accepted, in bytes (the server's limit, 1 MiB by
            default, also counts headers).
        retention: ``"limits"`` (keep until ``max_age``/``max_bytes``) or
            ``"interest"`` (drop once every group acked); see the module docstring.
        max_age: Seconds a topic's stream keeps a message (``None``: forever).
        max_bytes: Size cap of a topic's stream; when full, publishes are refused.
        connect_options: Extra keyword arguments for ``nats.connect`` (``tls``,
            ``user_credentials``, ``nkeys_seed``, ...).
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        stream_prefix: str = "SAGAFLOW_",
        subject_prefix: str = "sagaflow",
        batch_size: int = 200,
        block: float = 1.0,
        ack_wait: float = 60.0,
        max_deliveries: int = 25,
        max_ack_pending: int = 10_000,
        max_payload: int = 1024 * 1024 - 64 * 1024,
        retention: Literal["limits", "interest"] = "limits",
        max_age: float | None = None,
        max_bytes: int | None = None,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        if batch_size < 1 or block <= 0 or ack_wait <= 0 or max_deliveries < 1:
            raise ConfigurationError(
                "batch_size, block, ack_wait and max_deliveries must be positive"
            )
        validate_name("subject prefix", subject_prefix)
        self._url = url
        self._stream_prefix = _UNSAFE.sub("_", stream_prefix)
        self._subject_prefix = subject_prefix
        self._batch = batch_size
        self._block = block
        self._ack_wait = ack_wait
        self._max_deliveries = max_deliveries
        self._max_ack_pending = max_ack_pending
        self._connect_options = connect_options or {}
        if retention not in ("limits", "interest"):
            raise ConfigurationError(f"retention must be 'limits' or 'interest', not {retention!r}")
        self._retention = retention
        self._max_age = max_age
        self._max_bytes = max_bytes
        self.features = broker_features(max_payload)
        self._nc: Any = None
        self._js: Any = None
        self._lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._streams: set[str] = set()
        self._subs: set[_Subscription] = set()

    def __repr__(self) -> str:
        return f"NatsJetStreamTransport({mask_url(self._url)!r})"

    # --- naming ------------------------------------------------------------------------

    def subject(self, topic: str) -> str:
        """Return the subject messages of ``topic`` are published on."""
        return f"{self._subject_prefix}.{topic}"

    def stream_name(self, topic: str) -> str:
        """Return the name of ``topic``'s stream."""
        return f"{self._stream_prefix}{_token(topic)}"

    @property
    def dead_letter_stream(self) -> str:
        """Name of the stream holding dead letters of every topic."""
        return f"{self._stream_prefix}DLQ"

    def _dlq_subject(self, topic: str) -> str:
        return f"{self._subject_prefix}_dlq.{topic}"

    # --- connection --------------------------------------------------------------------

    async def _connect(self) -> Any:
        if self._js is not None:
            return self._js
        async with self._lock:
            ensure_open(self._closed.is_set(), "NatsJetStreamTransport")
            if self._js is None:
                options = {
                    "servers": [s.strip() for s in self._url.split(",")],
                    "allow_reconnect": True,
                    # Bounded while connecting the first time (nats-py would otherwise
                    # loop forever on an unreachable server); unbounded once connected.
                    "max_reconnect_attempts": 2,
                    "reconnect_time_wait": 0.5,
                    "connect_timeout": 2,
                    "error_cb": self._on_error,
                }
                options.update(self._connect_options)
                try:
                    self._nc = await _nats.connect(**options)
                except Exception as exc:
                    raise TransportUnavailableError(
                        f"NATS at {mask_url(self._url)} is unreachable: {type(exc).__name__}"
                    ) from exc
                self._nc.options["max_reconnect_attempts"] = self._connect_options.get(
                    "max_reconnect_attempts", -1
                )
                self._js = self._nc.jetstream()
                _settle_refused_publishes(self._js)
        return self._js

    async def _on_error(self, exc: Exception) -> None:
        logger.debug("NATS connection error: %s", type(exc).__name__)

    async def _ensure_stream(self, topic: str) -> None:
        name = self.stream_name(topic)
        if name in self._streams:
            return
        js = await self._connect()
        await self._add_stream(
            js,
            _api.StreamConfig(
                name=name,
                subjects=[self.subject(topic)],
                retention=(
                    _api.RetentionPolicy.INTEREST
                    if self._retention == "interest"
                    else _api.RetentionPolicy.LIMITS
                ),
                storage=_api.StorageType.FILE,
                max_age=self._max_age,
                max_bytes=self._max_bytes,
                discard=_api.DiscardPolicy.NEW,
            ),
        )
        self._streams.add(name)

    async def _ensure_dlq(self) -> None:
        if self.dead_letter_stream in self._streams:
            return
        js = await self._connect()
        await self._add_stream(
            js,
            _api.StreamConfig(
                name=self.dead_letter_stream,
                subjects=[f"{self._subject_prefix}_dlq.>"],
                retention=_api.RetentionPolicy.LIMITS,
                storage=_api.StorageType.FILE,
            ),
        )
        self._streams.add(self.dead_letter_stream)

    @staticmethod
    async def _add_stream(js: Any, config: Any) -> None:
        try:
            await js.add_stream(config)
        except _js_errors.BadRequestError as exc:
            # 10058: the stream exists with another configuration; respect the operator's.
            if getattr(exc, "err_code", None) != 10058:
                raise

    # --- publish -----------------------------------------------------------------------

    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish ``messages`` pipelined and wait for every ``PubAck``.

        Raises:
            MessageTooLargeError: A body exceeds ``features.max_payload`` (nothing sent).
            TransportUnavailableError: NATS could not be reached or did not answer.
            PublishError: JetStream refused a message.
            TransportClosedError: The transport is closed.
        """
        ensure_open(self._closed.is_set(), "NatsJetStreamTransport")
        check_messages(messages, self.features.max_payload)
        if not messages:
            return

        async def send() -> None:
            for topic in {m.topic for m in messages}:
                await self._ensure_stream(topic)
            js = await self._connect()
            futures = []
            try:
                for m in messages:
                    headers = {**m.headers, _MSG_ID: m.id}
                    if m.key is not None:
                        headers[_KEY] = m.key
                    futures.append(
                        await js.publish_async(self.subject(m.topic), m.body, headers=headers)
                    )
                await asyncio.wait_for(asyncio.gather(*futures), timeout=10.0)
            except _js_errors.NoStreamResponseError:
                self._streams.clear()  # server lost its streams (restart without storage)
                raise
            except _js_errors.ServiceUnavailableError as exc:
                if exc.err_code == _STREAM_STORE_FAILED:  # full: retrying cannot help
                    raise PublishError(
                        f"JetStream refused a publish: {exc.description or 'stream full'}"
                    ) from exc
                raise
            finally:
                for future in futures:
                    if not future.done():
                        future.cancel()

        try:
            await retry_publish(send, retry_on=_RETRYABLE)
        except _RETRYABLE as exc:
            raise TransportUnavailableError(
                f"NATS at {mask_url(self._url)} did not confirm: {type(exc).__name__}"
            ) from exc
        except _js_errors.APIError as exc:
            raise PublishError(f"JetStream refused a publish: {exc}") from exc

    # --- subscribe ---------------------------------------------------------------------

    def subscribe(self, topic: str, *, group: str) -> AsyncIterator[Delivery]:
        """Iterate deliveries of ``topic`` for ``group`` (see the module docstring).

        Raises:
            ConfigurationError: ``topic`` or ``group`` is not a safe name.
            TransportClosedError: The transport is closed.
        """
        check_subscription(topic, group, self._closed.is_set(), "NatsJetStreamTransport")
        sub = self._new_subscription(topic, group)
        sub.iterator = PullIterator(
            lambda: self._fetch(sub), self._closed, lambda items: self._release(sub, items)
        )
        self._subs.add(sub)
        return sub.iterator

    def _new_subscription(self, topic: str, group: str) -> _Subscription:
        return _Subscription(
            topic=topic,
            group=group,
            stream=self.stream_name(topic),
            subject=self.subject(topic),
            durable=_token(group),
            sizer=BatchSizer(self._batch),
        )

    def _consumer_config(self, sub: _Subscription) -> Any:
        return _api.ConsumerConfig(
            durable_name=sub.durable,
            ack_policy=_api.AckPolicy.EXPLICIT,
            deliver_policy=_api.DeliverPolicy.NEW,
            ack_wait=self._ack_wait,
            max_deliver=self._max_deliveries + 1,
            max_ack_pending=self._max_ack_pending,
            filter_subject=sub.subject,
        )

    async def _bind(self, sub: _Subscription) -> None:
        await self._ensure_stream(sub.topic)
        js = await self._connect()
        config = self._consumer_config(sub)
        sub.psub = await js.pull_subscribe(
            sub.subject, durable=sub.durable, stream=sub.stream, config=config
        )

    async def _fetch(self, sub: _Subscription) -> list[_NatsDelivery]:
        while not self._closed.is_set():
            try:
                if sub.psub is None:
                    await self._bind(sub)
                sub.last_pull = time.monotonic()
                msgs = await sub.psub.fetch(sub.sizer.current, timeout=self._block)
                sub.sizer.update(len(msgs))
                sub.failures = 0
            except (_errors.TimeoutError, TimeoutError):
                return []  # nothing to read within `block`
            except TransportUnavailableError as exc:
                await self._backoff(sub, exc)
                return []
            except (_errors.Error, _js_errors.Error, OSError) as exc:
                # Rebind: the consumer or stream may be gone after a server restart.
                with contextlib.suppress(Exception):
                    await sub.psub.unsubscribe()
                sub.psub = None
                self._streams.discard(sub.stream)
                await self._backoff(sub, exc)
                return []
            # One round per call (maybe empty): an iterator being closed waits for at
            # most one pull.
            return await self._deliverable(sub, msgs)
        return []

    async def _backoff(self, sub: _Subscription, exc: BaseException) -> None:
        sub.failures += 1
        await pause_to_reconnect(
            sub.failures, self._closed, f"NATS at {mask_url(self._url)}: {type(exc).__name__}"
        )

    async def _deliverable(self, sub: _Subscription, msgs: list[Any]) -> list[_NatsDelivery]:
        out = []
        for msg in msgs:
            headers = dict(msg.headers or {})
            message = Message(
                id=headers.pop(_MSG_ID, ""),
                topic=sub.topic,
                body=msg.data,
                headers=headers,
                key=headers.pop(_KEY, None),
            )
            delivery = _NatsDelivery(self, sub, msg, message)
            # The server would stop delivering it silently; dead-letter it instead.
            if await delivery.dead_letter_if_over(self._max_deliveries):
                continue
            sub.outstanding[id(delivery)] = delivery
            out.append(delivery)
        return out

    # --- settling ----------------------------------------------------------------------

    async def _guard(self, operation: Any) -> None:
        try:
            await operation
        except (_errors.Error, OSError) as exc:
            # The server redelivers after ack_wait; at-least-once holds.
            raise TransportUnavailableError(
                f"NATS unreachable while settling: {type(exc).__name__}"
            ) from exc

    async def _dead_letter(self, delivery: _NatsDelivery, reason: str) -> None:
        message, sub = delivery.message, delivery._sub
        headers = {
            **message.headers,
            _MSG_ID: f"{message.id}:{sub.group}:dlq",
            _REASON: reason,
            "Sagaflow-Group": sub.group,
            "Sagaflow-Topic": message.topic,
            "Sagaflow-Attempt": str(delivery.attempt),
            "Sagaflow-Message-Id": message.id,
            "Sagaflow-Failed-At": str(time.time()),
        }
        if message.key is not None:
            headers[_KEY] = message.key

        async def send() -> None:
            await self._ensure_dlq()
            js = await self._connect()
            try:
                await js.publish(self._dlq_subject(message.topic), message.body, headers=headers)
            except _js_errors.NoStreamResponseError:
                # The server lost the DLQ stream (restart without storage): re-create it.
                self._streams.discard(self.dead_letter_stream)
                raise

        try:
            await retry_publish(send, retry_on=_RETRYABLE)
            await delivery._msg.term()
        except (_errors.Error, _js_errors.Error, OSError) as exc:
            # Not terminated: the server redelivers it and the handler may dead-letter again.
            raise TransportUnavailableError(
                f"NATS unreachable while dead-lettering: {type(exc).__name__}"
            ) from exc

    async def _release(self, sub: _Subscription, _items: object = None) -> None:
        """Stop ``sub`` and NAK every delivery it handed out and nobody settled.

        Settling those deliveries later is a no-op.
        """
        self._subs.discard(sub)
        if sub.psub is not None:
            # A pull request of ours may still be open on the server (nats-py leaves a
            # lingering one for up to `block` seconds). Messages it delivers, NAKed
            # ones included, would land in an inbox nobody reads and only come back
            # after ack_wait, with confused delivery counts. Let it expire, hand back
            # what it brought, then unsubscribe.
            await asyncio.sleep(max(0.0, sub.last_pull + self._block + 0.05 - time.monotonic()))
            for msg in self._drain_pending(sub.psub):
                delivery = _NatsDelivery(self, sub, msg, Message(id="", topic=sub.topic, body=b""))
                sub.outstanding[id(delivery)] = delivery
            with contextlib.suppress(Exception):
                await sub.psub.unsubscribe()
            sub.psub = None
        deliveries = list(sub.outstanding.values())
        sub.outstanding.clear()
        for delivery in deliveries:
            delivery._settled = True
        for delivery in deliveries:
            with contextlib.suppress(Exception):
                # A synchronous NAK (request/reply): the server has processed it
                # before close() returns, so a consumer that starts right after
                # sees the message at once.
                await self._nc.request(delivery._msg.reply, b"-NAK", timeout=2)

    @staticmethod
    def _drain_pending(psub: Any) -> list[Any]:
        """Take messages nats-py queued for the pull subscription but nobody fetched."""
        queue = getattr(getattr(psub, "_sub", None), "_pending_queue", None)
        out = []
        while queue is not None and not queue.empty():
            msg = queue.get_nowait()
            if msg.reply and msg.reply.startswith("$JS.ACK."):  # skip status messages
                out.append(msg)
        return out

    async def _drain(self, sub: _Subscription) -> None:
        if sub.iterator is not None:
            await sub.iterator.settle_in_flight(wait=self._block + 2)
        await self._release(sub)

    # --- dead letters ------------------------------------------------------------------

    async def dead_letters(
        self, topic: str, *, group: str | None = None, limit: int = 100
    ) -> list[BrokerDeadLetter]:
        """Return up to ``limit`` dead letters of ``topic`` (of ``group``), oldest first."""
        ensure_open(self._closed.is_set(), "NatsJetStreamTransport")
        validate_name("topic", topic)
        await self._ensure_dlq()
        js = await self._connect()
        out: list[BrokerDeadLetter] = []
        info = await js.stream_info(self.dead_letter_stream)
        seq = info.state.first_seq
        subject = self._dlq_subject(topic)
        while seq <= info.state.last_seq and len(out) < limit:
            try:
                raw = await js.get_msg(self.dead_letter_stream, seq=seq, next=True, subject=subject)
            except _js_errors.NotFoundError:
                break
            seq = raw.seq + 1
            letter = self._dead_letter_from(topic, raw)
            if group is None or letter.group == group:
                out.append(letter)
        return out

    @staticmethod
    def _dead_letter_from(topic: str, raw: Any) -> BrokerDeadLetter:
        headers = dict(raw.headers or {})
        reason = headers.pop(_REASON, "")
        group = headers.pop("Sagaflow-Group", "")
        attempt = int(headers.pop("Sagaflow-Attempt", "0"))
        msg_id = headers.pop("Sagaflow-Message-Id", "")
        for extra in (_MSG_ID, "Sagaflow-Topic", "Sagaflow-Failed-At"):
            headers.pop(extra, None)
        key = headers.pop(_KEY, None)
        message = Message(id=msg_id, topic=topic, body=raw.data or b"", headers=headers, key=key)
        return BrokerDeadLetter(
            topic=topic,
            group=group,
            message=message,
            reason=reason,
            attempt=attempt,
            ref=str(raw.seq),
        )

    async def declare(self, topic: str, *, group: str) -> None:
        """Create ``topic``'s stream and ``group``'s durable consumer now."""
        check_subscription(topic, group, self._closed.is_set(), "NatsJetStreamTransport")
        sub = self._new_subscription(topic, group)
        for attempt in (1, 2):
            try:
                await self._ensure_stream(topic)
                js = await self._connect()
                await js.add_consumer(sub.stream, self._consumer_config(sub))
                return
            except _js_errors.NotFoundError as exc:
                # The server lost the stream (restart without storage): re-create it once.
                self._streams.discard(sub.stream)
                if attempt == 2:
                    raise TransportUnavailableError(
                        f"NATS could not declare {topic}/{group}: {type(exc).__name__}"
                    ) from exc
            except (_errors.Error, _js_errors.Error, OSError) as exc:
                raise TransportUnavailableError(
                    f"NATS could not declare {topic}/{group}: {type(exc).__name__}"
                ) from exc

    # --- close -------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop subscriptions, NAK unsettled deliveries, close the connection."""
        if self._closed.is_set():
            return
        self._closed.set()
        await asyncio.gather(
            *(self._drain(sub) for sub in list(self._subs)), return_exceptions=True
        )
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await self._nc.close()
