"""`SQLiteSagaStore`: the embedded durable saga store (stdlib `sqlite3`, no server).

Design:

* **One worker thread, one connection.** SQLite serializes writers anyway; a
  single dedicated thread keeps blocking I/O (and ``fsync``) off the event loop
  and makes every call run in order.
* **Group commit.** Calls queue up while the worker is busy; the worker then runs
  the whole queue in *one* transaction, each call inside its own savepoint, and
  commits once. Every call's checks (version, fencing token) run inside that
  transaction, so batching changes nothing but the number of ``fsync`` calls: a
  call's future resolves only after the commit that holds its write.
* **WAL mode, ``synchronous=FULL`` by default.** In WAL mode ``FULL`` syncs the
  log at every commit, so a write that returned survives a crash of the process
  *and* of the machine (power loss). ``NORMAL`` survives a process crash
  (``kill -9``) but may lose the last commits on power loss; pass it if that
  trade is acceptable.
* Several processes may share one database file (a crashed worker and its
  replacement, the CLI): every write transaction is ``BEGIN IMMEDIATE`` and
  waits up to ``busy_timeout`` for the file lock.
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
from typing import Any, Final, Literal

from sagaflow.clock import Clock, SystemClock
from sagaflow.errors import (
    ConcurrencyError,
    ConfigurationError,
    FencedError,
    SagaAlreadyExistsError,
    SagaNotFoundError,
    SchemaVersionError,
    StoreError,
    StoreUnavailableError,
)
from sagaflow.orchestration.records import (
    Claim,
    RecordKind,
    SagaLog,
    SagaRecord,
    SagaStatus,
    SagaSummary,
    status_after,
)
from sagaflow.stores._common import (
    ACTIVE_STATUSES,
    check_create_records,
    decode_data,
    encode_data,
    saga_name_of,
    validate_identifier,
)

__all__ = ["SQLiteSagaStore"]

SCHEMA_VERSION: Final = 1
"""The newest schema version this code knows."""

_Row = tuple[str, str | None, int, float, str | None]  # kind, step, attempt, at, data
_Op = Callable[[sqlite3.Connection], Any]


@dataclass(slots=True)
class _Job:
    op: _Op
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class SQLiteSagaStore:
    """A durable `SagaStore` in one SQLite file.

    Args:
        path: Database file (created if missing) or ``":memory:"`` (not durable).
        clock: Time source for leases (inject a fake clock in tests).
        synchronous: ``"FULL"`` (default; survives power loss) or ``"NORMAL"``
            (survives a process crash only; faster on slow disks).
        busy_timeout: Seconds to wait for another process's write lock before
            failing with `StoreUnavailableError`.
        table_prefix: Prefix of the store's table names.
        max_batch: Most calls committed together in one transaction.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout: float = 5.0,
        table_prefix: str = "sagaflow_",
        max_batch: int = 512,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ConfigurationError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        self._path = os.fspath(path)
        self._clock = clock or SystemClock()
        self._synchronous = synchronous
        self._busy_timeout = busy_timeout
        self._prefix = validate_identifier(table_prefix, "table_prefix") if table_prefix else ""
        self._max_batch = max(1, max_batch)
        self._sql = _Sql(self._prefix)
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stopped = threading.Event()

    def __repr__(self) -> str:
        return f"SQLiteSagaStore({self._path!r})"

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    # -- writing ---------------------------------------------------------------------

    async def create(
        self, saga_id: str, records: Sequence[SagaRecord], *, owner: str, lease: float
    ) -> Claim:
        """Create a saga leased to ``owner`` (see `SagaStore.create`)."""
        check_create_records(records)
        rows = _encode(records)
        name = saga_name_of(records)
        status = status_after(None, records)
        sql = self._sql

        def op(conn: sqlite3.Connection) -> Claim:
            if conn.execute(sql.exists, (saga_id,)).fetchone() is not None:
                raise SagaAlreadyExistsError(saga_id)
            expires = self._clock.now() + lease
            conn.execute(
                sql.insert_saga,
                (saga_id, name, status.value, len(rows), owner, expires, rows[-1][3]),
            )
            _insert_records(conn, sql, saga_id, 0, rows)
            return Claim(saga_id, 1, expires)

        result: Claim = await self._submit(op)
        return result

    async def append(
        self,
        saga_id: str,
        records: Sequence[SagaRecord],
        *,
        expected_version: int,
        fencing_token: int,
    ) -> int:
        """Append atomically with fencing and version checks (see `SagaStore.append`)."""
        rows = _encode(records)
        sql = self._sql

        def op(conn: sqlite3.Connection) -> int:
            found = conn.execute(sql.head, (saga_id,)).fetchone()
            if found is None:
                raise SagaNotFoundError(saga_id)
            status, version, token = SagaStatus(found[0]), int(found[1]), int(found[2])
            if fencing_token != token:
                raise FencedError(saga_id, fencing_token=fencing_token, current_token=token)
            if expected_version != version:
                raise ConcurrencyError(
                    saga_id, expected_version=expected_version, actual_version=version
                )
            if not rows:
                return version
            _insert_records(conn, sql, saga_id, version, rows)
            new_status = status_after(status, records)
            conn.execute(
                sql.update_after_append,
                (version + len(rows), new_status.value, rows[-1][3], saga_id),
            )
            return version + len(rows)

        result: int = await self._submit(op)
        return result

    # -- reading ---------------------------------------------------------------------

    async def load(self, saga_id: str) -> SagaLog:
        """Return the saga's log (see `SagaStore.load`)."""
        sql = self._sql

        def op(conn: sqlite3.Connection) -> SagaLog:
            head = conn.execute(sql.load_head, (saga_id,)).fetchone()
            if head is None:
                raise SagaNotFoundError(saga_id)
            rows = conn.execute(sql.load_records, (saga_id,)).fetchall()
            return SagaLog(
                saga_id=saga_id,
                records=tuple(_decode(row) for row in rows),
                status=SagaStatus(head[0]),
                fencing_token=int(head[1]),
                owner=head[2],
                lease_expires=head[3],
            )

        result: SagaLog = await self._submit(op)
        return result

    async def list_sagas(
        self, *, status: SagaStatus | None = None, limit: int = 100
    ) -> Sequence[SagaSummary]:
        """List sagas, most recently updated first (see `SagaStore.list_sagas`)."""
        sql = self._sql

        def op(conn: sqlite3.Connection) -> list[SagaSummary]:
            if status is None:
                rows = conn.execute(sql.list_all, (limit,)).fetchall()
            else:
                rows = conn.execute(sql.list_status, (status.value, limit)).fetchall()
            return [
                SagaSummary(
                    saga_id=row[0],
                    saga_name=row[1],
                    status=SagaStatus(row[2]),
                    version=int(row[3]),
                    updated_at=float(row[4]),
                    owner=row[5],
                )
                for row in rows
            ]

        result: list[SagaSummary] = await self._submit(op)
        return result

    # -- leases ----------------------------------------------------------------------

    async def claim(self, *, owner: str, lease: float, limit: int) -> Sequence[Claim]:
        """Lease unfinished sagas whose lease lapsed (see `SagaStore.claim`)."""
        sql = self._sql

        def op(conn: sqlite3.Connection) -> list[Claim]:
            now = self._clock.now()
            found = conn.execute(
                sql.claimable, (*(s.value for s in ACTIVE_STATUSES), now, limit)
            ).fetchall()
            expires = now + lease
            claims = []
            for saga_id, token in found:
                conn.execute(sql.grant, (token + 1, owner, expires, saga_id))
                claims.append(Claim(saga_id, token + 1, expires))
            return claims

        result: list[Claim] = await self._submit(op)
        return result

    async def acquire(self, saga_id: str, *, owner: str, lease: float) -> Claim:
        """Lease one saga by id (see `SagaStore.acquire`)."""
        sql = self._sql

        def op(conn: sqlite3.Connection) -> Claim:
            found = conn.execute(sql.lease_of, (saga_id,)).fetchone()
            if found is None:
                raise SagaNotFoundError(saga_id)
            token, holder, expires = int(found[0]), found[1], found[2]
            now = self._clock.now()
            if expires is not None and expires > now and holder != owner:
                raise ConcurrencyError(saga_id, message=f"saga {saga_id!r} is leased by {holder!r}")
            conn.execute(sql.grant, (token + 1, owner, now + lease, saga_id))
            return Claim(saga_id, token + 1, now + lease)

        result: Claim = await self._submit(op)
        return result

    async def renew(self, *, owner: str, claims: Sequence[Claim], lease: float) -> Sequence[Claim]:
        """Extend leases still held (see `SagaStore.renew`)."""
        sql = self._sql
        wanted = [(c.saga_id, c.fencing_token) for c in claims]

        def op(conn: sqlite3.Connection) -> list[Claim]:
            expires = self._clock.now() + lease
            renewed = []
            for saga_id, token in wanted:
                cursor = conn.execute(sql.renew, (expires, saga_id, token, owner))
                if cursor.rowcount == 1:
                    renewed.append(Claim(saga_id, token, expires))
            return renewed

        result: list[Claim] = await self._submit(op)
        return result

    async def release(self, saga_id: str, *, fencing_token: int) -> None:
        """Drop a lease early; a stale token is ignored (see `SagaStore.release`)."""
        sql = self._sql

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(sql.release, (saga_id, fencing_token))

        await self._submit(op)

    # -- lifecycle -------------------------------------------------------------------

    async def close(self) -> None:
        """Finish calls in flight, then close the connection; idempotent."""
        if self._closed:
            if self._thread is not None:
                await asyncio.to_thread(self._stopped.wait)
            return
        self._closed = True
        if self._thread is None:
            return
        self._queue.put(None)
        await asyncio.to_thread(self._stopped.wait)

    async def _submit(self, op: _Op) -> Any:
        if self._closed:
            raise StoreError("the store is closed")
        if self._thread is None:
            self._thread = threading.Thread(
                target=_Worker(self).run, name=f"sagaflow-sqlite:{self._path}", daemon=True
            )
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put(_Job(op, future, loop))
        return await future


