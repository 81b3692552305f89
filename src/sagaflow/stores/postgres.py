"""`PostgresSagaStore`: the saga store for many workers on many machines.

Needs the ``postgres`` extra (``pip install "sagaflow[postgres]"``: psycopg 3 and
psycopg-pool). Design:

* **One statement, one round trip, one commit per write.** `create` and `append`
  are each a single SQL statement whose data-modifying CTEs update the saga row
  (checking fencing token and version in its ``WHERE``) and insert the records
  only if that update matched. A statement is atomic on its own, so on the
  store's own autocommit connections a write costs what one ``INSERT`` costs.
* **Records as arrays.** A batch of records travels as a handful of arrays
  unnested server-side, so the statement text (and its prepared plan) is the
  same for any batch size.
* **Leases** use the store's `Clock`, not the database's ``now()``, exactly like
  the memory store, so tests can fake time and every store agrees. Workers
  sharing a database need reasonably synchronized clocks (NTP), and leases
  should be long compared with the clock skew.
* **claim** is ``UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED
  LIMIT n)``: concurrent claimers skip each other's rows instead of waiting and
  never receive the same saga.
* **Schema** lives in its own PostgreSQL schema (default ``sagaflow``), created
  on first use under an advisory lock so concurrent first users do not race;
  its version is kept in a ``meta`` table.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from sagaflow._optional import require

require("psycopg", "postgres")
require("psycopg_pool", "postgres")

import psycopg  # noqa: E402
import pydantic_core  # noqa: E402
from psycopg import sql as pgsql  # noqa: E402
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout  # noqa: E402

from sagaflow.clock import Clock, SystemClock  # noqa: E402
from sagaflow.errors import (  # noqa: E402
    ConcurrencyError,
    FencedError,
    SagaAlreadyExistsError,
    SagaNotFoundError,
    SchemaVersionError,
    StoreError,
    StoreUnavailableError,
)
from sagaflow.orchestration.records import (  # noqa: E402
    Claim,
    RecordKind,
    SagaLog,
    SagaRecord,
    SagaStatus,
    SagaSummary,
    status_after,
)
from sagaflow.stores._batch import Batcher, PendingWrite  # noqa: E402
from sagaflow.stores._common import (  # noqa: E402
    ACTIVE_STATUSES,
    check_create_records,
    encode_records,
    mask_url,
    saga_name_of,
    status_change,
    validate_identifier,
)

__all__ = ["PostgresSagaStore"]

SCHEMA_VERSION: Final = 1
"""The newest schema version this code knows."""

_Params = dict[str, Any]
_Conn = psycopg.AsyncConnection[Any]
T = TypeVar("T")
_Outcome = tuple[PendingWrite, Any, BaseException | None]


class PostgresSagaStore:
    """A durable `SagaStore` in PostgreSQL, shared safely by many workers.

    Args:
        url_or_pool: A libpq URL (``postgresql://user:password@host:5432/db``) or
            keyword string, or an `AsyncConnectionPool` you own. A pool you pass
            is not closed by `close`; for the best write latency configure it with
            ``kwargs={"autocommit": True}``.
        schema: PostgreSQL schema holding the store's tables (lower-case letters,
            digits, underscores). Stores with different schemas are independent.
        pool_size: Most connections the store opens, at least 2 (ignored for a
            given pool). One is kept by the batch writer; reads share the rest.
        min_pool_size: Connections kept open when idle (ignored for a given pool).
        connect_timeout: Seconds to wait for a connection before failing with
            `StoreUnavailableError`.
        clock: Time source for leases (inject a fake clock in tests).
    """

    def __init__(
        self,
        url_or_pool: str | AsyncConnectionPool[Any],
        *,
        schema: str = "sagaflow",
        pool_size: int = 10,
        min_pool_size: int = 1,
        connect_timeout: float = 10.0,
        clock: Clock | None = None,
    ) -> None:
        self._schema = validate_identifier(schema, "schema").lower()
        self._clock = clock or SystemClock()
        self._connect_timeout = connect_timeout
        if isinstance(url_or_pool, str):
            self._where = mask_url(url_or_pool)
            self._owns_pool = True
            self._pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                url_or_pool,
                min_size=min(min_pool_size, max(pool_size, 2)),
                max_size=max(pool_size, 2),
                open=False,
                timeout=connect_timeout,
                kwargs={"autocommit": True},
                name=f"sagaflow-{self._schema}",
            )
        else:
            self._where = f"pool {url_or_pool.name!r}"
            self._owns_pool = False
            self._pool = url_or_pool
        self._sql = _Sql(self._schema)
        self._ready = False
        self._init_lock = asyncio.Lock()
        self._closed = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._batcher = Batcher(self._run_batch)
        self._writer: _Conn | None = None
        # The batch writer keeps one connection; with a pool of one it would starve reads.
        self._use_writer = self._pool.max_size >= 2

    def __repr__(self) -> str:
        return f"PostgresSagaStore({self._where}, schema={self._schema!r})"

    @property
    def schema(self) -> str:
        """The PostgreSQL schema holding the store's tables."""
        return self._schema

    # -- writing ---------------------------------------------------------------------

    async def create(
        self, saga_id: str, records: Sequence[SagaRecord], *, owner: str, lease: float
    ) -> Claim:
        """Create a saga leased to ``owner`` (see `SagaStore.create`)."""
        check_create_records(records)
        header = {
            "id": saga_id,
            "name": saga_name_of(records),
            "status": status_after(None, records).value,
            "n": len(records),
            "owner": owner,
            "updated_at": float(records[-1].at),
        }
        payload = _Create(header, encode_records(records), lease)
        result: Claim = await self._write(PendingWrite("create", saga_id, payload))
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
        if not records:
            return await self._check_only(saga_id, expected_version, fencing_token)
        change = status_change(records)
        header = {
            "id": saga_id,
            "token": fencing_token,
            "expected": expected_version,
            "n": len(records),
            "status": change.value if change is not None else None,
            "updated_at": float(records[-1].at),
        }
        payload = _Append(header, encode_records(records), expected_version, fencing_token)
        result: int = await self._write(PendingWrite("append", saga_id, payload))
        return result

    async def _check_only(self, saga_id: str, expected_version: int, fencing_token: int) -> int:
        """An empty append: run the checks, write nothing."""

        async def run(conn: _Conn) -> int:
            head = await _one(conn, self._sql.head, {"id": saga_id})
            _check_write(saga_id, head, fencing_token, expected_version)
            return expected_version

        return await self._run(run)

    async def _write(self, write: PendingWrite) -> Any:
        """Queue a create or append for the next batch and wait for its outcome."""
        if self._closed:
            raise StoreError("the store is closed")
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._batcher.submit(write)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _run_batch(self, batch: list[PendingWrite]) -> None:
        """Run a batch of writes (creates, then appends) and settle each write."""
        creates = [w for w in batch if w.kind == "create"]
        appends = [w for w in batch if w.kind == "append"]
        if creates:
            await self._run_phase(creates, self._run_creates)
        if appends:
            await self._run_phase(appends, self._run_appends)

    async def _run_phase(
        self,
        writes: list[PendingWrite],
        statement: Callable[[_Conn, list[PendingWrite]], Awaitable[list[_Outcome]]],
    ) -> None:
        """Run one batch statement in its own transaction, then settle its writes."""
        try:
            await self._ensure_ready()
            if self._use_writer:
                outcomes = await self._on_writer(statement, writes)
            else:
                async with self._pool.connection() as conn:
                    outcomes = await statement(conn, writes)
        except (psycopg.Error, PoolTimeout, PoolClosed) as exc:
            if len(writes) > 1 and _is_rollback(exc):
                # A deadlock with another process's batch (nothing was written):
                # redo the writes one by one; a single-row statement cannot deadlock.
                for write in writes:
                    await self._run_phase([write], statement)
                return
            await self._after_failure(exc)
            for write in writes:
                write.settle(error=_map_error(exc, self._where))
            return
        except StoreError as exc:  # e.g. SchemaVersionError while getting ready
            for write in writes:
                write.settle(error=exc)
            return
        # Acknowledge only now: leaving the block committed (on a pool without autocommit).
        for write, result, error in outcomes:
            write.settle(result, error)

    async def _on_writer(
        self,
        statement: Callable[[_Conn, list[PendingWrite]], Awaitable[list[_Outcome]]],
        writes: list[PendingWrite],
    ) -> list[_Outcome]:
        """Run a batch statement on the connection the drainer keeps between batches.

        Batches run one at a time, so one connection serves them all and the pool
        checkout per write is saved. A failed connection goes back to the pool
        (which checks, resets or discards it) and the next batch takes a new one.
        """
        if self._writer is None:
            self._writer = await self._pool.getconn()
        conn = self._writer
        try:
            outcomes = await statement(conn, writes)
            if not conn.autocommit:
                await conn.commit()
        except BaseException:
            self._writer = None
            await self._pool.putconn(conn)
            raise
        return outcomes

    async def _run_creates(self, conn: _Conn, creates: list[PendingWrite]) -> list[_Outcome]:
        now = self._clock.now()
        expires = [now + w.payload.lease for w in creates]
        if len(creates) == 1:
            (write,) = creates
            params = dict(write.payload.header, expires=expires[0], records=write.payload.records)
            cursor = await conn.execute(self._sql.create_one, params)
        else:
            parts = [
                _splice(dict(w.payload.header, expires=e), w.payload.records)
                for w, e in zip(creates, expires, strict=True)
            ]
            cursor = await conn.execute(self._sql.create, {"batch": _array(parts)})
        rows = await cursor.fetchall()
        created = {r[0] for r in rows}
        return [
            (w, Claim(w.saga_id, 1, e), None)
            if w.saga_id in created
            else (w, None, SagaAlreadyExistsError(w.saga_id))
            for w, e in zip(creates, expires, strict=True)
        ]

    async def _run_appends(self, conn: _Conn, appends: list[PendingWrite]) -> list[_Outcome]:
        if len(appends) == 1:
            (write,) = appends
            params = dict(write.payload.header, records=write.payload.records)
            cursor = await conn.execute(self._sql.append_one, params)
        else:
            parts = [_splice(w.payload.header, w.payload.records) for w in appends]
            cursor = await conn.execute(self._sql.append, {"batch": _array(parts)})
        rows = await cursor.fetchall()
        versions = {r[0]: int(r[1]) for r in rows}
        failed = [w for w in appends if w.saga_id not in versions]
        heads: dict[str, tuple[Any, ...]] = {}
        if failed:
            # Nothing written for these: find out why, from the current rows.
            ids = [w.saga_id for w in failed]
            cursor = await conn.execute(self._sql.heads, {"ids": ids})
            heads = {r[0]: r[1:] for r in await cursor.fetchall()}
        outcomes: list[_Outcome] = []
        for write in appends:
            if write.saga_id in versions:
                outcomes.append((write, versions[write.saga_id], None))
                continue
            payload: _Append = write.payload
            try:
                _check_write(
                    write.saga_id, heads.get(write.saga_id), payload.token, payload.expected
                )
                # The row matched again by the time we looked: it changed and we lost.
                raise ConcurrencyError(write.saga_id, expected_version=payload.expected)
            except StoreError as exc:
                outcomes.append((write, None, exc))
        return outcomes

    # -- reading ---------------------------------------------------------------------

    async def load(self, saga_id: str) -> SagaLog:
        """Return the saga's log (see `SagaStore.load`)."""

        async def run(conn: _Conn) -> SagaLog:
            cursor = await conn.execute(self._sql.load, {"id": saga_id})
            rows = await cursor.fetchall()
            if not rows:
                raise SagaNotFoundError(saga_id)
            status, token, owner, expires = rows[0][:4]
            records = tuple(
                SagaRecord(RecordKind(r[4]), r[5], int(r[6]), float(r[7]), r[8])
                for r in rows
                if r[4] is not None
            )
            return SagaLog(
                saga_id=saga_id,
                records=records,
                status=SagaStatus(status),
                fencing_token=int(token),
                owner=owner,
                lease_expires=expires,
            )

        return await self._run(run)

    async def list_sagas(
        self, *, status: SagaStatus | None = None, limit: int = 100
    ) -> Sequence[SagaSummary]:
        """List sagas, most recently updated first (see `SagaStore.list_sagas`)."""
        query = self._sql.list_all if status is None else self._sql.list_status
        params = {"status": status.value if status else None, "limit": limit}

        async def run(conn: _Conn) -> list[SagaSummary]:
            rows = await (await conn.execute(query, params)).fetchall()
            return [
                SagaSummary(
                    saga_id=r[0],
                    saga_name=r[1],
                    status=SagaStatus(r[2]),
                    version=int(r[3]),
                    updated_at=float(r[4]),
                    owner=r[5],
                )
                for r in rows
            ]

        return await self._run(run)

    # -- leases ----------------------------------------------------------------------

    async def claim(self, *, owner: str, lease: float, limit: int) -> Sequence[Claim]:
        """Lease unfinished sagas whose lease lapsed (see `SagaStore.claim`)."""

        async def run(conn: _Conn) -> list[Claim]:
            now = self._clock.now()
            params = {"owner": owner, "now": now, "expires": now + lease, "limit": limit}
            rows = await (await conn.execute(self._sql.claim, params)).fetchall()
            # RETURNING does not keep the subquery's order: restore oldest-first.
            rows.sort(key=lambda r: r[2])
            return [Claim(r[0], int(r[1]), now + lease) for r in rows]

        return await self._run(run)

    async def acquire(self, saga_id: str, *, owner: str, lease: float) -> Claim:
        """Lease one saga by id (see `SagaStore.acquire`)."""

        async def run(conn: _Conn) -> Claim:
            now = self._clock.now()
            params = {"id": saga_id, "owner": owner, "now": now, "expires": now + lease}
            row = await _one(conn, self._sql.acquire, params)
            if row is not None:
                return Claim(saga_id, int(row[0]), now + lease)
            holder = await _one(conn, self._sql.holder, params)
            if holder is None:
                raise SagaNotFoundError(saga_id)
            raise ConcurrencyError(saga_id, message=f"saga {saga_id!r} is leased by {holder[0]!r}")

        return await self._run(run)

    async def renew(self, *, owner: str, claims: Sequence[Claim], lease: float) -> Sequence[Claim]:
        """Extend leases still held (see `SagaStore.renew`)."""
        if not claims:
            if self._closed:
                raise StoreError("the store is closed")
            return []

        async def run(conn: _Conn) -> list[Claim]:
            expires = self._clock.now() + lease
            params = {
                "owner": owner,
                "expires": expires,
                "ids": [c.saga_id for c in claims],
                "tokens": [c.fencing_token for c in claims],
            }
            rows = await (await conn.execute(self._sql.renew, params)).fetchall()
            kept = {(r[0], int(r[1])) for r in rows}
            return [
                Claim(c.saga_id, c.fencing_token, expires)
                for c in claims
                if (c.saga_id, c.fencing_token) in kept
            ]

        return await self._run(run)

    async def release(self, saga_id: str, *, fencing_token: int) -> None:
        """Drop a lease early; a stale token is ignored (see `SagaStore.release`)."""

        async def run(conn: _Conn) -> None:
            await conn.execute(self._sql.release, {"id": saga_id, "token": fencing_token})

        await self._run(run)

    # -- lifecycle -------------------------------------------------------------------

    async def close(self) -> None:
        """Wait for calls in flight, then close the pool if the store opened it; idempotent."""
        self._closed = True
        await self._idle.wait()
        await self._batcher.wait_idle()  # writes whose callers were cancelled still run
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await self._pool.putconn(writer)
        if self._owns_pool and not self._pool.closed:
            await self._pool.close()

    async def _run(self, work: Callable[[_Conn], Awaitable[T]]) -> T:
        """Run ``work(conn)`` on a pooled connection, translating driver errors."""
        if self._closed:
            raise StoreError("the store is closed")
        self._in_flight += 1
        self._idle.clear()
        try:
            await self._ensure_ready()
            async with self._pool.connection() as conn:
                return await work(conn)
        except (psycopg.Error, PoolTimeout, PoolClosed) as exc:
            await self._after_failure(exc)
            raise _map_error(exc, self._where) from exc
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def _after_failure(self, exc: Exception) -> None:
        """After a lost connection, weed out the pool's other dead idle connections.

        When the server restarts, every idle pooled connection is dead; checking
        them now costs one failed call instead of one per connection.
        """
        if isinstance(exc, psycopg.OperationalError) and not self._pool.closed:
            with contextlib.suppress(Exception):
                await self._pool.check()

    async def _ensure_ready(self) -> None:
        if self._ready:
            return
        async with self._init_lock:
            if self._ready:
                return
            if self._owns_pool and self._pool.closed:
                await self._pool.open(wait=True, timeout=self._connect_timeout)
            async with self._pool.connection() as conn:
                await _ensure_schema(conn, self._schema, self._sql)
            self._ready = True


