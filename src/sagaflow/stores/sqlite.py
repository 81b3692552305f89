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

import os
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

from sagaflow.clock import Clock, SystemClock
from sagaflow.errors import (
    ConcurrencyError,
    FencedError,
    SagaAlreadyExistsError,
    SagaNotFoundError,
    SchemaVersionError,
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
from sagaflow.stores._sqlite import SQLiteWorker

__all__ = ["SQLiteSagaStore"]

SCHEMA_VERSION: Final = 1
"""The newest schema version this code knows."""

_Row = tuple[str, str | None, int, float, str | None]  # kind, step, attempt, at, data
_Op = Callable[[sqlite3.Connection], Any]


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
        inline: Opt-in. When no other call is queued or running and the call
            comes from the same task as the previous one, run its transaction
            right away on the event loop thread instead of handing it to the
            store's thread and back: writes made one at a time run faster (the
            two thread hand-offs cost about as much as the SQL), but the event
            loop is blocked during each such transaction, ``fsync`` and the
            occasional WAL checkpoint included. Calls from several tasks in
            turn still go to the thread and commit together; an inline call
            never waits for another process's lock (it goes to the thread
            instead). Durability is unchanged.
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
        inline: bool = False,
    ) -> None:
        self._path = os.fspath(path)
        self._clock = clock or SystemClock()
        self._prefix = validate_identifier(table_prefix, "table_prefix") if table_prefix else ""
        self._sql = _Sql(self._prefix)
        self._worker = SQLiteWorker(
            self._path,
            setup=lambda conn: _ensure_schema(conn, self._sql),
            busy_timeout=busy_timeout,
            synchronous=synchronous,
            max_batch=max_batch,
            name=f"sagaflow-sqlite:{self._path}",
            foreign_keys=True,
            closed_message="the store is closed",
            inline=inline,
        )

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
        await self._worker.close()

    async def _submit(self, op: _Op) -> Any:
        # Every store call writes or needs a consistent read under the write lock.
        return await self._worker.run(op)


def _ensure_schema(conn: sqlite3.Connection, sql: _Sql) -> None:
    # Runs inside the worker's BEGIN IMMEDIATE, which takes the write lock: two
    # processes opening a fresh file at once cannot both create the tables.
    conn.execute(sql.create_meta)
    row = conn.execute(sql.schema_version).fetchone()
    if row is None:
        for statement in sql.create_tables:
            conn.execute(statement)
        conn.execute(sql.set_schema_version, (str(SCHEMA_VERSION),))
    elif int(row[0]) > SCHEMA_VERSION:
        raise SchemaVersionError(int(row[0]), SCHEMA_VERSION)


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
