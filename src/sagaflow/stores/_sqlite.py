"""One worker thread and one connection per SQLite database (private).

Shared by `SQLiteSagaStore` and the SQLite outbox and inbox: blocking ``sqlite3``
calls run on a dedicated thread; calls queued while it is busy run together in
*one* transaction (each in its own savepoint) and are committed once, so that
many concurrent writes cost one ``fsync``. Batches made only of reads run in a
deferred transaction and never take the write lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sagaflow.errors import (
    ConfigurationError,
    SchemaVersionError,
    StoreError,
    StoreUnavailableError,
)

Op = Callable[[sqlite3.Connection], Any]
Setup = Callable[[sqlite3.Connection], None]
_Outcome = tuple["_Job", Any, BaseException | None]


@dataclass(slots=True)
class _Job:
    op: Op
    write: bool
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def connect(
    path: str, *, busy_timeout: float, synchronous: str, wal: bool, foreign_keys: bool = False
) -> sqlite3.Connection:
    """Open a connection in autocommit mode (transactions are explicit) and set pragmas."""
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        if wal:
            # WAL lets the relay read while the application writes. Switching
            # needs a moment without other writers; if it cannot, keep the mode.
            with contextlib.suppress(sqlite3.OperationalError):
                conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        if foreign_keys:
            # Outside any transaction: inside one this pragma is silently ignored.
            conn.execute("PRAGMA foreign_keys=ON")
    except BaseException:
        conn.close()
        raise
    return conn


class SQLiteWorker:
    """Runs operations on one connection in a thread, with group commit.

    Args:
        path: Database file.
        setup: Called once on the fresh connection, inside a write transaction
            (creates or checks the schema).
        busy_timeout: Seconds to wait for another connection's write lock.
        synchronous: ``"FULL"`` or ``"NORMAL"``.
        wal: Switch the database to WAL mode.
        max_batch: Most calls committed together.
        name: Thread name.
        foreign_keys: Enforce foreign keys on the connection.
        closed_message: Message of the `StoreError` raised by `run` after `close`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        setup: Setup,
        busy_timeout: float = 5.0,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        wal: bool = True,
        max_batch: int = 512,
        name: str = "sagaflow-sqlite",
        foreign_keys: bool = False,
        closed_message: str = "the SQLite connection is closed",
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigurationError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        self.path = os.fspath(path)
        self._setup = setup
        self._busy_timeout = busy_timeout
        self._synchronous = synchronous
        self._wal = wal
        self._max_batch = max(1, max_batch)
        self._name = name
        self._foreign_keys = foreign_keys
        self._closed_message = closed_message
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._stopped = threading.Event()

    async def run(self, op: Op, *, write: bool = True) -> Any:
        """Run ``op(conn)`` in the worker's transaction and return its result.

        Raises:
            StoreError: The worker is closed, or the database failed
                (`StoreUnavailableError` when it is locked or unreachable).
        """
        if self._closed:
            raise StoreError(self._closed_message)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Job(op, write, future, loop))
        return await future

    async def close(self) -> None:
        """Finish queued calls, then close the connection; idempotent."""
        if not self._closed:
            self._closed = True
            if self._thread is None:
                return
            self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._stopped.wait)

    # -- the thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                batch, stop = self._next_batch()
                if batch:
                    self._run_batch(batch)
                if stop:
                    return
        finally:
            if self._conn is not None:
                self._conn.close()
            self._stopped.set()

    def _next_batch(self) -> tuple[list[_Job], bool]:
        first = self._queue.get()
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < self._max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _run_batch(self, batch: list[_Job]) -> None:
        try:
            conn = self._connection()
            # Reads alone need no write lock: the application keeps writing meanwhile.
            conn.execute("BEGIN IMMEDIATE" if any(j.write for j in batch) else "BEGIN")
            try:
                if len(batch) == 1:  # alone in its transaction: no savepoint needed
                    outcomes = [self._run_alone(conn, batch[0])]
                else:
                    outcomes = [self._run_one(conn, job) for job in batch]
                conn.execute("COMMIT")
            except BaseException:
                rollback(conn)
                raise
        except Exception as exc:  # the transaction itself failed: nothing was written
            error = map_error(exc)
            outcomes = [(job, None, error) for job in batch]
        _settle_all(outcomes)

    @staticmethod
    def _run_alone(conn: sqlite3.Connection, job: _Job) -> _Outcome:
        """Run the only job of a transaction: its failure rolls the transaction back.

        Two statements (SAVEPOINT, RELEASE) fewer than `_run_one` on the common
        sequential path.
        """
        try:
            result = job.op(conn)
        except Exception as exc:
            if isinstance(exc, sqlite3.Error) and is_fatal(exc):
                raise  # handled by the caller, like any failure of the transaction
            rollback(conn)
            conn.execute("BEGIN")  # so that the caller's COMMIT ends an empty transaction
            return job, None, map_error(exc)
        return job, result, None

    @staticmethod
    def _run_one(conn: sqlite3.Connection, job: _Job) -> _Outcome:
        conn.execute("SAVEPOINT op")
        try:
            result = job.op(conn)
        except Exception as exc:
            if isinstance(exc, sqlite3.Error) and is_fatal(exc):
                raise  # I/O trouble dooms the whole transaction, not just this call
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return job, None, map_error(exc)
        conn.execute("RELEASE op")
        return job, result, None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = connect(
                self.path,
                busy_timeout=self._busy_timeout,
                synchronous=self._synchronous,
                wal=self._wal,
                foreign_keys=self._foreign_keys,
            )
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    self._setup(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    rollback(conn)
                    raise
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any, keeping the caller's error."""
    if conn.in_transaction:
        # If even ROLLBACK fails the connection is broken; the caller gets the first error.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def is_fatal(exc: sqlite3.Error) -> bool:
    """Whether an error inside one call dooms the whole transaction (I/O, full disk)."""
    return not isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError)


