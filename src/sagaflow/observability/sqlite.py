"""`SqliteJournal`: the flow journal in a SQLite file, shareable by several processes.

Each service process of a demo or a small deployment opens the same file; WAL
mode lets readers (``sagaflow trace``) work while writers append, and a busy
timeout makes concurrent writers wait for each other instead of failing. Calls
run in a worker thread so the event loop never blocks on the disk.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence

from sagaflow.observability.journal import COLUMNS, FAILED_SQL, FlowSummary, JournalEntry
from sagaflow.stores._sqlite import connect, rollback

__all__ = ["SqliteJournal"]

TABLE = "sagaflow_journal"

_SCHEMA = (
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    correlation_id TEXT NOT NULL, kind TEXT NOT NULL, at REAL NOT NULL,
    service TEXT NOT NULL, event_id TEXT, event_type TEXT, causation_id TEXT,
    grp TEXT, step TEXT, attempt INTEGER NOT NULL, attempts INTEGER NOT NULL,
    duration REAL, outcome TEXT, error_type TEXT, error_message TEXT, detail TEXT
)""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_flow ON {TABLE} (correlation_id, at)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_at ON {TABLE} (at)",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_type ON {TABLE} (event_type, at) WHERE kind = 'publish'",
)

# "group" is an SQL keyword: the column is "grp".
_SQL_COLUMNS = ", ".join("grp" if name == "group" else name for name in COLUMNS)
_INSERT = f"INSERT INTO {TABLE} ({_SQL_COLUMNS}) VALUES ({', '.join('?' * len(COLUMNS))})"
_READ = f"SELECT {_SQL_COLUMNS} FROM {TABLE} WHERE correlation_id = ? ORDER BY at, seq"
_FLOWS = (
    f"SELECT correlation_id, MIN(at), MAX(at), COUNT(*), SUM({FAILED_SQL}) FROM {TABLE} "
    f"WHERE at >= ? GROUP BY correlation_id HAVING SUM({FAILED_SQL}) >= ? "
    "ORDER BY MAX(at) DESC LIMIT ?"
)
_PUBLISHED = (
    f"SELECT {_SQL_COLUMNS} FROM {TABLE} WHERE event_type = ? AND kind = 'publish' "
    "AND at >= ? AND at < ? ORDER BY at, seq LIMIT ?"
)


class SqliteJournal:
    """A `FlowJournal` in a SQLite database file.

    Args:
        path: The database file (created if missing), or ``":memory:"``.
        busy_timeout: Seconds a writer waits for another process's write.
    """

    def __init__(self, path: str, *, busy_timeout: float = 10.0) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        # One connection used from worker threads, one call at a time.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SqliteJournal({self.path!r})"

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # The journal is diagnostics: losing the last batch on power loss is fine.
            conn = connect(
                self.path, busy_timeout=self.busy_timeout, synchronous="NORMAL", wal=True
            )
            try:
                # Under the write lock from the start: a schema created in autocommit
                # mode reads first and fails at once ("database is locked", no busy
                # wait) when another process creates it at the same moment.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute("COMMIT")
                except BaseException:
                    rollback(conn)
                    raise
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _write(self, rows: list[tuple[object, ...]]) -> None:
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT, rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _prune(self, before: float) -> int:
        with self._lock:
            cursor = self._connection().execute(f"DELETE FROM {TABLE} WHERE at < ?", (before,))
            return cursor.rowcount

    def _query(self, sql: str, params: tuple[object, ...]) -> list[JournalEntry]:
        with self._lock:
            rows = self._connection().execute(sql, params).fetchall()
        return [JournalEntry.from_row(row) for row in rows]

    async def write(self, entries: Sequence[JournalEntry]) -> None:
        """Append ``entries`` in one transaction."""
        if entries:
            await asyncio.to_thread(self._write, [entry.to_row() for entry in entries])

    async def read(self, correlation_id: str) -> Sequence[JournalEntry]:
        """Return one flow's entries, oldest first."""
        return await asyncio.to_thread(self._query, _READ, (correlation_id,))

    async def published(
        self, event_type: str, *, since: float, until: float, limit: int = 10_000
    ) -> Sequence[JournalEntry]:
        """Return publish entries of ``event_type`` in ``[since, until)``, oldest first."""
        return await asyncio.to_thread(self._query, _PUBLISHED, (event_type, since, until, limit))

    def _flows(self, params: tuple[object, ...]) -> list[FlowSummary]:
        with self._lock:
            rows = self._connection().execute(_FLOWS, params).fetchall()
        return [FlowSummary(*row) for row in rows]

    async def flows(
        self, *, since: float, failed_only: bool = False, limit: int = 100
    ) -> Sequence[FlowSummary]:
        """Return flows active since ``since``, most recent first."""
        return await asyncio.to_thread(self._flows, (since, 1 if failed_only else 0, limit))

    async def prune(self, *, before: float) -> int:
        """Delete entries older than ``before``; return how many."""
        return await asyncio.to_thread(self._prune, before)

    async def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
