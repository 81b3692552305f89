"""`PostgresJournal`: the flow journal in a PostgreSQL table (extra ``postgres``).

Every service process writes to the same table; ``sagaflow trace --journal
postgresql://...`` reads one flow back. Each batch is one multi-row ``INSERT``
on a connection the journal keeps (reconnected after a loss).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

from sagaflow._optional import require
from sagaflow.errors import ConfigurationError
from sagaflow.observability.journal import COLUMNS, FAILED_SQL, FlowSummary, JournalEntry

psycopg = require("psycopg", "postgres")

__all__ = ["PostgresJournal"]

_SQL_COLUMNS = ", ".join("grp" if name == "group" else name for name in COLUMNS)
_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _schema(table: str) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {table} (
    seq BIGSERIAL PRIMARY KEY,
    correlation_id TEXT NOT NULL, kind TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,
    service TEXT NOT NULL, event_id TEXT, event_type TEXT, causation_id TEXT,
    grp TEXT, step TEXT, attempt INTEGER NOT NULL, attempts INTEGER NOT NULL,
    duration DOUBLE PRECISION, outcome TEXT, error_type TEXT, error_message TEXT, detail TEXT
);
CREATE INDEX IF NOT EXISTS {table}_flow ON {table} (correlation_id, at);
CREATE INDEX IF NOT EXISTS {table}_at ON {table} (at);
CREATE INDEX IF NOT EXISTS {table}_type ON {table} (event_type, at) WHERE kind = 'publish';
"""


class PostgresJournal:
    """A `FlowJournal` in PostgreSQL.

    Args:
        url: A ``postgresql://`` connection URL.
        table: Table name (created if missing).
        connect_timeout: Seconds to wait for a connection.
    """

    def __init__(
        self, url: str, *, table: str = "sagaflow_journal", connect_timeout: float = 10.0
    ) -> None:
        if not _IDENT.match(table):
            raise ConfigurationError(f"invalid journal table name {table!r}")
        self.url = url
        self.table = table
        self.connect_timeout = connect_timeout
        self._conn: Any = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresJournal(table={self.table!r})"

    async def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout))
            )
            await conn.execute(_schema(self.table))
            self._conn = conn
        return self._conn

    async def _run(self, sql: str, params: Sequence[Any], *, fetch: bool) -> list[Any]:
        async with self._lock:
            conn = await self._connection()
            try:
                cursor = await conn.execute(sql, params)
                if not fetch:
                    return [cursor.rowcount]
                return list(await cursor.fetchall())
            except psycopg.OperationalError:
                # A lost connection: drop it so that the next call reconnects.
                await conn.close()
                raise

    async def write(self, entries: Sequence[JournalEntry]) -> None:
        """Append ``entries`` in one ``INSERT``."""
        if not entries:
            return
        row = "(" + ", ".join(["%s"] * len(COLUMNS)) + ")"
        sql = f"INSERT INTO {self.table} ({_SQL_COLUMNS}) VALUES " + ", ".join([row] * len(entries))
        params = [value for entry in entries for value in entry.to_row()]
        await self._run(sql, params, fetch=False)

    async def read(self, correlation_id: str) -> Sequence[JournalEntry]:
        """Return one flow's entries, oldest first."""
        sql = f"SELECT {_SQL_COLUMNS} FROM {self.table} WHERE correlation_id = %s ORDER BY at, seq"
        rows = await self._run(sql, (correlation_id,), fetch=True)
        return [JournalEntry.from_row(row) for row in rows]

    async def published(
        self, event_type: str, *, since: float, until: float, limit: int = 10_000
    ) -> Sequence[JournalEntry]:
        """Return publish entries of ``event_type`` in ``[since, until)``, oldest first."""
        sql = (
            f"SELECT {_SQL_COLUMNS} FROM {self.table} WHERE event_type = %s AND kind = 'publish' "
            "AND at >= %s AND at < %s ORDER BY at, seq LIMIT %s"
        )
        rows = await self._run(sql, (event_type, since, until, limit), fetch=True)
        return [JournalEntry.from_row(row) for row in rows]

    async def flows(
        self, *, since: float, failed_only: bool = False, limit: int = 100
    ) -> Sequence[FlowSummary]:
        """Return flows active since ``since``, most recent first."""
        sql = (
            f"SELECT correlation_id, MIN(at), MAX(at), COUNT(*), SUM({FAILED_SQL}) "
            f"FROM {self.table} WHERE at >= %s GROUP BY correlation_id "
            f"HAVING SUM({FAILED_SQL}) >= %s ORDER BY MAX(at) DESC LIMIT %s"
        )
        rows = await self._run(sql, (since, 1 if failed_only else 0, limit), fetch=True)
        return [
            FlowSummary(cid, first, last, int(n), int(bad)) for cid, first, last, n, bad in rows
        ]

    async def prune(self, *, before: float) -> int:
        """Delete entries older than ``before``; return how many."""
        result = await self._run(f"DELETE FROM {self.table} WHERE at < %s", (before,), fetch=False)
        return int(result[0])

    async def close(self) -> None:
        """Close the connection; idempotent."""
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None
