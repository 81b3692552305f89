"""Redis Streams transport: one stream per topic, one consumer group per sagaflow group.

Install with ``pip install "sagaflow[redis]"``. URLs: ``redis://[user:password@]host:port/db``
or ``rediss://`` for TLS (query parameters such as ``ssl_cert_reqs`` are passed to
redis-py).

Layout (``prefix`` defaults to ``sagaflow:``)::

    {prefix}{topic}                 the topic's stream (XADD on publish)
    {prefix}dlq:{topic}             dead letters of every group of the topic
    {prefix}delay:{topic}:{group}   ZSET of entry ids waiting for a delayed retry

How the contract is met:

* **Groups** are created idempotently with ``XGROUP CREATE ... $ MKSTREAM`` the first
  time a group subscribes, so a group sees what is published after it first
  subscribed. If the group vanishes (a Redis restarted without persistence), it is
  re-created from ``0`` so that whatever was published since the restart is read.
* **Own pending first.** A subscription first re-reads its consumer's pending entries
  (``XREADGROUP ... 0``), then new ones (``>``). Pass a stable ``consumer_name`` for
  this to matter across restarts; otherwise dead consumers' entries are recovered by
  ``XAUTOCLAIM`` once idle for ``claim_min_idle`` seconds (keep it well above the
  slowest handler, or a slow handler's message is delivered twice).
* **Attempt** is Redis's delivery counter (``XPENDING``) for reclaimed or re-read
  entries; ``1`` for entries read with ``>``.
* **Delayed retry** (``nack(delay)``): the entry stays pending (so it can never be
  lost) and its id goes into the group's delay ZSET, scored by the due time. Every
  subscription of the group polls the ZSET; the one whose ``ZREM`` wins re-claims the
  entry with ``XCLAIM`` (which bumps the delivery counter) and delivers it. A process
  dying in between leaves the entry pending, so ``XAUTOCLAIM`` still recovers it;
  ``XAUTOCLAIM`` skips entries whose retry is not yet due.
* **Dead letter**: ``XADD`` to the DLQ stream (with ``reason``, ``group``,
  ``attempt``, original id) and ``XACK`` in one script (atomic; a refused ``XADD``
  leaves the entry pending).
* **Bounded length**: with ``max_len``, publishes periodically trim the stream with
  ``XTRIM MINID`` below the oldest entry any group still needs (its oldest pending
  entry or the first one it has not read). Unacknowledged entries are never
  trimmed: a lagging group lets the stream grow past ``max_len``.
* **Acks** are written behind: ``ack()`` queues the id and the ``XACK`` is sent in
  the same round trip as the next read (or within ``ack_flush_interval``, and on
  close). A crash in that window redelivers the message (at-least-once).
* **Close** hands every delivered-but-unsettled entry to the group's delay ZSET as
  due now, so another consumer picks it up at once instead of after
  ``claim_min_idle``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

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
    KeyedDelivery,
    KeyedSubscription,
    PullIterator,
    WriteBehindAcks,
    broker_features,
    check_messages,
    check_subscription,
    ensure_open,
    logger,
    pause_to_reconnect,
    retry_publish,
)
from sagaflow.transports.base import Delivery, Message, validate_name

_redis = require("redis", "redis")
_redis_asyncio = require("redis.asyncio", "redis")
_exc = require("redis.exceptions", "redis")

__all__ = ["RedisStreamsTransport"]

# Errors that mean "the connection is gone; try again later".
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    _exc.ConnectionError,
    _exc.TimeoutError,
    ConnectionError,
    OSError,
)

_F_ID = b"id"
_F_BODY = b"body"
_F_HEADERS = b"headers"
_F_KEY = b"key"


# Dead letter = XADD to the DLQ, then XACK and ZREM, atomically. A script rather than
# MULTI: a MULTI whose XADD fails (say, the DLQ key holds another type) still runs
# the XACK, which would drop the entry; a script stops at the failed XADD.
# KEYS: dlq stream, stream, delay zset. ARGV: group, entry id, dead-letter fields.
_DEAD_LETTER_SCRIPT = """
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 3))
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[3], ARGV[2])
"""


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(fields: dict[bytes, bytes], topic: str, *, lenient: bool = False) -> Message:
    """Rebuild the message of a stream entry.

    Raises:
        ValueError: The entry is malformed (not written by this transport): no id or
            body, headers not a JSON object of strings, text that is not UTF-8. With
            ``lenient``, salvage what can be read instead (for dead letters).
    """

    def text(value: bytes) -> str:
        return value.decode(errors="backslashreplace") if lenient else value.decode()

    headers: Any = {}
    try:
        raw_headers = fields.get(_F_HEADERS)
        headers = json.loads(raw_headers) if raw_headers else {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise ValueError("headers are not a JSON object of strings")
        if _F_ID not in fields or _F_BODY not in fields:
            raise ValueError("the entry has no id or no body field")
    except ValueError:
        if not lenient:
            raise
        headers = headers if isinstance(headers, dict) else {}
        headers = {str(k): v for k, v in headers.items() if isinstance(v, str)}
    key = fields.get(_F_KEY)
    return Message(
        id=text(fields.get(_F_ID, b"")),
        topic=topic,
        body=fields.get(_F_BODY, b""),
        headers=headers,
        key=text(key) if key is not None else None,
    )


def _encode(message: Message) -> dict[bytes, bytes]:
    fields = {
        _F_ID: message.id.encode(),
        _F_BODY: message.body,
        _F_HEADERS: json.dumps(dict(message.headers), separators=(",", ":")).encode(),
    }
    if message.key is not None:
        fields[_F_KEY] = message.key.encode()
    return fields


def _id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(eq=False)
class _Subscription(KeyedSubscription[str, "_RedisDelivery"]):
    """State of one subscription: what it holds and what it must still acknowledge."""

    stream: str
    group: str
    consumer: str
    delay_key: str
    pending_cursor: str = "0"
    group_start: str = "$"
    group_ready: bool = False
    pending_done: bool = False
    next_claim: float = 0.0
    next_delay_poll: float = 0.0


class _RedisDelivery(KeyedDelivery["RedisStreamsTransport", _Subscription, str]):
    """One delivery of a stream entry to a consumer of a group.

    ``attempt`` is Redis's delivery counter for the entry in the group.
    """

    __slots__ = ("_raw",)

    transport_name = "RedisStreamsTransport"

    def __init__(
        self,
        transport: RedisStreamsTransport,
        sub: _Subscription,
        key: str,
        message: Message,
        attempt: int,
        raw: dict[bytes, bytes] | None = None,
    ) -> None:
        super().__init__(transport, sub, key, message, attempt)
        # The entry's fields when it is malformed: its dead letter keeps them verbatim.
        self._raw = raw

    async def _send_nack(self, delay: float) -> None:
        # The entry stays pending until the retry is due.
        await self._transport._schedule_retry(self._sub, [self._key], delay)

    async def _send_dead_letter(self, reason: str) -> None:
        # Copies the entry to the DLQ stream and acknowledges it, atomically.
        await self._transport._dead_letter(self._sub, self._key, self, reason)


class RedisStreamsTransport(WriteBehindAcks[_Subscription]):
    """Transport over Redis Streams consumer groups (see the module docstring).

    Args:
        url: ``redis://`` or ``rediss://`` URL; credentials and TLS options are passed
            to redis-py and never logged.
        prefix: Prefix of every key this transport uses.
        consumer_name: Stable consumer name base (e.g. a pod name) so a restarted
            process re-reads its own pending entries first; defaults to
            ``host-pid-random``. Subscriptions append ``-1``, ``-2``, ...
        batch_size: Entries read per ``XREADGROUP``/``XAUTOCLAIM``.
        block: Seconds one ``XREADGROUP`` blocks; also the latency of noticing due
            delayed retries and reclaimable entries.
        claim_min_idle: Seconds an entry must sit unacknowledged with a consumer before
            another consumer reclaims it (keep well above the slowest handler).
        claim_interval: Seconds between ``XAUTOCLAIM`` passes of one subscription.
        max_deliveries: Safety net: an entry delivered more often than this (for
            instance one that crashes its consumer every time) is dead-lettered by the
            transport instead of being delivered again.
        max_len: Trim acknowledged entries once a stream exceeds this many entries;
            ``None`` never trims.
        max_payload: Largest body accepted, in bytes.
        ack_flush_interval: Longest time an ``ack()`` waits before its ``XACK`` is sent.
        persistent: Declare ``features.persistent``; set it when the Redis server
            persists with AOF (``appendfsync always`` or ``everysec``).
        client_options: Extra keyword arguments for ``redis.asyncio.Redis.from_url``.
    """

    _ack_errors = (_exc.RedisError, OSError)
    _ack_command = "XACK"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "sagaflow:",
        consumer_name: str | None = None,
        batch_size: int = 200,
        block: float = 0.25,
        claim_min_idle: float = 60.0,
        claim_interval: float = 5.0,
        max_deliveries: int = 25,
        max_len: int | None = 100_000,
        max_payload: int = 1024 * 1024,
        ack_flush_interval: float = 0.02,
        persistent: bool = False,
        client_options: dict[str, Any] | None = None,
    ) -> None:
        if batch_size < 1 or max_deliveries < 1 or block <= 0 or claim_min_idle <= 0:
            raise ConfigurationError(
                "batch_size, max_deliveries, block and claim_min_idle must be positive"
            )
        self._url = url
        self._prefix = prefix
        self._consumer_base = consumer_name or (
            f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        )
        self._batch = batch_size
        self._block_ms = max(1, int(block * 1000))
        self._claim_min_idle_ms = int(claim_min_idle * 1000)
        self._claim_interval = claim_interval
        self._max_deliveries = max_deliveries
        self._max_len = max_len
        self._ack_flush_interval = ack_flush_interval
        self.features = broker_features(max_payload, persistent=persistent)
        options = {"decode_responses": False, "health_check_interval": 15}
        options.update(client_options or {})
        try:
            # Typed as Any: redis-py's stubs type replies as bytes | str | Awaitable.
            self._client: Any = _redis_asyncio.Redis.from_url(url, **options)
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis URL {mask_url(url)}: {exc}") from None
        self._closed = asyncio.Event()
        self._subs: set[_Subscription] = set()
        self._counter = itertools.count(1)
        self._publishes_since_trim: dict[str, int] = {}
        self._trim_tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"RedisStreamsTransport({mask_url(self._url)!r})"

    # --- keys --------------------------------------------------------------------------

    def stream_key(self, topic: str) -> str:
        """Return the Redis key of ``topic``'s stream."""
        return f"{self._prefix}{topic}"

    def dead_letter_key(self, topic: str) -> str:
        """Return the Redis key of ``topic``'s dead-letter stream."""
        return f"{self._prefix}dlq:{topic}"

    def _delay_key(self, topic: str, group: str) -> str:
        return f"{self._prefix}delay:{topic}:{group}"

    # --- publish -----------------------------------------------------------------------

    async def publish(self, messages: Sequence[Message]) -> None:
        """Append ``messages`` to their topics' streams in one pipeline.

        Raises:
            MessageTooLargeError: A body exceeds ``features.max_payload`` (nothing sent).
            TransportUnavailableError: Redis could not be reached after a few retries.
            PublishError: Redis refused an entry.
            TransportClosedError: The transport is closed.
        """
        ensure_open(self._closed.is_set(), "RedisStreamsTransport")
        check_messages(messages, self.features.max_payload)
        if not messages:
            return

        async def send() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                for message in messages:
                    pipe.xadd(self.stream_key(message.topic), _encode(message))
                replies: list[Any] = await pipe.execute(raise_on_error=False)
                return replies

        try:
            results = await retry_publish(send, retry_on=_CONNECTION_ERRORS)
        except _CONNECTION_ERRORS as exc:
            raise TransportUnavailableError(
                f"Redis at {mask_url(self._url)} is unreachable: {type(exc).__name__}"
            ) from exc
        for result in results:
            if isinstance(result, Exception):
                raise PublishError(f"Redis refused a publish: {result}") from result
        self._maybe_trim(messages)

    def _maybe_trim(self, messages: Sequence[Message]) -> None:
        if self._max_len is None:
            return
        # Trim about every tenth of max_len publishes per topic: cheap, and the stream
        # never exceeds max_len by more than that while every group keeps up.
        every = max(1, self._max_len // 10)
        for topic in {m.topic for m in messages}:
            count = self._publishes_since_trim.get(topic, 0) + sum(
                1 for m in messages if m.topic == topic
            )
            if count >= every:
                count = 0
                task = asyncio.create_task(self._trim(topic))
                self._trim_tasks.add(task)
                task.add_done_callback(self._trim_tasks.discard)
            self._publishes_since_trim[topic] = count

    async def _trim(self, topic: str) -> None:
        """Drop entries every group has acknowledged, when the stream is over max_len."""
        stream = self.stream_key(topic)
        try:
            if await self._client.xlen(stream) <= (self._max_len or 0):
                return
            floor = await self._safe_floor(stream)
            if floor is None:
                await self._client.xtrim(stream, maxlen=self._max_len, approximate=True)
            else:
                await self._client.xtrim(stream, minid=floor, approximate=False)
        except (_exc.RedisError, OSError) as exc:
            logger.warning("trimming %s failed: %s", stream, type(exc).__name__)

    async def _safe_floor(self, stream: str) -> str | None:
        """Return the smallest entry id some group still needs (``None``: no groups)."""
        groups = await self._client.xinfo_groups(stream)
        if not groups:
            return None
        floor: tuple[int, int] | None = None
        for info in groups:
            last = _id_tuple(_s(info["last-delivered-id"]))
            needed = (last[0], last[1] + 1)  # first entry this group has not read
            if int(info["pending"]):
                summary = await self._client.xpending(stream, _s(info["name"]))
                if summary["min"] is not None:
                    needed = min(needed, _id_tuple(_s(summary["min"])))
            floor = needed if floor is None else min(floor, needed)
        assert floor is not None
        return f"{floor[0]}-{floor[1]}"

    # --- subscribe ---------------------------------------------------------------------

    def subscribe(self, topic: str, *, group: str) -> AsyncIterator[Delivery]:
        """Iterate deliveries of ``topic`` for ``group`` (see the module docstring).

        Raises:
            ConfigurationError: ``topic`` or ``group`` is not a safe name.
            TransportClosedError: The transport is closed.
        """
        check_subscription(topic, group, self._closed.is_set(), "RedisStreamsTransport")
        sub = _Subscription(
            stream=self.stream_key(topic),
            group=group,
            consumer=f"{self._consumer_base}-{next(self._counter)}",
            delay_key=self._delay_key(topic, group),
            sizer=BatchSizer(self._batch),
        )
        sub.iterator = PullIterator(
            lambda: self._fetch(topic, sub),
            self._closed,
            lambda items: self._release(sub, items),
        )
        self._subs.add(sub)
        return sub.iterator

    async def _fetch(self, topic: str, sub: _Subscription) -> list[_RedisDelivery]:
        """Return the next batch of deliveries (maybe empty), reconnecting as needed."""
        while not self._closed.is_set():
            try:
                batch = await self._next_batch(sub)
                sub.failures = 0
            except _exc.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise TransportUnavailableError(f"Redis error: {exc}") from exc
                # The group vanished (Redis restarted without persistence): re-create it
                # from 0 so whatever was published since the restart is read.
                sub.group_start, sub.group_ready = "0", False
                continue
            except _CONNECTION_ERRORS as exc:
                sub.failures += 1
                sub.group_start, sub.group_ready = "0", False
                await pause_to_reconnect(
                    sub.failures,
                    self._closed,
                    f"Redis at {mask_url(self._url)} unavailable ({type(exc).__name__})",
                )
                return []
            out = []
            for entry_id, fields, attempt in batch:
                delivery = await self._deliverable(topic, sub, entry_id, fields, attempt)
                if delivery is not None:
                    out.append(delivery)
            # One round per call (maybe empty): an iterator being closed waits for at
            # most one blocking read.
            return out
        return []

    async def _next_batch(self, sub: _Subscription) -> list[tuple[str, dict[bytes, bytes], int]]:
        if not sub.group_ready:
            await self._ensure_group(sub, start=sub.group_start)
            sub.group_ready = True
        if not sub.pending_done:
            batch = await self._read_own_pending(sub)
            if batch:
                return batch
            sub.pending_done = True
        now = time.monotonic()
        if now >= sub.next_delay_poll:
            sub.next_delay_poll = now + self._block_ms / 1000
            batch = await self._claim_due_retries(sub)
            if batch:
                return batch
        if now >= sub.next_claim:
            sub.next_claim = now + self._claim_interval
            batch = await self._autoclaim(sub)
            if batch:
                return batch
        return await self._read_new(sub)

    async def _deliverable(
        self,
        topic: str,
        sub: _Subscription,
        entry_id: str,
        fields: dict[bytes, bytes],
        attempt: int,
    ) -> _RedisDelivery | None:
        try:
            message = _decode(fields, topic)
        except ValueError as exc:
            # Malformed: dead-letter it with the reason (never drop it, never crash).
            salvaged = _decode(fields, topic, lenient=True)
            malformed = _RedisDelivery(self, sub, entry_id, salvaged, attempt, raw=fields)
            await malformed.dead_letter_received(f"malformed entry: {exc}")
            return None
        delivery = _RedisDelivery(self, sub, entry_id, message, attempt)
        if await delivery.dead_letter_if_over(self._max_deliveries):
            return None
        sub.delivered[entry_id] = delivery
        return delivery

    async def _ensure_group(self, sub: _Subscription, *, start: str) -> None:
        try:
            await self._client.xgroup_create(sub.stream, sub.group, id=start, mkstream=True)
        except _exc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read_new(self, sub: _Subscription) -> list[tuple[str, dict[bytes, bytes], int]]:
        async with self._client.pipeline(transaction=False) as pipe:
            acks = sub.take_acks()
            if acks:
                pipe.xack(sub.stream, sub.group, *acks)
            pipe.xreadgroup(
                sub.group,
                sub.consumer,
                {sub.stream: ">"},
                count=sub.sizer.current,
                block=self._block_ms,
            )
            try:
                results = await pipe.execute()
            except BaseException:
                sub.ack_buffer.extend(acks)  # not known to be sent: keep for the next try
                raise
        entries = [(_s(i), f, 1) for i, f in self._entries(results[-1])]
        sub.sizer.update(len(entries))
        sub.outstanding.update(entry_id for entry_id, _, _ in entries)
        return entries

    @staticmethod
    def _entries(response: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
        if not response:
            return []
        if isinstance(response, dict):  # RESP3
            return [e for e in next(iter(response.values()))[0] if e[1] is not None]
        return [e for e in response[0][1] if e[1] is not None]

    async def _read_own_pending(
        self, sub: _Subscription
    ) -> list[tuple[str, dict[bytes, bytes], int]]:
        response = await self._client.xreadgroup(
            sub.group, sub.consumer, {sub.stream: sub.pending_cursor}, count=self._batch
        )
        entries = self._entries(response)
        if not entries:
            return []
        # Walk the pending list with a cursor: re-reading from "0" would return entries
        # whose (write-behind) acks are not sent yet.
        sub.pending_cursor = _s(entries[-1][0])
        found = {_s(i): f for i, f in entries}
        batch = await self._with_attempts(sub, list(found), found)
        return batch or await self._read_own_pending(sub)

    async def _autoclaim(self, sub: _Subscription) -> list[tuple[str, dict[bytes, bytes], int]]:
        # JUSTID first: it does not bump the delivery counter, so entries waiting for
        # a delayed retry (which we skip) keep an honest attempt count.
        response = await self._client.xautoclaim(
            sub.stream,
            sub.group,
            sub.consumer,
            self._claim_min_idle_ms,
            start_id="0-0",
            count=self._batch,
            justid=True,
        )
        # redis-py returns just the ids for JUSTID (the raw reply nests them).
        nested = len(response) >= 2 and isinstance(response[1], list | tuple)
        ids = [_s(i) for i in (response[1] if nested else response)]
        if not ids:
            return []
        scores = await self._client.zmscore(sub.delay_key, ids)
        ready = [i for i, score in zip(ids, scores, strict=True) if score is None]
        if not ready:
            return []
        # They are ours now (idle 0): XCLAIM again to count the delivery and read them.
        claimed = await self._client.xclaim(sub.stream, sub.group, sub.consumer, 0, ready)
        found = {_s(i): f for i, f in claimed if f is not None}
        return await self._with_attempts(sub, list(found), found, skip_delayed=False)

    async def _claim_due_retries(
        self, sub: _Subscription
    ) -> list[tuple[str, dict[bytes, bytes], int]]:
        now_ms = int(time.time() * 1000)
        due = await self._client.zrangebyscore(sub.delay_key, "-inf", now_ms, 0, self._batch)
        if not due:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for member in due:
                pipe.zrem(sub.delay_key, member)
            removed = await pipe.execute()
        # Whoever removes an id from the ZSET owns its retry; others skip it.
        won = [_s(m) for m, r in zip(due, removed, strict=True) if r]
        if not won:
            return []
        claimed = await self._client.xclaim(sub.stream, sub.group, sub.consumer, 0, won)
        found = {_s(i): f for i, f in claimed if f is not None}
        gone = [i for i in won if i not in found]
        if gone:  # trimmed or deleted by hand: nothing left to deliver
            await self._client.xack(sub.stream, sub.group, *gone)
        return await self._with_attempts(sub, list(found), found, skip_delayed=False)

    async def _with_attempts(
        self,
        sub: _Subscription,
        ids: list[str],
        found: dict[str, dict[bytes, bytes]],
        *,
        skip_delayed: bool = True,
    ) -> list[tuple[str, dict[bytes, bytes], int]]:
        """Attach Redis's delivery counters; drop entries whose delayed retry is not due."""
        if not ids:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for entry_id in ids:
                pipe.xpending_range(sub.stream, sub.group, entry_id, entry_id, 1)
            if skip_delayed:
                pipe.zmscore(sub.delay_key, ids)
            results = await pipe.execute()
        scores = results[-1] if skip_delayed else [None] * len(ids)
        out = []
        for entry_id, pending, score in zip(ids, results[: len(ids)], scores, strict=True):
            if score is not None:
                continue  # waiting for its delayed retry; the ZSET poller delivers it
            attempt = int(pending[0]["times_delivered"]) if pending else 1
            sub.outstanding.add(entry_id)
            out.append((entry_id, found[entry_id], attempt))
        return out

    # --- settling ----------------------------------------------------------------------

    async def _send_acks(self, sub: _Subscription, keys: list[str]) -> None:
        await self._client.xack(sub.stream, sub.group, *keys)

    async def _hand_back(self, sub: _Subscription, keys: list[str]) -> None:
        # Due now in the delay ZSET: another consumer picks the entries up at once
        # instead of after claim_min_idle.
        await self._schedule_retry(sub, keys, 0.0)

    async def _schedule_retry(self, sub: _Subscription, ids: list[str], delay: float) -> None:
        due_ms = int((time.time() + max(delay, 0.0)) * 1000)
        try:
            await self._client.zadd(sub.delay_key, dict.fromkeys(ids, due_ms))
        except _CONNECTION_ERRORS as exc:
            # Still pending in Redis: XAUTOCLAIM redelivers it after claim_min_idle.
            raise TransportUnavailableError(
                f"Redis unreachable while scheduling a retry: {type(exc).__name__}"
            ) from exc

    async def _dead_letter(
        self, sub: _Subscription, entry_id: str, delivery: _RedisDelivery, reason: str
    ) -> None:
        message = delivery.message
        fields = dict(delivery._raw) if delivery._raw is not None else _encode(message)
        fields.update(
            {
                b"reason": reason.encode(),
                b"group": sub.group.encode(),
                b"topic": message.topic.encode(),
                b"attempt": str(delivery.attempt).encode(),
                b"entry_id": entry_id.encode(),
                b"failed_at": str(time.time()).encode(),
            }
        )
        flat = [part for pair in fields.items() for part in pair]
        keys = [self.dead_letter_key(message.topic), sub.stream, sub.delay_key]
        try:
            await self._client.eval(_DEAD_LETTER_SCRIPT, 3, *keys, sub.group, entry_id, *flat)
        except _CONNECTION_ERRORS as exc:
            raise TransportUnavailableError(
                f"Redis unreachable while dead-lettering: {type(exc).__name__}"
            ) from exc
        except _exc.RedisError as exc:
            # The script stopped at XADD: the entry is still pending and comes back.
            raise PublishError(f"Redis refused a dead letter: {type(exc).__name__}") from exc

    # --- dead letters ------------------------------------------------------------------

    async def dead_letters(
        self, topic: str, *, group: str | None = None, limit: int = 100
    ) -> list[BrokerDeadLetter]:
        """Return up to ``limit`` dead letters of ``topic`` (of ``group``), oldest first."""
        ensure_open(self._closed.is_set(), "RedisStreamsTransport")
        validate_name("topic", topic)
        out: list[BrokerDeadLetter] = []
        start = "-"
        while len(out) < limit:
            entries = await self._client.xrange(self.dead_letter_key(topic), start, "+", 100)
            for entry_id, fields in entries:
                if group is None or _s(fields.get(b"group", b"")) == group:
                    out.append(
                        BrokerDeadLetter(
                            topic=topic,
                            group=_s(fields.get(b"group", b"")),
                            message=_decode(fields, topic, lenient=True),
                            reason=_s(fields.get(b"reason", b"")),
                            attempt=int(fields.get(b"attempt", b"0")),
                            ref=_s(entry_id),
                        )
                    )
            if len(entries) < 100:
                break
            start = "(" + _s(entries[-1][0])
        return out[:limit]

    async def declare(self, topic: str, *, group: str) -> None:
        """Create ``group`` on ``topic`` now (from the next published entry on).

        ``subscribe`` does this lazily on first iteration; call it when messages
        published before the first iteration must reach the group.
        """
        check_subscription(topic, group, self._closed.is_set(), "RedisStreamsTransport")
        stream = self.stream_key(topic)
        try:
            await self._client.xgroup_create(stream, group, id="$", mkstream=True)
        except _exc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise TransportUnavailableError(f"Redis refused XGROUP CREATE: {exc}") from exc
        except _CONNECTION_ERRORS as exc:
            raise TransportUnavailableError(
                f"Redis at {mask_url(self._url)} is unreachable: {type(exc).__name__}"
            ) from exc

    # --- close -------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop subscriptions, flush acks, hand unsettled entries back, close the client."""
        if self._closed.is_set():
            return
        self._closed.set()
        for sub in list(self._subs):
            await self._drain(sub)
        for task in list(self._trim_tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await self._client.aclose()

    async def _drain(self, sub: _Subscription) -> None:
        if sub.iterator is not None:
            # Entries of a read the server already served are in sub.outstanding once
            # the read finishes; wait for it so they are handed back below.
            await sub.iterator.settle_in_flight(wait=self._block_ms / 1000 + 2)
        try:
            await self._release(sub)
        except (TransportUnavailableError, _exc.RedisError, OSError):
            # Still pending in Redis: XAUTOCLAIM recovers them after claim_min_idle.
            logger.warning("could not hand back unsettled entries of %s", sub.stream)
