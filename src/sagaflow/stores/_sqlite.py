"""One worker thread and one connection per SQLite database (private).

Shared by `SQLiteSagaStore` and the SQLite outbox and inbox: blocking ``sqlite3``
calls run on a dedicated thread; calls queued while it is busy run together in
*one* transaction (each in its own savepoint) and are committed once, so that
many concurrent writes cost one ``fsync``. Batches made only of reads run in a
deferred transaction and never take the write lock.

Opt-in ``inline`` mode: a call made while the worker has nothing queued or
running, by the same task as the previous call, runs right away on the calling
(event loop) thread, sparing the two thread hand-offs; it blocks that thread
for the transaction, ``fsync`` included. Calls from several tasks in turn still
go to the thread and commit together.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import sqlite3
import threading
import time
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

_SQLITE_BUSY = 5
# Inline calls hand control back to the event loop at least this often (seconds),
# so that a run of them cannot starve other tasks.
_INLINE_YIELD_EVERY = 0.001


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
        inline: Run a call on the caller's thread when nothing else is queued
            or running (see the module docstring). The connection then rests
            with no busy timeout, so that an inline call never waits for
            another process's lock: it goes to the thread instead, which waits
            up to ``busy_timeout``.
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
        inline: bool = False,
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
        self._inline = inline
        # Held by whoever runs a transaction: the thread, or a caller running inline.
        self._conn_lock = threading.Lock()
        # Calls handed to the thread and not yet finished (counted in inline mode
        # only): an inline call must not overtake them.
        self._unfinished = 0
        self._count_lock = threading.Lock()
        self._last_yield = 0.0
        self._last_task = 0  # id() of the task that made the latest call

    async def run(self, op: Op, *, write: bool = True) -> Any:
        """Run ``op(conn)`` in the worker's transaction and return its result.

        Raises:
            StoreError: The worker is closed, or the database failed
                (`StoreUnavailableError` when it is locked or unreachable).
        """
        if self._closed:
            raise StoreError(self._closed_message)
        if self._inline:
            # Only a call from the task that made the previous call runs inline:
            # calls from several tasks in turn are concurrent work, which the
            # thread commits together (and an inline call would keep from queueing).
            task = id(asyncio.current_task())
            same_task, self._last_task = task == self._last_task, task
            done, result = self._try_inline(op, write) if same_task else (False, None)
            if done:
                now = time.monotonic()
                if now - self._last_yield >= _INLINE_YIELD_EVERY:
                    self._last_yield = now
                    await asyncio.sleep(0)
                if isinstance(result, _Failed):
                    raise result.error
                return result
            with self._count_lock:
                self._unfinished += 1
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
                return  # never used: no connection (only the thread opens it)
            self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._stopped.wait)

    # -- inline calls (caller's thread) ----------------------------------------------------

    def _try_inline(self, op: Op, write: bool) -> tuple[bool, Any]:
        """Run ``op`` now if the worker is idle; ``(False, None)`` if it must queue.

        Returns ``(True, result)``, the result wrapped in `_Failed` when the call
        failed. A call that finds the database locked by another connection is
        rolled back and left to the thread, which runs ``op`` again.
        """
        with self._count_lock:
            if self._unfinished:
                return False, None  # FIFO: calls already handed to the thread go first
        if not self._conn_lock.acquire(blocking=False):
            return False, None
        try:
            conn = self._conn
            if conn is None:
                # The first call opens the connection and creates the schema on
                # the thread: it may wait for another process's lock.
                return False, None
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result, error = self._run_alone(conn, op)
                    conn.execute("COMMIT")
                except BaseException:
                    rollback(conn)
                    raise
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_BUSY:
                    # Another connection holds the lock; nothing was written. The
                    # thread waits for it, up to busy_timeout.
                    return False, None
                return True, _Failed(map_error(exc))
            except Exception as exc:
                return True, _Failed(map_error(exc))
            if error is not None:
                return True, _Failed(error)
            return True, result
        finally:
            self._conn_lock.release()

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
            self._close_connection()
            self._stopped.set()

    def _close_connection(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

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
        with self._conn_lock:
            outcomes = self._transact(batch)
        if self._inline:
            with self._count_lock:
                self._unfinished -= len(batch)
        _settle_all(outcomes)

    def _transact(self, batch: list[_Job]) -> list[_Outcome]:
        try:
            conn = self._connection()
            if self._inline:  # at rest the connection never waits (see `inline`)
                conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            try:
                # Reads alone need no write lock: the application keeps writing meanwhile.
                conn.execute("BEGIN IMMEDIATE" if any(j.write for j in batch) else "BEGIN")
                try:
                    if len(batch) == 1:  # alone in its transaction: no savepoint needed
                        job = batch[0]
                        result, error = self._run_alone(conn, job.op)
                        outcomes = [(job, result, error)]
                    else:
                        outcomes = [self._run_one(conn, job) for job in batch]
                    conn.execute("COMMIT")
                except BaseException:
                    rollback(conn)
                    raise
            finally:
                if self._inline:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA busy_timeout = 0")
        except Exception as exc:  # the transaction itself failed: nothing was written
            error = map_error(exc)
            outcomes = [(job, None, error) for job in batch]
        return outcomes

    @property
    def _busy_timeout_ms(self) -> int:
        return int(self._busy_timeout * 1000)

    @staticmethod
    def _run_alone(conn: sqlite3.Connection, op: Op) -> tuple[Any, BaseException | None]:
        """Run the only call of a transaction: its failure rolls the transaction back.

        Two statements (SAVEPOINT, RELEASE) fewer than `_run_one` on the common
        sequential path. Returns ``(result, error)``.
        """
        try:
            result = op(conn)
        except Exception as exc:
            if isinstance(exc, sqlite3.Error) and is_fatal(exc):
                raise  # handled by the caller, like any failure of the transaction
            rollback(conn)
            conn.execute("BEGIN")  # so that the caller's COMMIT ends an empty transaction
            return None, map_error(exc)
        return result, None

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
                if self._inline:
                    conn.execute("PRAGMA busy_timeout = 0")
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn


@dataclass(slots=True)
class _Failed:
    """The error of an inline call (a result may itself be an exception object)."""

    error: BaseException


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
    # sqlite3 raises OverflowError, not an sqlite3.Error, binding an int beyond 64 bits.
    if isinstance(exc, StoreError) or not isinstance(exc, sqlite3.Error | OverflowError):
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