async def _one(conn: _Conn, query: str, params: _Params) -> tuple[Any, ...] | None:
    cursor = await conn.execute(query, params)
    row: tuple[Any, ...] | None = await cursor.fetchone()
    return row


def _check_write(
    saga_id: str, head: tuple[Any, ...] | None, fencing_token: int, expected_version: int
) -> None:
    """Explain why a conditional write matched no row (or let an empty batch pass)."""
    if head is None:
        raise SagaNotFoundError(saga_id)
    token, version = int(head[0]), int(head[1])
    if fencing_token != token:
        raise FencedError(saga_id, fencing_token=fencing_token, current_token=token)
    if expected_version != version:
        raise ConcurrencyError(saga_id, expected_version=expected_version, actual_version=version)


@dataclass(frozen=True, slots=True)
class _Create:
    header: dict[str, Any]
    records: str  # JSON array, encoded when the call was made
    lease: float


@dataclass(frozen=True, slots=True)
class _Append:
    header: dict[str, Any]
    records: str
    expected: int
    token: int


def _splice(header: dict[str, Any], records_json: str) -> str:
    """Return ``header`` as a JSON object with the already-encoded records added."""
    encoded = pydantic_core.to_json(header).decode()
    return f'{encoded[:-1]},"records":{records_json}}}'


