"""PostgreSQL transport: a table queue claimed with ``FOR UPDATE SKIP LOCKED`` and leases.

Install with ``pip install "sagaflow[postgres]"``. URL: any libpq URL,
``postgresql://user:password@host:5432/db?sslmode=verify-full`` (TLS and other
parameters are passed to libpq).

Design: **one row per message per subscribed group** (``{prefix}queue``). A group
registers itself in ``{prefix}groups`` when it first subscribes; a publish inserts a
copy of the message for every group registered on the topic, in the publisher's
transaction. This costs a copy per group but keeps every queue operation a
single-row ``UPDATE``/``DELETE`` on one table: groups never contend on a shared
cursor, ``SKIP LOCKED`` gives competing consumers for free, an ack is a ``DELETE``
(the table holds only the backlog, so it stays small), and a group that lags or
dies does not hold back anyone else.

* **Claim**: ``UPDATE ... SET visible_at = now() + lease, lease_owner = me,
  attempts = attempts + 1 WHERE seq IN (SELECT ... WHERE visible_at <= now() ORDER BY
  seq LIMIT n FOR UPDATE SKIP LOCKED) RETURNING ...``. ``visible_at`` doubles as the
  lease expiry: a consumer that dies leaves its rows to reappear after ``lease``
  seconds (keep it well above the slowest handler).
* **Ack** deletes the row, **nack(delay)** sets ``visible_at = now() + delay`` and
  clears the owner, **dead_letter** moves the row to ``{prefix}dead_letters`` with
  the reason, in one statement. All three are fenced by ``lease_owner``: a consumer
  whose lease expired and was taken over cannot settle the new owner's delivery.
* **Acks are written behind**: sent with the next claim (same round trip) or within
  ``ack_flush_interval``, and on close; a crash in between redelivers (at-least-once).
* **Wake-ups**: publishes ``NOTIFY`` the topic; a listener connection wakes the
  topic's subscriptions. NOTIFY is only a hint (coalesced, lost when nobody
  listens): subscriptions also poll every ``poll_interval`` seconds.
* **Outbox**: `PostgresTransport.publish_in` inserts messages using the caller's own
  connection, so they commit or roll back with the caller's transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sagaflow._optional import require
from sagaflow._urls import mask_url
from sagaflow.errors import ConfigurationError, PublishError, TransportUnavailableError
from sagaflow.transports._common import (
    RECONNECT_POLICY,
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
    sleep_or_closed,
)
from sagaflow.transports.base import Delivery, Message

_psycopg = require("psycopg", "postgres")
_pool = require("psycopg_pool", "postgres")

__all__ = ["PostgresTransport"]

_CHANNEL = "sagaflow_transport"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {p}groups (
    topic text NOT NULL,
    grp text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, grp)
);
CREATE TABLE IF NOT EXISTS {p}queue (
    seq bigserial PRIMARY KEY,
    topic text NOT NULL,
    grp text NOT NULL,
    msg_id text NOT NULL,
    body bytea NOT NULL,
    headers jsonb NOT NULL,
    msg_key text,
    attempts integer NOT NULL DEFAULT 0,
    visible_at timestamptz NOT NULL DEFAULT now(),
    lease_owner text,
    published_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {p}queue_claim ON {p}queue (topic, grp, seq);
CREATE TABLE IF NOT EXISTS {p}dead_letters (
    seq bigserial PRIMARY KEY,
    topic text NOT NULL,
    grp text NOT NULL,
    msg_id text NOT NULL,
    body bytea NOT NULL,
    headers jsonb NOT NULL,
    msg_key text,
    attempts integer NOT NULL,
    reason text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);
"""


def _headers(value: Any, *, lenient: bool = False) -> dict[str, str]:
    """Return a row's headers.

    Raises:
        ValueError: They are not a JSON object of strings (a row another writer
            inserted); with ``lenient``, return ``{}`` instead (for dead letters).
    """
    if isinstance(value, str | bytes):
        value = json.loads(value)
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return value
    if lenient:
        return {}
    raise ValueError("headers are not a JSON object of strings")


