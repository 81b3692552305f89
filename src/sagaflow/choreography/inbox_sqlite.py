"""`SQLiteInbox`: a durable `Inbox` in a SQLite table, markable in your own transaction.

Give it to the bus (``EventBus(inbox=SQLiteInbox("app.db"))``) and the pipeline's
check-then-mark survives restarts. To make "handle once" exact, record the mark
in the same transaction as the handler's writes with `SQLiteInbox.mark_in`::

    @bus.handler(OrderPlaced, group="billing")
    def bill(event: OrderPlaced) -> None:  # sync handlers run in a worker thread
        with conn:  # one transaction: the invoice and the mark, or neither
            if not inbox.mark_in(conn, "billing"):
                return  # a redelivery of an event already handled
            conn.execute("INSERT INTO invoices ...")

``mark_in`` returns ``False`` when the group already handled the event; the
pipeline's own mark after the handler is then a no-op. Marks older than
``retention`` are deleted by `SQLiteInbox.cleanup` (also run every
``cleanup_interval`` seconds by `mark`).
"""

from __future__ import annotations

import os
import sqlite3
from typing import Final, Literal

from sagaflow.choreography._outbox_common import event_id_or_current
from sagaflow.clock import Clock, SystemClock
from sagaflow.errors import ConfigurationError
from sagaflow.stores._common import validate_identifier
from sagaflow.stores._sqlite import (
    SQLiteWorker,
    connect,
    create_versioned_tables,
    is_missing_table,
)

__all__ = ["SQLiteInbox"]

SCHEMA_VERSION: Final = 1
"""The newest inbox schema version this code knows."""


class SQLiteInbox:
    """A durable inbox: (group, event id) marks in a SQLite table.

    Args:
        path: Database file (normally the one your handlers write to).
        table: Name of the inbox table.
        retention: Seconds marks are kept; a redelivery arriving later than this
            is not recognized. ``None`` keeps marks forever.
        cleanup_interval: Seconds between the cleanups `mark` runs by itself.
        clock: Time source of ``handled_at`` and retention.
        busy_timeout: Seconds to wait for another connection's write lock.
        synchronous: ``"FULL"`` or ``"NORMAL"`` for the inbox's own connection.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        table: str = "sagaflow_inbox",
        retention: float | None = 7 * 86400.0,
        cleanup_interval: float = 600.0,
        clock: Clock | None = None,
        busy_timeout: float = 5.0,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
    ) -> None:
        if retention is not None and retention <= 0:
            raise ConfigurationError(f"retention must be positive or None, got {retention}")
        self.path = os.fspath(path)
        self.table = validate_identifier(table, "table")
        self.retention = retention
        self.cleanup_interval = cleanup_interval
        self._clock = clock or SystemClock()
        self._sql = _Sql(self.table)
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._worker = SQLiteWorker(
            self.path,
            setup=self.create_schema,
            busy_timeout=busy_timeout,
            synchronous=synchronous,
            name=f"sagaflow-inbox:{self.path}",
        )
        self._next_cleanup = self._clock.now() + cleanup_interval

    def __repr__(self) -> str:
        return f"SQLiteInbox({self.path!r}, table={self.table!r})"

    def create_schema(self, conn: sqlite3.Connection) -> None:
        """Create the inbox table on ``conn`` if missing (in its current transaction).

        Raises:
            SchemaVersionError: The table was made by a newer sagaflow.
        """
        create_versioned_tables(
            conn,
            meta_table=f"{self.table}_meta",
            tables=self._sql.create_tables,
            version=SCHEMA_VERSION,
        )

    # -- the Inbox protocol (called by the bus) -------------------------------------------

    async def seen(self, group: str, event_id: str) -> bool:
        """Return whether ``group`` already handled ``event_id``."""
        query = self._sql.seen

        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute(query, (group, event_id)).fetchone() is not None

        found: bool = await self._worker.run(op, write=False)
        return found

    async def mark(self, group: str, event_id: str) -> None:
        """Record that ``group`` handled ``event_id`` (idempotent; group-committed)."""
        now = self._clock.now()
        await self._worker.run(lambda conn: conn.execute(self._sql.mark, (group, event_id, now)))
        if self.retention is not None and now >= self._next_cleanup:
            self._next_cleanup = now + self.cleanup_interval
            await self.cleanup()

    # -- in the handler's own transaction ---------------------------------------------------

    def mark_in(self, conn: sqlite3.Connection, group: str, event_id: str | None = None) -> bool:
        """Mark the event handled within ``conn``'s current transaction.

        Call it first in the handler's transaction: it commits or rolls back with
        the handler's writes, so a crash can never leave the writes without the
        mark (or the mark without the writes).

        Args:
            conn: Your connection, inside the handler's transaction.
            group: The handler's consumer group.
            event_id: The event id (default: the event being handled).

        Returns:
            ``True`` if this call recorded the mark, ``False`` if the group had
            already handled the event (skip the work and let the transaction end).

        Raises:
            ConfigurationError: No ``event_id`` and no event is being handled.
        """
        event_id = event_id_or_current(event_id)
        params = (group, event_id, self._clock.now())
        try:
            cursor = conn.execute(self._sql.mark, params)
        except sqlite3.OperationalError as exc:
            if not is_missing_table(exc):
                raise
            self.create_schema(conn)
            cursor = conn.execute(self._sql.mark, params)
        return cursor.rowcount == 1

    def seen_in(self, conn: sqlite3.Connection, group: str, event_id: str | None = None) -> bool:
        """Return whether ``group`` handled the event, reading through ``conn``."""
        event_id = event_id_or_current(event_id)
        try:
            return conn.execute(self._sql.seen, (group, event_id)).fetchone() is not None
        except sqlite3.OperationalError as exc:
            if not is_missing_table(exc):
                raise
            return False

    # -- housekeeping ----------------------------------------------------------------------

    async def cleanup(self, *, handled_before: float | None = None) -> int:
        """Delete marks older than ``handled_before`` (default: now minus ``retention``).

        Returns:
            How many marks were deleted (``0`` when retention is ``None`` and no
            cutoff is given).
        """
        if handled_before is None:
            if self.retention is None:
                return 0
            handled_before = self._clock.now() - self.retention
        cutoff = handled_before

        def op(conn: sqlite3.Connection) -> int:
            return int(conn.execute(self._sql.cleanup, (cutoff,)).rowcount)

        deleted: int = await self._worker.run(op)
        return deleted

    def connect(self) -> sqlite3.Connection:
        """Open a new connection to the database with Python's default transactions."""
        conn = connect(
            self.path, busy_timeout=self._busy_timeout, synchronous=self._synchronous, wal=True
        )
        conn.isolation_level = "DEFERRED"
        return conn

    async def close(self) -> None:
        """Close the inbox's own connection; idempotent."""
        await self._worker.close()


class _Sql:
    def __init__(self, t: str) -> None:
        self.create_tables = (
            f"""CREATE TABLE IF NOT EXISTS {t} (
                grp TEXT NOT NULL,
                event_id TEXT NOT NULL,
                handled_at REAL NOT NULL,
                PRIMARY KEY (grp, event_id)
            ) WITHOUT ROWID""",
            f"CREATE INDEX IF NOT EXISTS {t}_handled ON {t} (handled_at)",
        )
        self.seen = f"SELECT 1 FROM {t} WHERE grp = ? AND event_id = ?"
        self.mark = f"INSERT OR IGNORE INTO {t} (grp, event_id, handled_at) VALUES (?, ?, ?)"
        self.cleanup = f"DELETE FROM {t} WHERE handled_at < ?"