_UNAVAILABLE_HINTS = ("locked", "busy", "unable to open", "disk i/o", "readonly", "read-only")


def map_error(exc: BaseException) -> BaseException:
    """Translate a driver error into a sagaflow `StoreError` (others pass through)."""
    if isinstance(exc, StoreError) or not isinstance(exc, sqlite3.Error):
        return exc
    message = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and any(
        hint in message.lower() for hint in _UNAVAILABLE_HINTS
    ):
        mapped: StoreError = StoreUnavailableError(f"SQLite database unavailable: {message}")
    else:
        mapped = StoreError(f"SQLite error: {message}")
    mapped.__cause__ = exc
    return mapped


def _settle_all(outcomes: list[_Outcome]) -> None:
    # One wake-up per event loop per batch rather than one per call.
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, items in by_loop.items():
        # A closed loop raises RuntimeError: nobody waits for these results any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[_Outcome]) -> None:
    for job, result, error in items:
        if job.future.done():
            continue  # the caller was cancelled
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)


def create_versioned_tables(
    conn: sqlite3.Connection, *, meta_table: str, tables: Sequence[str], version: int
) -> None:
    """Create ``tables`` if missing and record ``version`` in ``meta_table``.

    Args:
        conn: The connection, inside a write transaction.
        meta_table: Key-value table holding ``schema_version``; created if missing.
        tables: ``CREATE ... IF NOT EXISTS`` statements; they run on every call, so
            they must be idempotent.
        version: The newest schema version this code knows.

    Raises:
        SchemaVersionError: The tables were made by a newer sagaflow; nothing is created.
    """
    conn.execute(
        f"CREATE TABLE IF NOT EXISTS {meta_table} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
    )
    row = conn.execute(f"SELECT value FROM {meta_table} WHERE key = 'schema_version'").fetchone()
    if row is not None and int(row[0]) > version:
        raise SchemaVersionError(int(row[0]), version)
    for statement in tables:
        conn.execute(statement)
    if row is None:
        conn.execute(
            f"INSERT OR REPLACE INTO {meta_table} (key, value) VALUES ('schema_version', ?)",
            (str(version),),
        )


def is_missing_table(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` says a table does not exist (the schema was never created)."""
    return "no such table" in str(exc).lower()
