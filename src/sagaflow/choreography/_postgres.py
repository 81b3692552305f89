"""Connection handling shared by the PostgreSQL outbox and inbox (private).

Needs the ``postgres`` extra. Errors are translated exactly as in
`PostgresSagaStore` (lost connection → `StoreUnavailableError`, anything else →
`StoreError`), and the schema is created on first use under an advisory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from sagaflow._optional import require

require("psycopg", "postgres")
require("psycopg_pool", "postgres")

import psycopg  # noqa: E402
from psycopg import sql as pgsql  # noqa: E402
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout  # noqa: E402

from sagaflow.errors import SchemaVersionError, StoreError  # noqa: E402
from sagaflow.stores._common import mask_url, validate_identifier  # noqa: E402
from sagaflow.stores.postgres import _lock_key, _map_error  # noqa: E402

Conn = psycopg.AsyncConnection[Any]
T = TypeVar("T")
DRIVER_ERRORS = (psycopg.Error, PoolTimeout, PoolClosed)


def identifier(name: str) -> str:
    """Return a validated name quoted as a PostgreSQL identifier."""
    return pgsql.Identifier(name).as_string(None)


def user_connection(conn_or_tx: Any) -> Conn:
    """Return the connection of a psycopg ``AsyncConnection`` or ``AsyncTransaction``."""
    if hasattr(conn_or_tx, "execute"):
        conn: Conn = conn_or_tx
        return conn
    inner = getattr(conn_or_tx, "connection", None)
    if inner is None or not hasattr(inner, "execute"):
        raise TypeError(
            "expected a psycopg AsyncConnection or AsyncTransaction, "
            f"got {type(conn_or_tx).__name__}"
        )
    found: Conn = inner
    return found


class PgAccess:
    """A pool (owned or given), schema bootstrap and error translation.

    Args:
        url_or_pool: libpq URL or keyword string, or an `AsyncConnectionPool`
            (not closed by `close`).
        schema: PostgreSQL schema of the tables.
        version_table: Qualified name of the table holding the schema version.
        version: The newest schema version this code knows.
        create: DDL statements, run once under an advisory lock.
        pool_size: Most connections of an owned pool.
        connect_timeout: Seconds to wait for a connection.
        name: Pool name.
        settings: Session settings (``{"synchronous_commit": "off"}``) for the
            connections of an owned pool; a given pool is left as it is.
    """

    def __init__(
        self,
        url_or_pool: str | AsyncConnectionPool[Any],
        *,
        schema: str,
        version_table: str,
        version: int,
        create: Sequence[str],
        pool_size: int,
        connect_timeout: float,
        name: str,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.schema = validate_identifier(schema, "schema").lower()
        self.connect_timeout = connect_timeout
        if isinstance(url_or_pool, str):
            self.where = mask_url(url_or_pool)
            # A string, or (from a given pool) a callable making one.
            self.conninfo: Any = url_or_pool
            self._owns_pool = True
            options = " ".join(f"-c {k}={v}" for k, v in (settings or {}).items())
            kwargs: dict[str, Any] = {"autocommit": True}
            if options:
                kwargs["options"] = options
            self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                url_or_pool,
                min_size=1,
                max_size=max(1, pool_size),
                open=False,
                timeout=connect_timeout,
                kwargs=kwargs,
                name=name,
            )
        else:
            self.where = f"pool {url_or_pool.name!r}"
            self.conninfo = url_or_pool.conninfo
            self._owns_pool = False
            self.pool = url_or_pool
        self._version_table = version_table
        self._version = version
        self._create = list(create)
        self._ready = False
        self._lock = asyncio.Lock()
        self.closed = False

    async def run(self, work: Callable[[Conn], Awaitable[T]], *, transaction: bool = False) -> T:
        """Run ``work(conn)`` on a pooled connection, translating driver errors.

        Raises:
            StoreError: The database failed (`StoreUnavailableError` when unreachable).
        """
        if self.closed:
            raise StoreError(f"{self.pool.name}: closed")
        try:
            await self.ensure_ready()
            async with self.pool.connection() as conn:
                if not transaction:
                    return await work(conn)
                async with conn.transaction():
                    return await work(conn)
        except DRIVER_ERRORS as exc:
            if isinstance(exc, psycopg.OperationalError) and not self.pool.closed:
                # After a restart every idle connection is dead: weed them out at once.
                with contextlib.suppress(Exception):
                    await self.pool.check()
            raise _map_error(exc, self.where) from exc

    async def ensure_ready(self) -> None:
        """Open the pool and create (or check) the schema, once."""
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            if self._owns_pool and self.pool.closed:
                await self.pool.open(wait=True, timeout=self.connect_timeout)
            async with self.pool.connection() as conn:
                await self.create_schema(conn)
            self._ready = True

    async def create_schema(self, conn: Conn) -> None:
        """Create the tables on ``conn`` (under an advisory lock) or check their version.

        Raises:
            SchemaVersionError: The tables were made by a newer sagaflow.
        """
        async with conn.transaction():
            # CREATE ... IF NOT EXISTS still races with a concurrent first user.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(self.schema),))
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {identifier(self.schema)}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._version_table}"
                " (key text PRIMARY KEY, value text NOT NULL)"
            )
            cursor = await conn.execute(
                f"SELECT value FROM {self._version_table} WHERE key = 'schema_version'"
            )
            row = await cursor.fetchone()
            if row is not None and int(row[0]) > self._version:
                raise SchemaVersionError(int(row[0]), self._version)
            for statement in self._create:
                await conn.execute(statement)
            if row is None:
                await conn.execute(
                    f"INSERT INTO {self._version_table} (key, value) VALUES ('schema_version', %s)",
                    (str(self._version),),
                )

    async def resolve_conninfo(self) -> str:
        """Return the connection string (a pool may compute it per connection)."""
        info = self.conninfo
        if callable(info):
            info = info()
            if inspect.isawaitable(info):
                info = await info
        return str(info)

    async def close(self) -> None:
        """Close the pool if it was opened here; idempotent."""
        self.closed = True
        if self._owns_pool and not self.pool.closed:
            await self.pool.close()