def _array(parts: list[str]) -> str:
    return "[" + ",".join(parts) + "]"


async def _ensure_schema(conn: _Conn, schema: str, sql: _Sql) -> None:
    """Create the schema on first use, or check that its version is one we know."""
    found = await _schema_version(conn, sql)
    if found == SCHEMA_VERSION:
        return  # the common case: no lock, no DDL
    async with conn.transaction():
        # Serialize first users of one schema: CREATE ... IF NOT EXISTS still races.
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(schema),))
        found = await _schema_version(conn, sql)
        if found is None:
            for statement in sql.create_tables:
                await conn.execute(statement)
            await conn.execute(sql.set_version, {"version": str(SCHEMA_VERSION)})
        elif found > SCHEMA_VERSION:
            raise SchemaVersionError(found, SCHEMA_VERSION)


async def _schema_version(conn: _Conn, sql: _Sql) -> int | None:
    if await _one(conn, sql.meta_exists, {}) is None:
        return None
    version = await _one(conn, sql.get_version, {})
    return int(version[0]) if version is not None else None


def _lock_key(schema: str) -> int:
    digest = hashlib.blake2b(f"sagaflow:{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _is_rollback(exc: Exception) -> bool:
    """Whether the server rolled the statement back (deadlock, serialization failure)."""
    return (getattr(exc, "sqlstate", None) or "").startswith("40")


def _map_error(exc: Exception, where: str) -> StoreError:
    """Translate a psycopg or pool error into a sagaflow `StoreError` caused by it."""
    mapped = _translate(exc, where)
    mapped.__cause__ = exc  # also when the error is delivered through a batch future
    return mapped


def _translate(exc: Exception, where: str) -> StoreError:
    if isinstance(exc, PoolClosed):
        return StoreError("the store is closed")
    if isinstance(exc, PoolTimeout):
        return StoreUnavailableError(f"no PostgreSQL connection to {where}: {exc}")
    # OperationalError covers lost connections, server shutdown, cancelled
    # statements and serialization failures: doing it again may succeed.
    if isinstance(exc, psycopg.OperationalError):
        return StoreUnavailableError(f"PostgreSQL at {where} unavailable: {exc}")
    sqlstate = getattr(exc, "sqlstate", None)
    return StoreError(f"PostgreSQL error{f' {sqlstate}' if sqlstate else ''}: {exc}")


def _q(template: str, schema: str) -> str:
    """Splice the (validated) schema name into a statement as a quoted identifier.

    ``{s}`` is the schema as an identifier, ``{name}`` as a string literal, and
    ``{seq}`` the name of its sequence as a literal (for ``nextval``).
    """
    # Rendered once to text: executing a Composed re-renders it on every call.
    return (
        pgsql.SQL(template)
        .format(
            s=pgsql.Identifier(schema),
            seq=pgsql.Literal(f'"{schema}".touch_seq'),
            name=pgsql.Literal(schema),
        )
        .as_string(None)
    )


class _Sql:
    """Every statement the store runs, with the schema name spliced in once."""

    def __init__(self, schema: str) -> None:
        active = ", ".join(f"'{s.value}'" for s in ACTIVE_STATUSES)
        # A plain catalog query (not to_regclass, which may answer from a stale
        # cache) so that a waiter on the advisory lock sees the winner's tables.
        self.meta_exists = _q(
            "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = {name} AND tablename = 'meta'",
            schema,
        )
        self.get_version = _q("SELECT value FROM {s}.meta WHERE key = 'schema_version'", schema)
        self.set_version = _q(
            "INSERT INTO {s}.meta (key, value) VALUES ('schema_version', %(version)s)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            schema,
        )
        self.create_tables = [
            _q("CREATE SCHEMA IF NOT EXISTS {s}", schema),
            _q(
                "CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL)",
                schema,
            ),
            # `touched` orders listings and claims: a store-wide sequence bumped by
            # every create/append (wall-clock `updated_at` may tie or go backwards).
            _q("CREATE SEQUENCE IF NOT EXISTS {s}.touch_seq", schema),
            _q(
                """CREATE TABLE IF NOT EXISTS {s}.sagas (
                    id text PRIMARY KEY,
                    name text NOT NULL,
                    status text NOT NULL,
                    version integer NOT NULL,
                    token bigint NOT NULL,
                    owner text,
                    lease_expires double precision,
                    updated_at double precision NOT NULL,
                    touched bigint NOT NULL DEFAULT nextval({seq})
                )""",
                schema,
            ),
            _q("CREATE INDEX IF NOT EXISTS sagas_touched ON {s}.sagas (touched)", schema),
            # Listing parked sagas is the operator's everyday query; a partial index
            # keeps it fast without costing anything on the write path.
            _q(
                "CREATE INDEX IF NOT EXISTS sagas_parked ON {s}.sagas (touched)"
                " WHERE status = 'failed'",
                schema,
            ),
            _q(
                "CREATE INDEX IF NOT EXISTS sagas_claimable ON {s}.sagas (touched)"
                f" WHERE status IN ({active})",
                schema,
            ),
            # No foreign key to sagas: records are only inserted by the statements
            # above, in the same statement that matched their saga's row, and the
            # per-row trigger of a foreign key would cost more than the check is worth.
            # `json`, not `jsonb`: it keeps exactly the text written (any JSON,
            # including "\u0000", which jsonb refuses) and costs less to insert;
            # the `->`/`->>` operators still work on it for ad-hoc queries.
            _q(
                """CREATE TABLE IF NOT EXISTS {s}.records (
                    saga_id text NOT NULL,
                    seq integer NOT NULL,
                    kind text NOT NULL,
                    step text,
                    attempt integer NOT NULL,
                    at double precision NOT NULL,
                    data json,
                    PRIMARY KEY (saga_id, seq)
                )""",
                schema,
            ),
        ]
        # A batch arrives as one JSON array (one parameter, encoded in Rust by
        # pydantic-core), each element a saga's header plus its records, and is
        # unpacked server-side; record order comes from WITH ORDINALITY.
        records_of_batch = """
            INSERT INTO {s}.records (saga_id, seq, kind, step, attempt, at, data)
            SELECT b.id, %(start)s + r.ord::int - 1, r.kind, r.step, r.attempt, r.at, r.data::json
            FROM batch b
            JOIN head h ON h.id = b.id
            CROSS JOIN LATERAL ROWS FROM (
                json_to_recordset(b.records)
                AS (kind text, step text, attempt int, at float8, data text)
            ) WITH ORDINALITY AS r(kind, step, attempt, at, data, ord)"""
        self.create = _q(
            """WITH batch AS (
                SELECT * FROM json_to_recordset(%(batch)s::json) AS b(
                    id text, name text, status text, n int, owner text,
                    expires float8, updated_at float8, records json)
            ), head AS (
                INSERT INTO {s}.sagas (id, name, status, version, token, owner,
                                       lease_expires, updated_at)
                SELECT id, name, status, n, 1, owner, expires, updated_at FROM batch
                ON CONFLICT (id) DO NOTHING
                RETURNING id
            ), ins AS ("""
            + records_of_batch.replace("%(start)s", "0")
            + """)
            SELECT id FROM head""",
            schema,
        )
        # The fencing token and version checks are the UPDATE's WHERE clause: a
        # write whose checks fail matches no row and inserts no record.
        self.append = _q(
            """WITH batch AS (
                SELECT * FROM json_to_recordset(%(batch)s::json) AS b(
                    id text, token bigint, expected int, n int, status text,
                    updated_at float8, records json)
            ), head AS (
                UPDATE {s}.sagas AS s
                SET version = s.version + b.n,
                    status = coalesce(b.status, s.status),
                    updated_at = b.updated_at,
                    touched = nextval({seq})
                FROM batch b
                WHERE s.id = b.id AND s.token = b.token AND s.version = b.expected
                RETURNING s.id, s.version
            ), ins AS ("""
            + records_of_batch.replace("%(start)s", "b.expected")
            + """)
            SELECT id, version FROM head""",
            schema,
        )
        # The same two writes for one saga, with plain parameters: a lighter plan
        # for the common case of a batch of one.
        records_of_one = """
            INSERT INTO {s}.records (saga_id, seq, kind, step, attempt, at, data)
            SELECT %(id)s, %(start)s + r.ord::int - 1, r.kind, r.step, r.attempt, r.at, r.data::json
            FROM ROWS FROM (
                json_to_recordset(%(records)s::json)
                AS (kind text, step text, attempt int, at float8, data text)
            ) WITH ORDINALITY AS r(kind, step, attempt, at, data, ord)
            WHERE EXISTS (SELECT 1 FROM head)"""
        self.create_one = _q(
            """WITH head AS (
                INSERT INTO {s}.sagas (id, name, status, version, token, owner,
                                       lease_expires, updated_at)
                VALUES (%(id)s, %(name)s, %(status)s, %(n)s::int, 1, %(owner)s,
                        %(expires)s::float8, %(updated_at)s::float8)
                ON CONFLICT (id) DO NOTHING
                RETURNING id
            ), ins AS ("""
            + records_of_one.replace("%(start)s", "0")
            + """)
            SELECT id FROM head""",
            schema,
        )
        self.append_one = _q(
            """WITH head AS (
                UPDATE {s}.sagas
                SET version = version + %(n)s::int,
                    status = coalesce(%(status)s::text, status),
                    updated_at = %(updated_at)s::float8,
                    touched = nextval({seq})
                WHERE id = %(id)s AND token = %(token)s::bigint AND version = %(expected)s::int
                RETURNING id, version
            ), ins AS ("""
            + records_of_one.replace("%(start)s", "%(expected)s::int")
            + """)
            SELECT id, version FROM head""",
            schema,
        )
        self.heads = _q(
            "SELECT id, token, version FROM {s}.sagas WHERE id = ANY(%(ids)s::text[])", schema
        )
        self.head = _q("SELECT token, version FROM {s}.sagas WHERE id = %(id)s", schema)
        # One statement sees one snapshot; `seq < version` keeps out records of
        # an append that commits while the rows are read.
        self.load = _q(
            """SELECT s.status, s.token, s.owner, s.lease_expires,
                      r.kind, r.step, r.attempt, r.at, r.data::json
               FROM {s}.sagas s
               LEFT JOIN {s}.records r ON r.saga_id = s.id AND r.seq < s.version
               WHERE s.id = %(id)s
               ORDER BY r.seq""",
            schema,
        )
        summary = "SELECT id, name, status, version, updated_at, owner FROM {s}.sagas"
        self.list_all = _q(summary + " ORDER BY touched DESC LIMIT %(limit)s", schema)
        self.list_status = _q(
            summary + " WHERE status = %(status)s ORDER BY touched DESC LIMIT %(limit)s", schema
        )
        self.claim = _q(
            f"""UPDATE {{s}}.sagas
               SET token = token + 1, owner = %(owner)s, lease_expires = %(expires)s
               WHERE id IN (
                   SELECT id FROM {{s}}.sagas
                   WHERE status IN ({active})
                     AND (lease_expires IS NULL OR lease_expires <= %(now)s)
                   ORDER BY touched
                   LIMIT %(limit)s
                   FOR UPDATE SKIP LOCKED)
               RETURNING id, token, touched""",
            schema,
        )
        self.acquire = _q(
            """UPDATE {s}.sagas
               SET token = token + 1, owner = %(owner)s, lease_expires = %(expires)s
               WHERE id = %(id)s
                 AND (lease_expires IS NULL OR lease_expires <= %(now)s OR owner = %(owner)s)
               RETURNING token""",
            schema,
        )
        self.holder = _q("SELECT owner FROM {s}.sagas WHERE id = %(id)s", schema)
        self.renew = _q(
            """UPDATE {s}.sagas AS t SET lease_expires = %(expires)s
               FROM unnest(%(ids)s::text[], %(tokens)s::bigint[]) AS c(id, token)
               WHERE t.id = c.id AND t.token = c.token AND t.owner = %(owner)s
               RETURNING t.id, t.token""",
            schema,
        )
        self.release = _q(
            """UPDATE {s}.sagas SET owner = NULL, lease_expires = NULL
               WHERE id = %(id)s AND token = %(token)s""",
            schema,
        )