class _Worker:
    """The store's thread: opens the connection, then commits queued calls in batches."""

    def __init__(self, store: SQLiteSagaStore) -> None:
        self._store = store
        self._conn: sqlite3.Connection | None = None

    def run(self) -> None:
        store = self._store
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
            store._stopped.set()

    def _next_batch(self) -> tuple[list[_Job], bool]:
        first = self._store._queue.get()
        if first is None:
            return [], True
        batch = [first]
        while len(batch) < self._store._max_batch:
            try:
                job = self._store._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _run_batch(self, batch: list[_Job]) -> None:
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                outcomes = [self._run_one(conn, job) for job in batch]
                conn.execute("COMMIT")
            except BaseException:
                _rollback(conn)
                raise
        except Exception as exc:  # the transaction itself failed: nothing was written
            error = _map_error(exc)
            outcomes = [(job, None, error) for job in batch]
        _settle_all(outcomes)

    def _run_one(
        self, conn: sqlite3.Connection, job: _Job
    ) -> tuple[_Job, Any, BaseException | None]:
        # A savepoint per call: a call that fails midway undoes only its own writes.
        conn.execute("SAVEPOINT op")
        try:
            result = job.op(conn)
        except Exception as exc:
            if isinstance(exc, sqlite3.Error) and _is_fatal(exc):
                raise  # I/O trouble dooms the whole transaction, not just this call
            # Anything else (a failed check, a bad row) is this call's own failure.
            conn.execute("ROLLBACK TO op")
            conn.execute("RELEASE op")
            return job, None, _map_error(exc)
        conn.execute("RELEASE op")
        return job, result, None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = _open(self._store)
        return self._conn


