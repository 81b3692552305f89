"""`PostgresInbox`: a durable `Inbox` in PostgreSQL, markable in your own transaction.

Needs the ``postgres`` extra. Give it to the bus (``EventBus(inbox=PostgresInbox(url))``)
and the pipeline's check-then-mark survives restarts and is shared by every
process of a group. To make "handle once" exact, record the mark in the same
transaction as the handler's writes with `PostgresInbox.mark_in`::

    @bus.handler(OrderPlaced, group="billing")
    async def bill(event: OrderPlaced) -> None:
        async with pool.connection() as conn, conn.transaction():
            if not await inbox.mark_in(conn, "billing"):
                return  # a redelivery of an event already handled
            await conn.execute("INSERT INTO invoices ...")

``mark_in`` is ``INSERT ... ON CONFLICT DO NOTHING``: when two consumers handle
copies of one event at once, the second waits for the first transaction and
then learns the event was handled (``False``), so exactly one of them commits
its writes. Marks made by the pipeline (`mark`) from concurrent deliveries are
group-committed: one statement for many marks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from sagaflow.choreography._outbox_common import event_id_or_current
from sagaflow.choreography._postgres import PgAccess, identifier, user_connection
from sagaflow.clock import Clock, SystemClock
from sagaflow.errors import ConfigurationError, StoreError
from sagaflow.stores._batch import Batcher, PendingWrite
from sagaflow.stores._common import validate_identifier

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

__all__ = ["PostgresInbox"]

SCHEMA_VERSION: Final = 1
"""The newest inbox schema version this code knows."""


class PostgresInbox:
    """A durable inbox: (group, event id) marks in a PostgreSQL table.

    Args:
        url_or_pool: libpq URL or keyword string, or an `AsyncConnectionPool` you own.
        schema: PostgreSQL schema of the table (created if missing).
        table: Name of the inbox table.
        retention: Seconds marks are kept; a redelivery arriving later is not
            recognized. ``None`` keeps marks forever.
        cleanup_interval: Seconds between the cleanups `mark` runs by itself.
        pool_size: Most connections of an owned pool.
        connect_timeout: Seconds to wait for a connection.
        clock: Time source of ``handled_at`` and retention.
    """

    def __init__(
        self,
        url_or_pool: str | AsyncConnectionPool[Any],
        *,
        schema: str = "sagaflow",
        table: str = "inbox",
        retention: float | None = 7 * 86400.0,
        cleanup_interval: float = 600.0,
        pool_size: int = 4,
        connect_timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        if retention is not None and retention <= 0:
            raise ConfigurationError(f"retention must be positive or None, got {retention}")
        self.table = validate_identifier(table, "table").lower()
        self.retention = retention
        self.cleanup_interval = cleanup_interval
        self._clock = clock or SystemClock()
        schema = validate_identifier(schema, "schema").lower()
        self._sql = _Sql(identifier(schema), self.table)
        self._db = PgAccess(
            url_or_pool,
            schema=schema,
            version_table=self._sql.meta,
            version=SCHEMA_VERSION,
            create=self._sql.create_tables,
            pool_size=pool_size,
            connect_timeout=connect_timeout,
            name=f"sagaflow-inbox-{schema}",
        )
        self._batcher = Batcher(self._run_marks)
        self._next_cleanup = self._clock.now() + cleanup_interval

    def __repr__(self) -> str:
        return f"PostgresInbox({self._db.where}, schema={self.schema!r}, table={self.table!r})"

    @property
    def schema(self) -> str:
        """The PostgreSQL schema of the inbox table."""
        return self._db.schema

    async def create_schema(self) -> None:
        """Create the table if missing (the first `seen`/`mark` does it otherwise).

        `mark_in` does not create it: run this once before handlers use it.
        """
        await self._db.ensure_ready()

    # -- the Inbox protocol (called by the bus) -------------------------------------------

    async def seen(self, group: str, event_id: str) -> bool:
        """Return whether ``group`` already handled ``event_id``."""

        async def work(conn: Any) -> bool:
            cursor = await conn.execute(self._sql.seen, {"grp": group, "id": event_id})
            return await cursor.fetchone() is not None

        return await self._db.run(work)

    async def mark(self, group: str, event_id: str) -> None:
        """Record that ``group`` handled ``event_id`` (idempotent; group-committed)."""
        if self._db.closed:
            raise StoreError("the inbox is closed")
        now = self._clock.now()
        await self._batcher.submit(
            PendingWrite("mark", f"{group}\x00{event_id}", (group, event_id))
        )
        if self.retention is not None and now >= self._next_cleanup:
            self._next_cleanup = now + self.cleanup_interval
            await self.cleanup()

    async def _run_marks(self, batch: list[PendingWrite]) -> None:
        groups = [w.payload[0] for w in batch]
        ids = [w.payload[1] for w in batch]
        params = {"grps": groups, "ids": ids, "now": self._clock.now()}

        async def work(conn: Any) -> None:
            await conn.execute(self._sql.mark_many, params)

        try:
            await self._db.run(work)
        except Exception as exc:
            for write in batch:
                write.settle(error=exc)
            return
        for write in batch:
            write.settle()

    # -- in the handler's own transaction ---------------------------------------------------

    async def mark_in(self, conn: Any, group: str, event_id: str | None = None) -> bool:
        """Mark the event handled within ``conn``'s current transaction.

        Call it first in the handler's transaction: the mark commits or rolls
        back with the handler's writes.

        Args:
            conn: Your ``psycopg.AsyncConnection`` (in a transaction) or ``AsyncTransaction``.
            group: The handler's consumer group.
            event_id: The event id (default: the event being handled).

        Returns:
            ``True`` if this call recorded the mark, ``False`` if the group had
            already handled the event (skip the work).

        Raises:
            ConfigurationError: No ``event_id`` and no event is being handled.
        """
        event_id = event_id_or_current(event_id)
        connection = user_connection(conn)
        params = {"grp": group, "id": event_id, "now": self._clock.now()}
        cursor = await connection.execute(self._sql.mark_one, params)
        return await cursor.fetchone() is not None

    async def seen_in(self, conn: Any, group: str, event_id: str | None = None) -> bool:
        """Return whether ``group`` handled the event, reading through ``conn``."""
        event_id = event_id_or_current(event_id)
        cursor = await user_connection(conn).execute(self._sql.seen, {"grp": group, "id": event_id})
        return await cursor.fetchone() is not None

    # -- housekeeping ----------------------------------------------------------------------

    async def cleanup(self, *, handled_before: float | None = None) -> int:
        """Delete marks older than ``handled_before`` (default: now minus ``retention``).

        Returns:
            How many marks were deleted.
        """
        if handled_before is None:
            if self.retention is None:
                return 0
            handled_before = self._clock.now() - self.retention
        params = {"before": handled_before}

        async def work(conn: Any) -> int:
            return int((await conn.execute(self._sql.cleanup, params)).rowcount)

        return await self._db.run(work)

    async def close(self) -> None:
        """Wait for pending marks, then close the pool if it was opened here; idempotent."""
        await self._batcher.wait_idle()
        await self._db.close()


class _Sql:
    def __init__(self, schema: str, table: str) -> None:
        t = f"{schema}.{identifier(table)}"
        self.meta = f"{schema}.{identifier(table + '_meta')}"
        self.create_tables = [
            f"""CREATE TABLE IF NOT EXISTS {t} (
                grp text NOT NULL,
                event_id text NOT NULL,
                handled_at double precision NOT NULL,
                PRIMARY KEY (grp, event_id)
            )""",
            f"CREATE INDEX IF NOT EXISTS {identifier(table + '_handled')} ON {t} (handled_at)",
        ]
        self.seen = f"SELECT 1 FROM {t} WHERE grp = %(grp)s AND event_id = %(id)s"
        self.mark_one = (
            f"INSERT INTO {t} (grp, event_id, handled_at)"
            " VALUES (%(grp)s, %(id)s, %(now)s::float8)"
            " ON CONFLICT DO NOTHING RETURNING 1"
        )
        # Sorted: two batches inserting overlapping marks take row locks in one order.
        self.mark_many = f"""INSERT INTO {t} (grp, event_id, handled_at)
            SELECT g, i, %(now)s::float8
            FROM unnest(%(grps)s::text[], %(ids)s::text[]) AS u(g, i)
            ORDER BY g, i
            ON CONFLICT DO NOTHING"""
        self.cleanup = f"DELETE FROM {t} WHERE handled_at < %(before)s::float8"