@dataclass(eq=False)
class _Subscription(KeyedSubscription[int, "_PgDelivery"]):
    topic: str
    group: str
    owner: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    registered: bool = False


class _PgDelivery(KeyedDelivery["PostgresTransport", _Subscription, int]):
    """One claimed row; ``attempt`` counts the claims of the row by its group."""

    __slots__ = ()

    transport_name = "PostgresTransport"

    async def _send_nack(self, delay: float) -> None:
        await self._transport._make_visible(self._sub, [self._key], delay)

    async def _send_dead_letter(self, reason: str) -> None:
        await self._transport._dead_letter(self._sub, self._key, reason)


class PostgresTransport(WriteBehindAcks[_Subscription]):
    """Transport over a PostgreSQL table queue (see the module docstring).

    Args:
        url: libpq connection URL; credentials are never logged.
        prefix: Prefix of the tables (``sagaflow_`` gives ``sagaflow_queue`` ...).
        batch_size: Rows claimed per round trip.
        lease: Seconds a claimed row stays invisible to other consumers.
        poll_interval: Longest wait between claims when no NOTIFY arrives.
        max_deliveries: Safety net: a row claimed more often than this is
            dead-lettered by the transport instead of being delivered again.
        max_payload: Largest body accepted, in bytes.
        ack_flush_interval: Longest time an ``ack()`` waits before its ``DELETE``.
        pool_size: Maximum connections in the pool (the listener uses one more).
        connect_timeout: Seconds to wait for the first connection before giving up.
    """

    _ack_errors = (_psycopg.Error, _pool.PoolTimeout)
    _ack_command = "ack"

    def __init__(
        self,
        url: str = "postgresql://postgres@127.0.0.1:5432/postgres",
        *,
        prefix: str = "sagaflow_",
        batch_size: int = 200,
        lease: float = 60.0,
        poll_interval: float = 1.0,
        max_deliveries: int = 25,
        max_payload: int = 1024 * 1024,
        ack_flush_interval: float = 0.02,
        pool_size: int = 5,
        connect_timeout: float = 10.0,
    ) -> None:
        if not prefix.replace("_", "").isalnum() or not prefix[:1].isalpha():
            raise ConfigurationError(f"invalid table prefix {prefix!r}")
        if batch_size < 1 or lease <= 0 or poll_interval <= 0 or max_deliveries < 1:
            raise ConfigurationError(
                "batch_size, lease, poll_interval and max_deliveries must be positive"
            )
        self._url = url
        self._p = prefix
        self._batch = batch_size
        self._lease = lease
        self._poll = poll_interval
        self._max_deliveries = max_deliveries
        self._ack_flush_interval = ack_flush_interval
        self._connect_timeout = connect_timeout
        self.features = broker_features(max_payload)
        self._pool: Any = _pool.AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            kwargs={"autocommit": True},
            check=_pool.AsyncConnectionPool.check_connection,
        )
        self._closed = asyncio.Event()
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._subs: set[_Subscription] = set()
        self._listener: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PostgresTransport({mask_url(self._url)!r})"

    # --- setup -------------------------------------------------------------------------

    async def _ensure_ready(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if self._ready:
                return
            try:
                await self._pool.open(wait=True, timeout=self._connect_timeout)
                async with self._pool.connection() as conn, conn.transaction():
                    # Serialise concurrent CREATE IF NOT EXISTS (they race on catalogs).
                    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('sagaflow_schema'))")
                    await conn.execute(_SCHEMA.format(p=self._p))
            except (_psycopg.OperationalError, _pool.PoolTimeout) as exc:
                raise TransportUnavailableError(
                    f"PostgreSQL at {mask_url(self._url)} is unreachable: {type(exc).__name__}"
                ) from exc
            self._ready = True

    # --- publish -----------------------------------------------------------------------

    async def publish(self, messages: Sequence[Message]) -> None:
        """Insert ``messages`` for every group registered on their topics, in one transaction.

        Raises:
            MessageTooLargeError: A body exceeds ``features.max_payload`` (nothing sent).
            TransportUnavailableError: The database could not be reached.
            PublishError: The database refused the insert.
            TransportClosedError: The transport is closed.
        """
        ensure_open(self._closed.is_set(), "PostgresTransport")
        check_messages(messages, self.features.max_payload)
        if not messages:
            return
        await self._ensure_ready()

        async def send() -> None:
            async with self._pool.connection() as conn, conn.transaction():
                await self._insert(conn, messages)

        try:
            await retry_publish(send, retry_on=(_psycopg.OperationalError,))
        except (_psycopg.OperationalError, _pool.PoolTimeout) as exc:
            raise TransportUnavailableError(
                f"PostgreSQL at {mask_url(self._url)} is unreachable: {type(exc).__name__}"
            ) from exc
        except _psycopg.Error as exc:
            raise PublishError(f"PostgreSQL refused a publish: {type(exc).__name__}") from exc

    async def publish_in(self, connection: Any, messages: Sequence[Message]) -> None:
        """Insert ``messages`` using the caller's connection, inside its transaction.

        The messages become visible to consumers only when the caller commits, and
        vanish if it rolls back: "change my data and publish" is atomic. The tables
        must exist (any earlier `publish`/`subscribe` or `create_schema` made them).

        Args:
            connection: A ``psycopg.AsyncConnection`` in a transaction.
            messages: The messages to publish.
        """
        ensure_open(self._closed.is_set(), "PostgresTransport")
        check_messages(messages, self.features.max_payload)
        if messages:
            await self._insert(connection, messages)

    async def create_schema(self) -> None:
        """Create the tables if they do not exist (done lazily otherwise)."""
        ensure_open(self._closed.is_set(), "PostgresTransport")
        await self._ensure_ready()

    async def _insert(self, conn: Any, messages: Sequence[Message]) -> None:
        # One statement per batch: the fan-out to groups happens in the server, and
        # ORDER BY keeps seq (hence delivery order) in publish order.
        await conn.execute(
            f"INSERT INTO {self._p}queue (topic, grp, msg_id, body, headers, msg_key) "
            "SELECT m.topic, g.grp, m.id, m.body, m.headers, m.key "
            "FROM unnest(%b::text[], %b::text[], %b::bytea[], %b::jsonb[], %b::text[]) "
            "WITH ORDINALITY AS m(topic, id, body, headers, key, ord) "
            f"JOIN {self._p}groups g ON g.topic = m.topic ORDER BY m.ord, g.grp",
            (
                [m.topic for m in messages],
                [m.id for m in messages],
                [m.body for m in messages],
                [json.dumps(dict(m.headers)) for m in messages],
                [m.key for m in messages],
            ),
        )
        for topic in sorted({m.topic for m in messages}):
            # Delivered at commit; only a wake-up hint for listeners.
            await conn.execute("SELECT pg_notify(%s, %s)", (_CHANNEL, topic))

    # --- subscribe ---------------------------------------------------------------------

    def subscribe(self, topic: str, *, group: str) -> AsyncIterator[Delivery]:
        """Iterate deliveries of ``topic`` for ``group`` (see the module docstring).

        Raises:
            ConfigurationError: ``topic`` or ``group`` is not a safe name.
            TransportClosedError: The transport is closed.
        """
        check_subscription(topic, group, self._closed.is_set(), "PostgresTransport")
        sub = _Subscription(
            topic=topic, group=group, owner=uuid.uuid4().hex, sizer=BatchSizer(self._batch)
        )
        sub.iterator = PullIterator(
            lambda: self._fetch(sub), self._closed, lambda items: self._release(sub, items)
        )
        self._subs.add(sub)
        return sub.iterator

    async def _fetch(self, sub: _Subscription) -> list[_PgDelivery]:
        while not self._closed.is_set():
            try:
                await self._ensure_ready()
                self._ensure_listener()
                if not sub.registered:
                    await self._register(sub)
                sub.wake.clear()  # before claiming, so a NOTIFY racing the claim is kept
                rows = await self._claim(sub)
                sub.failures = 0
            except (TransportUnavailableError, _psycopg.OperationalError, _pool.PoolTimeout) as e:
                sub.failures += 1
                await pause_to_reconnect(
                    sub.failures,
                    self._closed,
                    f"PostgreSQL at {mask_url(self._url)} unavailable ({type(e).__name__})",
                )
                return []
            if not rows:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sub.wake.wait(), self._poll)
            # One round per call (maybe empty): an iterator being closed waits for at
            # most one poll interval.
            return await self._deliverable(sub, rows)
        return []

    async def _register(self, sub: _Subscription) -> None:
        async with self._pool.connection() as conn:
            await conn.execute(
                f"INSERT INTO {self._p}groups (topic, grp) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (sub.topic, sub.group),
            )
        sub.registered = True

    async def _claim(self, sub: _Subscription) -> list[tuple[Any, ...]]:
        acks = sub.take_acks()
        try:
            async with self._pool.connection() as conn:
                # One statement, one round trip: delete what was acked since the last
                # claim (fenced by our lease), claim the next rows.
                cur = await conn.execute(
                    f"WITH acked AS (DELETE FROM {self._p}queue "
                    "WHERE seq = ANY(%s::bigint[]) AND lease_owner = %s) "
                    f"UPDATE {self._p}queue SET attempts = attempts + 1, lease_owner = %s, "
                    "visible_at = now() + make_interval(secs => %s) "
                    f"WHERE seq IN (SELECT seq FROM {self._p}queue "
                    "WHERE topic = %s AND grp = %s AND visible_at <= now() "
                    "ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED) "
                    "RETURNING seq, msg_id, body, headers, msg_key, attempts",
                    (
                        acks,
                        sub.owner,
                        sub.owner,
                        self._lease,
                        sub.topic,
                        sub.group,
                        sub.sizer.current,
                    ),
                )
                rows: list[tuple[Any, ...]] = await cur.fetchall()
        except BaseException:
            sub.ack_buffer.extend(acks)
            raise
        sub.sizer.update(len(rows))
        rows.sort(key=lambda row: int(row[0]))
        sub.outstanding.update(int(row[0]) for row in rows)
        return rows

    async def _deliverable(
        self, sub: _Subscription, rows: list[tuple[Any, ...]]
    ) -> list[_PgDelivery]:
        out = []
        for seq, msg_id, body, headers, key, attempts in rows:
            try:
                parsed = _headers(headers)
            except ValueError as exc:
                # Malformed: move the row, as it is, to the dead letters with the reason.
                message = Message(id=msg_id, topic=sub.topic, body=bytes(body), key=key)
                malformed = _PgDelivery(self, sub, int(seq), message, int(attempts))
                await malformed.dead_letter_received(f"malformed row: {exc}")
                continue
            message = Message(id=msg_id, topic=sub.topic, body=bytes(body), headers=parsed, key=key)
            delivery = _PgDelivery(self, sub, int(seq), message, int(attempts))
            if await delivery.dead_letter_if_over(self._max_deliveries):
                continue
            sub.delivered[int(seq)] = delivery
            out.append(delivery)
        return out

    # --- listener ----------------------------------------------------------------------

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        failures = 0
        while not self._closed.is_set():
            try:
                conn = await _psycopg.AsyncConnection.connect(self._url, autocommit=True)
                try:
                    await conn.execute(f"LISTEN {_CHANNEL}")
                    failures = 0
                    for sub in list(self._subs):
                        sub.wake.set()  # we may have missed notifications while away
                    async for note in conn.notifies():
                        for sub in list(self._subs):
                            if sub.topic == note.payload:
                                sub.wake.set()
                finally:
                    await conn.close()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                logger.debug("LISTEN connection lost (%s)", type(exc).__name__)
                await sleep_or_closed(RECONNECT_POLICY.delay(failures), self._closed)

    # --- settling ----------------------------------------------------------------------

    async def _send_acks(self, sub: _Subscription, keys: list[int]) -> None:
        async with self._pool.connection() as conn:
            # lease_owner fences it: once our lease expired, the row is not ours to delete.
            await conn.execute(
                f"DELETE FROM {self._p}queue WHERE seq = ANY(%s) AND lease_owner = %s",
                (keys, sub.owner),
            )

    async def _make_visible(self, sub: _Subscription, seqs: list[int], delay: float) -> None:
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    f"UPDATE {self._p}queue SET lease_owner = NULL, "
                    "visible_at = now() + make_interval(secs => %s) "
                    "WHERE seq = ANY(%s) AND lease_owner = %s",
                    (max(delay, 0.0), seqs, sub.owner),
                )
        except (_psycopg.OperationalError, _pool.PoolTimeout) as exc:
            # The lease still expires: the rows come back after `lease` seconds.
            raise TransportUnavailableError(
                f"PostgreSQL unreachable while scheduling a retry: {type(exc).__name__}"
            ) from exc

    async def _dead_letter(self, sub: _Subscription, seq: int, reason: str) -> None:
        try:
            async with self._pool.connection() as conn:
                await conn.execute(
                    f"WITH moved AS (DELETE FROM {self._p}queue "
                    "WHERE seq = %s AND lease_owner = %s "
                    "RETURNING topic, grp, msg_id, body, headers, msg_key, attempts) "
                    f"INSERT INTO {self._p}dead_letters "
                    "(topic, grp, msg_id, body, headers, msg_key, attempts, reason) "
                    "SELECT topic, grp, msg_id, body, headers, msg_key, attempts, %s FROM moved",
                    (seq, sub.owner, reason),
                )
        except (_psycopg.OperationalError, _pool.PoolTimeout) as exc:
            raise TransportUnavailableError(
                f"PostgreSQL unreachable while dead-lettering: {type(exc).__name__}"
            ) from exc

    async def _hand_back(self, sub: _Subscription, keys: list[int]) -> None:
        await self._make_visible(sub, keys, 0.0)

    # --- dead letters ------------------------------------------------------------------

    async def dead_letters(
        self, topic: str, *, group: str | None = None, limit: int = 100
    ) -> list[BrokerDeadLetter]:
        """Return up to ``limit`` dead letters of ``topic`` (of ``group``), oldest first."""
        ensure_open(self._closed.is_set(), "PostgresTransport")
        await self._ensure_ready()
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT seq, grp, msg_id, body, headers, msg_key, attempts, reason "
                f"FROM {self._p}dead_letters WHERE topic = %s AND (%s::text IS NULL OR grp = %s) "
                "ORDER BY seq LIMIT %s",
                (topic, group, group, limit),
            )
            rows = await cur.fetchall()
        return [
            BrokerDeadLetter(
                topic=topic,
                group=grp,
                message=Message(
                    id=msg_id,
                    topic=topic,
                    body=bytes(body),
                    headers=_headers(headers, lenient=True),
                    key=key,
                ),
                reason=reason,
                attempt=attempts,
                ref=str(seq),
            )
            for seq, grp, msg_id, body, headers, key, attempts, reason in rows
        ]

    async def declare(self, topic: str, *, group: str) -> None:
        """Register ``group`` on ``topic`` now: messages published from now on reach it."""
        check_subscription(topic, group, self._closed.is_set(), "PostgresTransport")
        await self._ensure_ready()
        try:
            await self._register(_Subscription(topic=topic, group=group, owner=""))
        except (_psycopg.OperationalError, _pool.PoolTimeout) as exc:
            raise TransportUnavailableError(
                f"PostgreSQL at {mask_url(self._url)} is unreachable: {type(exc).__name__}"
            ) from exc

    # --- close -------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop subscriptions, flush acks, release unsettled rows, close connections."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
        for sub in list(self._subs):
            await self._drain(sub)
        with contextlib.suppress(Exception):
            await self._pool.close()

    async def _drain(self, sub: _Subscription) -> None:
        if sub.iterator is not None:
            await sub.iterator.settle_in_flight(wait=5.0)
        with contextlib.suppress(TransportUnavailableError, _psycopg.Error):
            # Otherwise the leases expire and the rows come back after `lease`.
            await self._release(sub)