def _open(store: SQLiteSagaStore) -> sqlite3.Connection:
    """Open the connection, set its pragmas and create or check the schema."""
    # isolation_level=None: we issue BEGIN/COMMIT ourselves (group commit).
    conn = sqlite3.connect(
        store._path, timeout=store._busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={store._synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        _ensure_schema(conn, store._sql)
    except BaseException:
        conn.close()
        raise
    return conn


def _ensure_schema(conn: sqlite3.Connection, sql: _Sql) -> None:
    # BEGIN IMMEDIATE takes the write lock: two processes opening a fresh file
    # at once cannot both create the tables.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(sql.create_meta)
        row = conn.execute(sql.schema_version).fetchone()
        if row is None:
            for statement in sql.create_tables:
                conn.execute(statement)
            conn.execute(sql.set_schema_version, (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise SchemaVersionError(int(row[0]), SCHEMA_VERSION)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        # If even ROLLBACK fails the connection is broken; the caller gets the first error.
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _is_fatal(exc: sqlite3.Error) -> bool:
    """Whether an error inside one call dooms the whole transaction (I/O, full disk)."""
    return not isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError)


_UNAVAILABLE_HINTS = ("locked", "busy", "unable to open", "disk i/o", "readonly", "read-only")


def _map_error(exc: BaseException) -> BaseException:
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


def _settle_all(outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
    # One wake-up per event loop per batch rather than one per call.
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, BaseException | None]]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, items in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting for these results any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, items)


def _settle(items: list[tuple[_Job, Any, BaseException | None]]) -> None:
    for job, result, error in items:
        if job.future.done():
            continue  # the caller was cancelled; its write (if any) stands
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)


