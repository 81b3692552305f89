"""`PostgresOutbox`: the transactional outbox on your PostgreSQL database (psycopg 3).

Needs the ``postgres`` extra (``pip install "sagaflow[postgres]"``). Record
events with `PostgresOutbox.add` on *your* psycopg async connection, inside the
transaction that changes your data; one or more `OutboxRelay` processes
publish them::

    outbox = PostgresOutbox(url, bus=bus)
    async with conn.transaction():
        await conn.execute("UPDATE orders SET status = 'placed' WHERE id = %s", (order_id,))
        await outbox.add(conn, OrderPlaced(order_id=order_id), key=order_id)

Design:

* **Commit order per key.** Row numbers come from a sequence, allocated at
  insert time, while transactions may commit in another order: a relay could see
  row 11 of a key before row 10 commits. `add` therefore takes a
  transaction-scoped advisory lock on the key (``serialize_keys=True``): two
  transactions recording events of one key commit one after the other, so the
  later one's rows are numbered after the earlier one's. Transactions of
  different keys do not wait for each other (a hash collision only makes two
  keys share a lock).
* **Several relays.** A claim is one short, pipelined transaction that first
  takes an advisory lock (claims, not publishes, run one at a time), finds the
  keys held by other relays (leased or waiting for a retry) through two small
  partial indexes, and leases rows with ``SELECT ... FOR UPDATE SKIP LOCKED``.
  Under the lock the claim sees every earlier claim, so two relays never hold
  rows of the same key at once, and each key's rows are published in order.
* **Wake-ups.** `add` sends ``NOTIFY`` (delivered at commit); relays ``LISTEN``
  and also poll every ``poll_interval`` seconds, since notifications are lost
  while nobody listens.
* **Relay writes skip the WAL flush** (``synchronous_commit = off`` on the
  outbox's own pool): a lease or sent mark lost in a database crash only
  publishes those messages again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from sagaflow.choreography._outbox_common import (
    MessageEncoder,
    check_message,
    claimed_from_rows,
    encode_headers,
    parked_from_row,
)
from sagaflow.choreography._postgres import PgAccess, identifier, user_connection
from sagaflow.choreography.outbox import OutboxMessage, ParkedMessage
from sagaflow.clock import Clock, SystemClock
from sagaflow.events import Event
from sagaflow.stores._common import validate_identifier
from sagaflow.transports.base import Message

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

    from sagaflow.choreography.bus import EventBus

__all__ = ["PostgresOutbox"]

logger = logging.getLogger("sagaflow.outbox")

SCHEMA_VERSION: Final = 1
"""The newest outbox schema version this code knows."""

PENDING, SENT, PARKED = 0, 1, 2
_CLEANUP_CHUNK = 10_000


class PostgresOutbox:
    """A transactional outbox table in PostgreSQL, served by one or more relays.

    Args:
        url_or_pool: libpq URL or keyword string, or an `AsyncConnectionPool`
            you own, for the relay's side (`add` uses *your* connection).
        bus: The bus whose envelope building, serializer and topic map are used
            by `add` (default: a plain `EventBus` over the default registry).
        schema: PostgreSQL schema of the table (created if missing).
        table: Name of the outbox table.
        serialize_keys: Take a per-key advisory lock in `add` so that rows of a
            key are numbered in commit order (see the module docstring). Turn
            off only if your transactions already serialize per key.
        notify: Send ``NOTIFY`` from `add` so that idle relays wake at once.
            PostgreSQL serializes the commits of notifying transactions; at
            thousands of commits per second turn it off and let relays poll.
        pool_size: Most connections of the relay-side pool (a listener uses one more).
        connect_timeout: Seconds to wait for a connection.
        clock: Time source for ``created_at``.
    """

    def __init__(
        self,
        url_or_pool: str | AsyncConnectionPool[Any],
        *,
        bus: EventBus | None = None,
        schema: str = "sagaflow",
        table: str = "outbox",
        serialize_keys: bool = True,
        notify: bool = True,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self.table = validate_identifier(table, "table").lower()
        self.serialize_keys = serialize_keys
        self.notify = notify
        self._encoder = MessageEncoder(bus)
        self._clock = clock or SystemClock()
        schema = validate_identifier(schema, "schema").lower()
        self.channel = f"sagaflow_outbox_{schema}_{self.table}"[:63]
        self._sql = _Sql(identifier(schema), self.table, notify=notify)
        self._db = PgAccess(
            url_or_pool,
            schema=schema,
            version_table=self._sql.meta,
            version=SCHEMA_VERSION,
            create=self._sql.create_tables,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            name=f"sagaflow-outbox-{schema}",
            # The relay's own writes (leases, sent marks, retries) need not wait
            # for the WAL flush: losing the last ones in a database crash only
            # publishes those messages again, which at-least-once allows.
            settings={"synchronous_commit": "off"},
        )
        self._wake = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"PostgresOutbox({self._db.where}, schema={self.schema!r}, table={self.table!r})"

    @property
    def schema(self) -> str:
        """The PostgreSQL schema of the outbox table."""
        return self._db.schema

    async def create_schema(self) -> None:
        """Create the table if missing (done by the relay's first call otherwise).

        `add` does not create it: run this (or start a relay) once before the
        first `add`, for instance at deploy time.
        """
        await self._db.ensure_ready()

    # -- writing (the application's side) ------------------------------------------------

    async def add(
        self,
        conn: Any,
        event: Event,
        *,
        key: str | None = None,
        id: str | None = None,
        subject: str | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        traceparent: str | None = None,
    ) -> Message:
        """Record ``event`` in the outbox within ``conn``'s current transaction.

        The options are those of `EventBus.publish`; inside a handler the
        correlation id, causation id and traceparent are inherited. Nothing is
        published before the transaction commits; a rollback drops the row.

        Args:
            conn: Your ``psycopg.AsyncConnection`` (inside ``conn.transaction()``
                or a non-autocommit transaction) or an ``AsyncTransaction``.
            event: An instance of a registered event class.
            key: Partition key: messages with equal keys are published in order.
            id: Event id (default: a new UUID); also the message id.
            subject: CloudEvents subject.
            headers: Free application headers.
            correlation_id: Flow id (default: inherited in a handler, else the event id).
            causation_id: Causing event id (default: inherited in a handler).
            traceparent: W3C trace context (default: inherited in a handler).

        Returns:
            The recorded message (its ``id`` is the event id).

        Raises:
            ConfigurationError: The event class is not registered or a header is reserved.
            MessageTooLargeError: The encoded event is over the serializer's limit.
            psycopg.Error: Your connection failed (your transaction is then lost).
        """
        message = self._encoder.encode(
            event,
            key=key,
            id=id,
            subject=subject,
            headers=headers,
            correlation_id=correlation_id,
            causation_id=causation_id,
            traceparent=traceparent,
        )
        await self.add_messages(conn, [message])
        return message

    async def add_many(
        self, conn: Any, events: Iterable[Event], *, key: str | None = None
    ) -> list[Message]:
        """Record several events (in order) within ``conn``'s transaction; see `add`."""
        messages = [self._encoder.encode(event, key=key) for event in events]
        await self.add_messages(conn, messages)
        return messages

    async def add_messages(self, conn: Any, messages: Sequence[Message]) -> None:
        """Record ready-made transport messages within ``conn``'s transaction.

        Raises:
            ConfigurationError: A topic name is unsafe or an id is empty.
        """
        messages = [check_message(m) for m in messages]
        if not messages:
            return
        connection = user_connection(conn)
        now = self._clock.now()
        sql = self._sql
        if len(messages) == 1:
            (m,) = messages
            lock = self.serialize_keys and m.key is not None
            params = {
                "id": m.id,
                "topic": m.topic,
                "key": m.key,
                "body": m.body,
                "headers": encode_headers(m.headers),
                "now": now,
                "channel": self.channel,
                "scope": self._sql.scope,
            }
            # One statement, one round trip: lock, notify and insert together.
            await connection.execute(sql.insert_keyed if lock else sql.insert_one, params)
            return
        keys = sorted({m.key for m in messages if m.key is not None})
        if self.serialize_keys and keys:
            await connection.execute(sql.lock_keys, {"keys": keys, "scope": sql.scope})
        await connection.execute(
            sql.insert_many,
            {
                "ids": [m.id for m in messages],
                "topics": [m.topic for m in messages],
                "keys": [m.key for m in messages],
                "bodies": [m.body for m in messages],
                "headers": [encode_headers(m.headers) for m in messages],
                "now": now,
                "channel": self.channel,
            },
        )

    # -- the relay's side (see the Outbox protocol) ---------------------------------------

    async def claim(
        self, *, owner: str, limit: int, lease: float, now: float
    ) -> list[OutboxMessage]:
        """Lease up to ``limit`` publishable rows, oldest first (see `Outbox.claim`)."""
        params = {"owner": owner, "expires": now + lease, "now": now, "limit": limit}

        async def work(conn: Any) -> list[OutboxMessage]:
            # Pipelined: BEGIN, lock, claim and COMMIT travel in one round trip.
            async with conn.pipeline(), conn.transaction():
                # Claims take turns: under the lock this statement's snapshot
                # holds every earlier claim, so no key is leased to two relays.
                await conn.execute(self._sql.claim_lock)
                cursor = await conn.execute(self._sql.claim, params)
            return claimed_from_rows(await cursor.fetchall())

        return await self._db.run(work)

    async def mark_sent(self, seqs: Sequence[int], *, now: float, delete: bool) -> None:
        """Record that ``seqs`` were published (see `Outbox.mark_sent`)."""
        statement = self._sql.delete if delete else self._sql.mark_sent
        await self._execute(statement, {"seqs": list(seqs), "now": now})

    async def retry_later(self, owner: str, seqs: Sequence[int], *, at: float, reason: str) -> None:
        """Count a failed publish and hold the rows until ``at`` (see `Outbox.retry_later`)."""
        params = {"seqs": list(seqs), "owner": owner, "at": at, "reason": reason}
        await self._execute(self._sql.retry_later, params)

    async def park(self, seqs: Sequence[int], *, reason: str, now: float) -> None:
        """Give up on ``seqs``, keeping ``reason`` (see `Outbox.park`)."""
        await self._execute(self._sql.park, {"seqs": list(seqs), "reason": reason, "now": now})

    async def release(self, owner: str, seqs: Sequence[int]) -> None:
        """Drop ``owner``'s lease on unpublished rows (see `Outbox.release`)."""
        await self._execute(self._sql.release, {"seqs": list(seqs), "owner": owner})

    async def cleanup(self, *, sent_before: float) -> int:
        """Delete rows sent before ``sent_before`` (in chunks); return how many."""
        total = 0
        while True:
            deleted = await self._rowcount(
                self._sql.cleanup, {"before": sent_before, "chunk": _CLEANUP_CHUNK}
            )
            total += deleted
            if deleted < _CLEANUP_CHUNK:
                return total

    async def wait_for_work(self, timeout: float) -> None:  # noqa: ASYNC109
        """Return at the next ``NOTIFY`` from `add` (a hint), or after ``timeout``."""
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(
                self._listen(), name="sagaflow-outbox-listen"
            )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)
        self._wake.clear()

    async def _listen(self) -> None:
        import psycopg

        try:
            async with await psycopg.AsyncConnection.connect(
                await self._db.resolve_conninfo(),
                autocommit=True,
                connect_timeout=int(self._db.connect_timeout),
            ) as conn:
                await conn.execute(f"LISTEN {identifier(self.channel)}")
                # A notification may have been missed while connecting: look once.
                self._wake.set()
                async for _ in conn.notifies():
                    self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Polling still works; the next wait starts a new listener.
            logger.info("outbox listener stopped (%s); polling meanwhile", type(exc).__name__)

    async def parked(self, *, limit: int = 100) -> list[ParkedMessage]:
        """Return parked rows, oldest first."""

        async def work(conn: Any) -> list[ParkedMessage]:
            cursor = await conn.execute(self._sql.parked, {"limit": limit})
            return [parked_from_row(r) for r in await cursor.fetchall()]

        return await self._db.run(work)

    async def requeue(self, seq: int) -> bool:
        """Make parked row ``seq`` publishable again (it is published out of key order)."""
        return bool(await self._rowcount(self._sql.requeue, {"seq": seq}))

    async def pending(self) -> int:
        """Return how many rows are neither sent nor parked."""

        async def work(conn: Any) -> int:
            row = await (await conn.execute(self._sql.pending)).fetchone()
            return int(row[0])

        return await self._db.run(work)

    async def close(self) -> None:
        """Stop the listener and close the pool if it was opened here; idempotent."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._listener
            self._listener = None
        await self._db.close()

    async def _execute(self, statement: str, params: dict[str, Any]) -> None:
        async def work(conn: Any) -> None:
            await conn.execute(statement, params)

        await self._db.run(work)

    async def _rowcount(self, statement: str, params: dict[str, Any]) -> int:
        async def work(conn: Any) -> int:
            cursor = await conn.execute(statement, params)
            return int(cursor.rowcount)

        return await self._db.run(work)


class _Sql:
    """Every statement, with the schema and table names spliced in once."""

    def __init__(self, schema: str, table: str, *, notify: bool) -> None:
        t = f"{schema}.{identifier(table)}"
        self.meta = f"{schema}.{identifier(table + '_meta')}"
        wake = "pg_notify(%(channel)s, '')" if notify else "NULL"
        # Scopes the key locks and the claim lock to this table.
        self.scope = f"sagaflow-outbox:{schema}.{table}:"
        self.create_tables = [
            f"""CREATE TABLE IF NOT EXISTS {t} (
                seq bigserial PRIMARY KEY,
                msg_id text NOT NULL,
                topic text NOT NULL,
                msg_key text,
                body bytea NOT NULL,
                headers json NOT NULL,
                created_at double precision NOT NULL,
                state smallint NOT NULL DEFAULT {PENDING},
                attempts integer NOT NULL DEFAULT 0,
                available_at double precision NOT NULL DEFAULT 0,
                lease_owner text,
                lease_expires double precision,
                sent_at double precision,
                parked_at double precision,
                last_error text
            )""",
            f"CREATE INDEX IF NOT EXISTS {identifier(table + '_pending')}"
            f" ON {t} (seq) WHERE state = {PENDING}",
            # Rows in flight and rows waiting for a retry: few, found at once.
            f"CREATE INDEX IF NOT EXISTS {identifier(table + '_leased')}"
            f" ON {t} (lease_expires) WHERE state = {PENDING} AND lease_expires IS NOT NULL",
            f"CREATE INDEX IF NOT EXISTS {identifier(table + '_waiting')}"
            f" ON {t} (available_at) WHERE state = {PENDING} AND available_at > 0",
            f"CREATE INDEX IF NOT EXISTS {identifier(table + '_sent')}"
            f" ON {t} (sent_at) WHERE state = {SENT}",
        ]
        key_lock = "pg_advisory_xact_lock(hashtextextended(%(scope)s::text || %(key)s::text, 0))"
        values = (
            "%(id)s::text, %(topic)s::text, %(key)s::text, %(body)s::bytea,"
            " %(headers)s::json, %(now)s::float8"
        )
        columns = "(msg_id, topic, msg_key, body, headers, created_at)"
        # The lock is taken while the subquery produces its row, before the
        # sequence value of the inserted row is drawn.
        self.insert_keyed = (
            f"INSERT INTO {t} {columns} SELECT {values} FROM (SELECT {key_lock}, {wake}) AS l"
        )
        self.insert_one = f"INSERT INTO {t} {columns} SELECT {values} FROM (SELECT {wake}) AS l"
        # Sorted hashes: two transactions locking overlapping keys cannot deadlock.
        self.lock_keys = """SELECT pg_advisory_xact_lock(h) FROM (
                SELECT DISTINCT hashtextextended(%(scope)s || k, 0) AS h
                FROM unnest(%(keys)s::text[]) AS k) AS hashes
            ORDER BY h"""
        self.insert_many = f"""WITH ins AS (
                INSERT INTO {t} {columns}
                SELECT u.id, u.topic, u.key, u.body, u.headers::json, %(now)s
                FROM unnest(%(ids)s::text[], %(topics)s::text[], %(keys)s::text[],
                            %(bodies)s::bytea[], %(headers)s::text[])
                     WITH ORDINALITY AS u(id, topic, key, body, headers, ord)
                ORDER BY u.ord
                RETURNING 1)
            SELECT {wake}"""
        claim_key = f"hashtextextended('{self.scope}claim', 0)"
        # JIT off for this transaction: compiling the plan would cost more than
        # running it. No wait for the WAL flush: a lease lost in a crash only
        # leaves its rows unleased.
        self.claim_lock = (
            "SELECT set_config('jit', 'off', true),"
            " set_config('synchronous_commit', 'off', true),"
            f" pg_advisory_xact_lock({claim_key})"
        )
        # `held`: per key, the first row that is leased by a live relay or waits
        # for a retry (both found through small partial indexes). Rows of a key
        # from that one on must wait; the others are claimed in seq order.
        self.claim = f"""WITH held AS (
                SELECT msg_key, min(seq) AS from_seq FROM (
                    SELECT msg_key, seq FROM {t}
                    WHERE state = {PENDING} AND lease_expires > %(now)s
                    UNION ALL
                    SELECT msg_key, seq FROM {t}
                    WHERE state = {PENDING} AND available_at > %(now)s
                ) AS busy
                WHERE msg_key IS NOT NULL
                GROUP BY msg_key
            ), picked AS (
                SELECT o.seq FROM {t} o
                LEFT JOIN held h ON h.msg_key = o.msg_key
                WHERE o.state = {PENDING} AND o.available_at <= %(now)s
                  AND (o.lease_expires IS NULL OR o.lease_expires <= %(now)s)
                  AND (h.from_seq IS NULL OR o.seq < h.from_seq)
                ORDER BY o.seq LIMIT %(limit)s
                FOR UPDATE OF o SKIP LOCKED
            )
            UPDATE {t} AS t SET lease_owner = %(owner)s, lease_expires = %(expires)s
            WHERE t.seq = ANY(ARRAY(SELECT seq FROM picked))  -- by primary key, never a scan
            RETURNING t.seq, t.msg_id, t.topic, t.msg_key, t.body, t.headers::text, t.attempts"""
        in_seqs = "seq = ANY(%(seqs)s::bigint[])"
        self.mark_sent = (
            f"UPDATE {t} SET state = {SENT}, sent_at = %(now)s, lease_owner = NULL,"
            f" lease_expires = NULL WHERE {in_seqs}"
        )
        self.delete = f"DELETE FROM {t} WHERE {in_seqs}"
        self.retry_later = (
            f"UPDATE {t} SET attempts = attempts + 1, available_at = %(at)s,"
            " last_error = %(reason)s, lease_owner = NULL, lease_expires = NULL"
            f" WHERE {in_seqs} AND lease_owner = %(owner)s AND state = {PENDING}"
        )
        self.park = (
            f"UPDATE {t} SET state = {PARKED}, attempts = attempts + 1, last_error = %(reason)s,"
            " parked_at = %(now)s, lease_owner = NULL, lease_expires = NULL"
            f" WHERE {in_seqs} AND state = {PENDING}"
        )
        self.release = (
            f"UPDATE {t} SET lease_owner = NULL, lease_expires = NULL"
            f" WHERE {in_seqs} AND lease_owner = %(owner)s AND state = {PENDING}"
        )
        self.cleanup = f"""DELETE FROM {t} WHERE seq IN (
                SELECT seq FROM {t} WHERE state = {SENT} AND sent_at < %(before)s
                LIMIT %(chunk)s)"""
        self.parked = (
            "SELECT seq, msg_id, topic, msg_key, body, headers, attempts, last_error, parked_at"
            f" FROM {t} WHERE state = {PARKED} ORDER BY seq LIMIT %(limit)s"
        )
        self.requeue = (
            f"UPDATE {t} SET state = {PENDING}, attempts = 0, available_at = 0, parked_at = NULL"
            f" WHERE seq = %(seq)s AND state = {PARKED}"
        )
        self.pending = f"SELECT count(*) FROM {t} WHERE state = {PENDING}"
