"""`SQLiteOutbox`: the transactional outbox on your SQLite database (stdlib ``sqlite3``).

Record events with `SQLiteOutbox.add` on *your* ``sqlite3`` connection, inside
the transaction that changes your data; an `OutboxRelay` publishes them::

    outbox = SQLiteOutbox("app.db", bus=bus)
    with conn:  # your transaction: both rows commit, or neither
        conn.execute("UPDATE orders SET status = 'placed' WHERE id = ?", (order_id,))
        outbox.add(conn, OrderPlaced(order_id=order_id), key=order_id)

SQLite allows one writer at a time, so row order *is* commit order and per-key
order needs no extra locking. The relay reads through its own connection on a
worker thread (the database is switched to WAL mode, so it never blocks your
readers) and notices new commits by polling ``PRAGMA data_version``, which
costs no I/O.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Literal

from sagaflow.choreography._outbox_common import (
    MessageEncoder,
    check_message,
    claimed_from_rows,
    encode_headers,
    parked_from_row,
)
from sagaflow.choreography.outbox import OutboxMessage, ParkedMessage
from sagaflow.clock import Clock, SystemClock
from sagaflow.events import Event
from sagaflow.stores._common import validate_identifier
from sagaflow.stores._sqlite import (
    SQLiteWorker,
    connect,
    create_versioned_tables,
    is_missing_table,
)
from sagaflow.transports.base import Message

if TYPE_CHECKING:
    from sagaflow.choreography.bus import EventBus

__all__ = ["SQLiteOutbox"]

SCHEMA_VERSION: Final = 1
"""The newest outbox schema version this code knows."""

# Row states. Integers keep the partial indexes small.
PENDING, SENT, PARKED = 0, 1, 2
_WAKE_POLL = 0.02  # seconds between data_version checks while idle


class SQLiteOutbox:
    """A transactional outbox table in a SQLite database.

    Args:
        path: The database file your application writes to.
        bus: The bus whose envelope building, serializer and topic map are used
            by `add` (default: a plain `EventBus` over the default registry).
        table: Name of the outbox table (``{table}_meta`` holds its version).
        clock: Time source for ``created_at``.
        busy_timeout: Seconds the relay waits for your write lock.
        synchronous: ``"NORMAL"`` (default) or ``"FULL"`` for the relay's own
            connection only (SQLite sets it per connection; yours keep theirs).
            The relay's writes are leases and sent marks: losing the last ones
            on a power loss only publishes those messages again.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        bus: EventBus | None = None,
        table: str = "sagaflow_outbox",
        clock: Clock | None = None,
        busy_timeout: float = 5.0,
        synchronous: Literal["FULL", "NORMAL"] = "NORMAL",
    ) -> None:
        self.path = os.fspath(path)
        self.table = validate_identifier(table, "table")
        self._encoder = MessageEncoder(bus)
        self._clock = clock or SystemClock()
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._sql = _Sql(self.table)
        self._worker = SQLiteWorker(
            self.path,
            setup=self.create_schema,
            busy_timeout=busy_timeout,
            synchronous=synchronous,
            name=f"sagaflow-outbox:{self.path}",
        )
        self._data_version: int | None = None

    def __repr__(self) -> str:
        return f"SQLiteOutbox({self.path!r}, table={self.table!r})"

    # -- writing (the application's side) ------------------------------------------------

    def create_schema(self, conn: sqlite3.Connection) -> None:
        """Create the outbox table on ``conn`` if missing (in its current transaction).

        `add` does this by itself the first time it finds no table.

        Raises:
            SchemaVersionError: The table was made by a newer sagaflow.
        """
        create_versioned_tables(
            conn,
            meta_table=f"{self.table}_meta",
            tables=self._sql.create_tables,
            version=SCHEMA_VERSION,
        )

    def add(
        self,
        conn: sqlite3.Connection,
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
        published until the transaction commits and a relay picks the row up;
        a rollback drops it.

        Args:
            conn: Your connection, normally inside a transaction (with the
                default ``isolation_level`` the insert opens one if needed).
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
        self.add_messages(conn, [message])
        return message

    def add_many(
        self, conn: sqlite3.Connection, events: Iterable[Event], *, key: str | None = None
    ) -> list[Message]:
        """Record several events (in order) within ``conn``'s transaction; see `add`."""
        messages = [self._encoder.encode(event, key=key) for event in events]
        self.add_messages(conn, messages)
        return messages

    def add_messages(self, conn: sqlite3.Connection, messages: Sequence[Message]) -> None:
        """Record ready-made transport messages within ``conn``'s transaction.

        Raises:
            ConfigurationError: A topic name is unsafe or an id is empty.
        """
        now = self._clock.now()
        rows = [
            (m.id, m.topic, m.key, m.body, encode_headers(m.headers), now)
            for m in map(check_message, messages)
        ]
        if not rows:
            return
        try:
            conn.executemany(self._sql.insert, rows)
        except sqlite3.OperationalError as exc:
            if not is_missing_table(exc):
                raise
            # First use on this database: the table joins the caller's transaction.
            self.create_schema(conn)
            conn.executemany(self._sql.insert, rows)

    # -- the relay's side (see the Outbox protocol) ---------------------------------------

    async def claim(
        self, *, owner: str, limit: int, lease: float, now: float
    ) -> list[OutboxMessage]:
        """Lease up to ``limit`` publishable rows, oldest first (see `Outbox.claim`)."""
        params = {"owner": owner, "expires": now + lease, "now": now, "limit": limit}

        def op(conn: sqlite3.Connection) -> list[OutboxMessage]:
            return claimed_from_rows(conn.execute(self._sql.claim, params).fetchall())

        claimed: list[OutboxMessage] = await self._worker.run(op)
        return claimed

    async def mark_sent(self, seqs: Sequence[int], *, now: float, delete: bool) -> None:
        """Record that ``seqs`` were published (see `Outbox.mark_sent`)."""
        statement = self._sql.delete if delete else self._sql.mark_sent
        params = {"seqs": json.dumps(list(seqs)), "now": now}
        await self._worker.run(lambda conn: conn.execute(statement, params))

    async def retry_later(self, owner: str, seqs: Sequence[int], *, at: float, reason: str) -> None:
        """Count a failed publish and hold the rows until ``at`` (see `Outbox.retry_later`)."""
        params = {"seqs": json.dumps(list(seqs)), "owner": owner, "at": at, "reason": reason}
        await self._worker.run(lambda conn: conn.execute(self._sql.retry_later, params))

    async def park(self, seqs: Sequence[int], *, reason: str, now: float) -> None:
        """Give up on ``seqs``, keeping ``reason`` (see `Outbox.park`)."""
        params = {"seqs": json.dumps(list(seqs)), "reason": reason, "now": now}
        await self._worker.run(lambda conn: conn.execute(self._sql.park, params))

    async def release(self, owner: str, seqs: Sequence[int]) -> None:
        """Drop ``owner``'s lease on unpublished rows (see `Outbox.release`)."""
        params = {"seqs": json.dumps(list(seqs)), "owner": owner}
        await self._worker.run(lambda conn: conn.execute(self._sql.release, params))

    async def cleanup(self, *, sent_before: float) -> int:
        """Delete rows sent before ``sent_before``; return how many."""

        def op(conn: sqlite3.Connection) -> int:
            return int(conn.execute(self._sql.cleanup, (sent_before,)).rowcount)

        deleted: int = await self._worker.run(op)
        return deleted

    async def wait_for_work(self, timeout: float) -> None:  # noqa: ASYNC109
        """Return once another connection committed (a hint), or after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            version = await self._worker.run(_data_version, write=False)
            if self._data_version is not None and version != self._data_version:
                self._data_version = version
                return
            self._data_version = version
            await asyncio.sleep(min(_WAKE_POLL, max(0.0, deadline - loop.time())))

    async def parked(self, *, limit: int = 100) -> list[ParkedMessage]:
        """Return parked rows, oldest first."""

        def op(conn: sqlite3.Connection) -> list[ParkedMessage]:
            return [parked_from_row(r) for r in conn.execute(self._sql.parked, (limit,))]

        found: list[ParkedMessage] = await self._worker.run(op, write=False)
        return found

    async def requeue(self, seq: int) -> bool:
        """Make parked row ``seq`` publishable again (it is published out of key order)."""

        def op(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute(self._sql.requeue, (seq,)).rowcount)

        done: bool = await self._worker.run(op)
        return done

    async def pending(self) -> int:
        """Return how many rows are neither sent nor parked."""

        def op(conn: sqlite3.Connection) -> int:
            return int(conn.execute(self._sql.pending).fetchone()[0])

        count: int = await self._worker.run(op, write=False)
        return count

    def connect(self) -> sqlite3.Connection:
        """Open a new connection to the database (a convenience for scripts and tests).

        It uses Python's default transaction handling (``with conn:`` commits or
        rolls back), WAL mode and ``synchronous=FULL``.
        """
        conn = connect(self.path, busy_timeout=self._busy_timeout, synchronous="FULL", wal=True)
        conn.isolation_level = "DEFERRED"  # BEGIN before the first write, as by default
        return conn

    async def close(self) -> None:
        """Close the relay-side connection; idempotent."""
        await self._worker.close()


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


class _Sql:
    """Every statement, with the table name spliced in once."""

    def __init__(self, t: str) -> None:
        self.create_tables = (
            # seq is the rowid: SQLite has one writer at a time, so a larger seq
            # was committed later, and rows of one key are published by seq.
            f"""CREATE TABLE IF NOT EXISTS {t} (
                seq INTEGER PRIMARY KEY,
                msg_id TEXT NOT NULL,
                topic TEXT NOT NULL,
                msg_key TEXT,
                body BLOB NOT NULL,
                headers TEXT NOT NULL,
                created_at REAL NOT NULL,
                state INTEGER NOT NULL DEFAULT {PENDING},
                attempts INTEGER NOT NULL DEFAULT 0,
                available_at REAL NOT NULL DEFAULT 0,
                lease_owner TEXT,
                lease_expires REAL,
                sent_at REAL,
                parked_at REAL,
                last_error TEXT
            )""",
            f"CREATE INDEX IF NOT EXISTS {t}_pending ON {t} (seq) WHERE state = {PENDING}",
            # Rows in flight and rows waiting for a retry: few, found at once.
            f"CREATE INDEX IF NOT EXISTS {t}_leased ON {t} (lease_expires)"
            f" WHERE state = {PENDING} AND lease_expires IS NOT NULL",
            f"CREATE INDEX IF NOT EXISTS {t}_waiting ON {t} (available_at)"
            f" WHERE state = {PENDING} AND available_at > 0",
            f"CREATE INDEX IF NOT EXISTS {t}_sent ON {t} (sent_at) WHERE state = {SENT}",
        )
        self.insert = (
            f"INSERT INTO {t} (msg_id, topic, msg_key, body, headers, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)"
        )
        # `held`: per key, the first row that is leased by a live relay or waits
        # for a retry (both found through small partial indexes). Rows of a key
        # from that one on must wait; the others are claimed in seq order.
        # (A NOT EXISTS probe per row would be quadratic in a hot key's backlog.)
        self.claim = f"""WITH held AS (
                SELECT msg_key, min(seq) AS from_seq FROM (
                    SELECT msg_key, seq FROM {t} WHERE state = {PENDING}
                      AND lease_expires IS NOT NULL AND lease_expires > :now
                    UNION ALL
                    SELECT msg_key, seq FROM {t} WHERE state = {PENDING}
                      AND available_at > 0 AND available_at > :now
                ) WHERE msg_key IS NOT NULL
                GROUP BY msg_key
            )
            UPDATE {t} SET lease_owner = :owner, lease_expires = :expires
            WHERE seq IN (
                SELECT o.seq FROM {t} o
                LEFT JOIN held h ON h.msg_key = o.msg_key
                WHERE o.state = {PENDING} AND o.available_at <= :now
                  AND (o.lease_expires IS NULL OR o.lease_expires <= :now)
                  AND (h.from_seq IS NULL OR o.seq < h.from_seq)
                ORDER BY o.seq LIMIT :limit)
            RETURNING seq, msg_id, topic, msg_key, body, headers, attempts"""
        in_seqs = "seq IN (SELECT value FROM json_each(:seqs))"
        self.mark_sent = (
            f"UPDATE {t} SET state = {SENT}, sent_at = :now, lease_owner = NULL,"
            f" lease_expires = NULL WHERE {in_seqs}"
        )
        self.delete = f"DELETE FROM {t} WHERE {in_seqs}"
        self.retry_later = (
            f"UPDATE {t} SET attempts = attempts + 1, available_at = :at, last_error = :reason,"
            f" lease_owner = NULL, lease_expires = NULL"
            f" WHERE {in_seqs} AND lease_owner = :owner AND state = {PENDING}"
        )
        self.park = (
            f"UPDATE {t} SET state = {PARKED}, attempts = attempts + 1, last_error = :reason,"
            f" parked_at = :now, lease_owner = NULL, lease_expires = NULL"
            f" WHERE {in_seqs} AND state = {PENDING}"
        )
        self.release = (
            f"UPDATE {t} SET lease_owner = NULL, lease_expires = NULL"
            f" WHERE {in_seqs} AND lease_owner = :owner AND state = {PENDING}"
        )
        self.cleanup = f"DELETE FROM {t} WHERE state = {SENT} AND sent_at < ?"
        self.parked = (
            f"SELECT seq, msg_id, topic, msg_key, body, headers, attempts, last_error, parked_at"
            f" FROM {t} WHERE state = {PARKED} ORDER BY seq LIMIT ?"
        )
        self.requeue = (
            f"UPDATE {t} SET state = {PENDING}, attempts = 0, available_at = 0, parked_at = NULL"
            f" WHERE seq = ? AND state = {PARKED}"
        )
        self.pending = f"SELECT count(*) FROM {t} WHERE state = {PENDING}"