def _encode(records: Sequence[SagaRecord]) -> list[_Row]:
    return [
        (
            RecordKind(r.kind).value,
            r.step,
            int(r.attempt),
            float(r.at),
            encode_data(r.data),
        )
        for r in records
    ]


def _decode(row: tuple[Any, ...]) -> SagaRecord:
    return SagaRecord(
        kind=RecordKind(row[0]),
        step=row[1],
        attempt=int(row[2]),
        at=float(row[3]),
        data=decode_data(row[4]),
    )


def _insert_records(
    conn: sqlite3.Connection, sql: _Sql, saga_id: str, start: int, rows: list[_Row]
) -> None:
    conn.executemany(sql.insert_record, [(saga_id, start + i, *row) for i, row in enumerate(rows)])


class _Sql:
    """Every statement the store runs, with the table prefix spliced in once."""

    def __init__(self, prefix: str) -> None:
        sagas, records, meta = f"{prefix}sagas", f"{prefix}records", f"{prefix}meta"
        self.create_meta = (
            f"CREATE TABLE IF NOT EXISTS {meta} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        self.schema_version = f"SELECT value FROM {meta} WHERE key = 'schema_version'"
        self.set_schema_version = (
            f"INSERT OR REPLACE INTO {meta} (key, value) VALUES ('schema_version', ?)"
        )
        self.create_tables = (
            f"""CREATE TABLE {sagas} (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                status TEXT NOT NULL,
                version INTEGER NOT NULL,
                token INTEGER NOT NULL,
                owner TEXT,
                lease_expires REAL,
                updated_at REAL NOT NULL,
                touched INTEGER NOT NULL
            )""",
            # `touched` orders listings and claims: a store-wide counter bumped by
            # every create/append (wall-clock `updated_at` may tie or go backwards).
            f"CREATE INDEX {prefix}sagas_touched ON {sagas} (touched)",
            f"CREATE INDEX {prefix}sagas_status ON {sagas} (status, touched)",
            f"""CREATE TABLE {records} (
                saga_id TEXT NOT NULL REFERENCES {sagas} (id) ON DELETE CASCADE,
                seq INTEGER NOT NULL,
                kind TEXT NOT NULL,
                step TEXT,
                attempt INTEGER NOT NULL,
                at REAL NOT NULL,
                data TEXT,
                PRIMARY KEY (saga_id, seq)
            ) WITHOUT ROWID""",
        )
        next_touch = f"(SELECT coalesce(max(touched), 0) + 1 FROM {sagas})"
        self.exists = f"SELECT 1 FROM {sagas} WHERE id = ?"
        self.insert_saga = (
            f"INSERT INTO {sagas} (id, name, status, version, token, owner, lease_expires,"
            f" updated_at, touched) VALUES (?, ?, ?, ?, 1, ?, ?, ?, {next_touch})"
        )
        self.insert_record = (
            f"INSERT INTO {records} (saga_id, seq, kind, step, attempt, at, data)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)"
        )
        self.head = f"SELECT status, version, token FROM {sagas} WHERE id = ?"
        self.update_after_append = (
            f"UPDATE {sagas} SET version = ?, status = ?, updated_at = ?,"
            f" touched = {next_touch} WHERE id = ?"
        )
        self.load_head = f"SELECT status, token, owner, lease_expires FROM {sagas} WHERE id = ?"
        self.load_records = (
            f"SELECT kind, step, attempt, at, data FROM {records} WHERE saga_id = ? ORDER BY seq"
        )
        summary = f"SELECT id, name, status, version, updated_at, owner FROM {sagas}"
        self.list_all = f"{summary} ORDER BY touched DESC LIMIT ?"
        self.list_status = f"{summary} WHERE status = ? ORDER BY touched DESC LIMIT ?"
        self.claimable = (
            f"SELECT id, token FROM {sagas} WHERE status IN (?, ?)"
            " AND (lease_expires IS NULL OR lease_expires <= ?) ORDER BY touched LIMIT ?"
        )
        self.lease_of = f"SELECT token, owner, lease_expires FROM {sagas} WHERE id = ?"
        self.grant = f"UPDATE {sagas} SET token = ?, owner = ?, lease_expires = ? WHERE id = ?"
        self.renew = (
            f"UPDATE {sagas} SET lease_expires = ? WHERE id = ? AND token = ? AND owner = ?"
        )
        self.release = (
            f"UPDATE {sagas} SET owner = NULL, lease_expires = NULL WHERE id = ? AND token = ?"
        )
