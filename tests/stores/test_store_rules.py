"""Store rules no other test exercised, through the public API.

* SQLite (both modes, ``inline=True`` included): the first call finding the file
  locked by another connection, a call failing inside its transaction (alone,
  inline, or batched with others), values the driver cannot bind.
* Every store: after ``close()`` every method raises `StoreError`.
* PostgreSQL: a too-new schema refuses writes as well as reads; a pool closed by
  its owner gives `StoreError`, never a raw pool error.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import pytest_asyncio

import sagaflow.stores
from sagaflow.errors import (
    SagaNotFoundError,
    SchemaVersionError,
    StoreError,
    StoreUnavailableError,
)
from sagaflow.orchestration.records import Claim, RecordKind, SagaRecord
from sagaflow.stores import MemorySagaStore, SQLiteSagaStore

from ._pg import drop_schema
from ._support import first_records


def _completed(step: str = "reserve", attempt: int = 1) -> SagaRecord:
    return SagaRecord(RecordKind.STEP_COMPLETED, step, attempt, data={"ok": True})


def _not_a_driver_error(exc: BaseException) -> None:
    assert isinstance(exc, StoreError)
    assert not isinstance(exc, sqlite3.Error)


# -- SQLite: the first call, with another connection holding the lock ------------------


@pytest.mark.parametrize("inline", [False, True])
async def test_sqlite_first_call_on_a_locked_file_is_unavailable_then_recovers(
    tmp_path: Path, inline: bool
) -> None:
    """Opening the store waits up to busy_timeout for the schema, then the store recovers."""
    path = tmp_path / "s.db"
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process is writing before we ever open
    store = SQLiteSagaStore(path, busy_timeout=0.05, inline=inline)
    try:
        with pytest.raises(StoreUnavailableError) as caught:
            await store.list_sagas()
        assert caught.value.retryable
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    # The same task again: the connection is still not open, so (inline or not)
    # the call goes to the thread, which opens it and creates the schema.
    assert await store.list_sagas() == []
    await store.create("s1", first_records(), owner="w", lease=10)
    assert (await store.load("s1")).version == 2
    await store.close()


@pytest.mark.parametrize("inline", [False, True])
async def test_sqlite_write_waits_for_another_connection_within_busy_timeout(
    tmp_path: Path, inline: bool
) -> None:
    """A lock released before busy_timeout costs a wait, not an error."""
    path = tmp_path / "s.db"
    store = SQLiteSagaStore(path, busy_timeout=30.0, inline=inline)
    await store.create("s1", first_records(), owner="w", lease=10)
    await store.load("s1")  # the next call comes from the same task: inline if enabled
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    append = asyncio.ensure_future(
        store.append("s1", [_completed()], expected_version=2, fencing_token=1)
    )
    await asyncio.sleep(0.1)
    assert not append.done()  # waiting for the lock, and the loop still runs
    blocker.execute("ROLLBACK")
    blocker.close()
    assert await append == 3
    await store.close()


# -- SQLite: a call that fails inside its transaction -----------------------------------


def _drop_records_table(path: Path) -> str:
    """Drop the records table behind the store's back; return its DDL to restore it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        (ddl,) = conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'sagaflow_records'"
        ).fetchone()
        conn.execute("DROP TABLE sagaflow_records")
    finally:
        conn.close()
    return str(ddl)


def _restore(path: Path, ddl: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(ddl)
    finally:
        conn.close()


@pytest.mark.parametrize("inline", [False, True])
async def test_sqlite_call_failing_inside_its_transaction_writes_nothing(
    tmp_path: Path, inline: bool
) -> None:
    """A driver failure after the saga row was written rolls the whole call back.

    ``create`` writes the saga row, then its records; with the records table gone
    the second statement fails. The caller gets a `StoreError` (not the raw
    driver error), the saga row is not left behind, and the store works again
    once the table is back.
    """
    path = tmp_path / "s.db"
    store = SQLiteSagaStore(path, inline=inline)
    await store.create("s1", first_records(), owner="w", lease=10)
    await store.load("s1")  # same task from here on: inline if enabled
    ddl = _drop_records_table(path)
    for _ in range(2):  # the store stays usable after the failure
        with pytest.raises(StoreError) as caught:
            await store.create("s2", first_records(), owner="w", lease=10)
        _not_a_driver_error(caught.value)
        assert not isinstance(caught.value, StoreUnavailableError)
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert "no such table" in str(caught.value)
    _restore(path, ddl)
    with pytest.raises(SagaNotFoundError):
        await store.load("s2")  # the saga row of the failed create was rolled back
    assert [s.saga_id for s in await store.list_sagas()] == ["s1"]
    assert (await store.create("s2", first_records(), owner="w", lease=10)).fencing_token == 1
    assert (await store.load("s2")).version == 2
    await store.close()


async def test_sqlite_failure_in_a_batch_fails_the_batch_and_writes_nothing(
    tmp_path: Path,
) -> None:
    """Calls committed together share a transaction: an I/O-class failure dooms them all."""
    path = tmp_path / "s.db"
    store = SQLiteSagaStore(path)
    await store.create("s1", first_records(), owner="w", lease=10)
    ddl = _drop_records_table(path)
    results = await asyncio.gather(
        *(store.create(f"n{i}", first_records(), owner="w", lease=10) for i in range(20)),
        return_exceptions=True,
    )
    for result in results:
        assert isinstance(result, BaseException)
        _not_a_driver_error(result)
    _restore(path, ddl)
    assert [s.saga_id for s in await store.list_sagas()] == ["s1"]
    claims = await asyncio.gather(
        *(store.create(f"n{i}", first_records(), owner="w", lease=10) for i in range(20))
    )
    assert [c.fencing_token for c in claims] == [1] * 20
    await store.close()


@pytest.mark.parametrize("inline", [False, True])
async def test_sqlite_file_corrupted_while_open_is_a_store_error(
    tmp_path: Path, inline: bool
) -> None:
    """A corrupt file is StoreError (not retryable, not the raw driver error), every call."""
    path = tmp_path / "s.db"
    store = SQLiteSagaStore(path, inline=inline)
    await store.create("s1", first_records(), owner="w", lease=10)
    await store.load("s1")  # same task from here on: inline if enabled
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every page in the main file
    conn.close()
    size = path.stat().st_size
    with path.open("r+b") as file:  # keep the header page, overwrite the tables
        file.seek(4096)
        file.write(b"\xff" * (size - 4096))
    for _ in range(2):
        for call in (
            lambda: store.load("s1"),
            lambda: store.create("s2", first_records(), owner="w", lease=10),
        ):
            with pytest.raises(StoreError) as caught:
                await call()
            _not_a_driver_error(caught.value)
            assert not isinstance(caught.value, StoreUnavailableError)
            assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    await store.close()


@pytest.mark.parametrize("inline", [False, True])
async def test_sqlite_value_the_driver_cannot_store_is_a_store_error(
    tmp_path: Path, inline: bool
) -> None:
    """An attempt number beyond SQLite's 64-bit INTEGER: StoreError, nothing written.

    PostgreSQL refuses it with StoreError too (``integer out of range``); the
    sqlite3 driver raises OverflowError while binding, which must not escape.
    """
    store = SQLiteSagaStore(tmp_path / "s.db", inline=inline)
    await store.create("s1", first_records(), owner="w", lease=10)
    await store.create("s2", first_records(), owner="w", lease=10)
    await store.load("s1")  # same task from here on: inline if enabled
    huge = [_completed(), _completed("ship", 2**64)]  # the first record would fit
    with pytest.raises(StoreError) as caught:
        await store.append("s1", huge, expected_version=2, fencing_token=1)
    assert isinstance(caught.value.__cause__, OverflowError)
    assert (await store.load("s1")).version == 2
    # Batched with a good write: only the bad call fails.
    bad, good = await asyncio.gather(
        store.append("s1", huge, expected_version=2, fencing_token=1),
        store.append("s2", [_completed()], expected_version=2, fencing_token=1),
        return_exceptions=True,
    )
    assert isinstance(bad, StoreError)
    assert good == 3
    assert (await store.load("s1")).version == 2
    assert await store.append("s1", [_completed()], expected_version=2, fencing_token=1) == 3
    await store.close()


# -- every store: record data given as any Mapping --------------------------------------


class _Data(Mapping[str, Any]):
    def __init__(self, **items: Any) -> None:
        self._items = items

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("data", [MappingProxyType({"a": 1, "b": {"c": [1, 2]}}), _Data(a=1)])
async def test_record_data_of_any_mapping_comes_back_as_a_plain_dict(
    tmp_path: Path, kind: str, data: Mapping[str, Any]
) -> None:
    store: Any = MemorySagaStore() if kind == "memory" else SQLiteSagaStore(tmp_path / "s.db")
    await store.create("s1", first_records(), owner="w", lease=10)
    record = SagaRecord(RecordKind.STEP_COMPLETED, "reserve", 1, data=data)
    await store.append("s1", [record], expected_version=2, fencing_token=1)
    stored = (await store.load("s1")).records[-1].data
    assert type(stored) is dict
    assert stored == {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    await store.close()


# -- every store: closed means closed --------------------------------------------------


def _calls(store: Any) -> dict[str, Callable[[], Awaitable[Any]]]:
    claim = Claim("s1", 1, 0.0)
    return {
        "create": lambda: store.create("s2", first_records(), owner="w", lease=10),
        "append": lambda: store.append("s1", [_completed()], expected_version=2, fencing_token=1),
        "load": lambda: store.load("s1"),
        "list_sagas": lambda: store.list_sagas(),
        "claim": lambda: store.claim(owner="w", lease=10, limit=5),
        "acquire": lambda: store.acquire("s1", owner="w", lease=10),
        "renew": lambda: store.renew(owner="w", claims=[claim], lease=10),
        "renew nothing": lambda: store.renew(owner="w", claims=[], lease=10),
        "release": lambda: store.release("s1", fencing_token=1),
    }


async def _assert_closed_refuses_everything(store: Any) -> None:
    await store.create("s1", first_records(), owner="w", lease=10)
    await store.close()
    await store.close()  # idempotent
    for call in _calls(store).values():
        with pytest.raises(StoreError, match="closed"):
            await call()


async def test_memory_store_refuses_every_call_after_close() -> None:
    await _assert_closed_refuses_everything(MemorySagaStore())


@pytest.mark.parametrize("inline", [False, True])
async def test_sqlite_store_refuses_every_call_after_close(tmp_path: Path, inline: bool) -> None:
    await _assert_closed_refuses_everything(SQLiteSagaStore(tmp_path / "s.db", inline=inline))


# -- the package's lazy names ----------------------------------------------------------


def test_stores_package_names() -> None:
    assert dir(sagaflow.stores) == sorted(sagaflow.stores.__all__)
    assert sagaflow.stores.SQLiteSagaStore is SQLiteSagaStore
    with pytest.raises(AttributeError, match="NoSuchStore"):
        _ = sagaflow.stores.NoSuchStore  # type: ignore[attr-defined]


# -- PostgreSQL ------------------------------------------------------------------------


@pytest_asyncio.fixture
async def schema(postgres_url: str) -> AsyncIterator[str]:
    name = f"sf_rules_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_schema(postgres_url, name)


async def test_postgres_store_refuses_every_call_after_close(
    postgres_url: str, schema: str
) -> None:
    from sagaflow.stores import PostgresSagaStore

    await _assert_closed_refuses_everything(PostgresSagaStore(postgres_url, schema=schema))


async def test_postgres_newer_schema_refuses_writes_and_writes_nothing(
    postgres_url: str, schema: str
) -> None:
    """A schema made by a newer sagaflow: the first call being a write fails the same way."""
    import psycopg
    from psycopg import sql

    from sagaflow.stores import PostgresSagaStore
    from sagaflow.stores.postgres import SCHEMA_VERSION

    first = PostgresSagaStore(postgres_url, schema=schema)
    await first.create("s1", first_records(), owner="w", lease=10)
    await first.close()
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("UPDATE {}.meta SET value = %s WHERE key = 'schema_version'").format(
                sql.Identifier(schema)
            ),
            (str(SCHEMA_VERSION + 1),),
        )
    store = PostgresSagaStore(postgres_url, schema=schema)
    results = await asyncio.gather(  # creates and appends, batched together
        store.create("s2", first_records(), owner="w", lease=10),
        store.create("s3", first_records(), owner="w", lease=10),
        store.append("s1", [_completed()], expected_version=2, fencing_token=1),
        return_exceptions=True,
    )
    for result in results:
        assert isinstance(result, SchemaVersionError)
    with pytest.raises(SchemaVersionError):
        await store.append("s1", [_completed()], expected_version=2, fencing_token=1)
    await store.close()
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        cursor = await conn.execute(
            sql.SQL("SELECT id, version FROM {}.sagas ORDER BY id").format(sql.Identifier(schema))
        )
        assert await cursor.fetchall() == [("s1", 2)]


async def test_postgres_pool_closed_by_its_owner_is_a_store_error(
    postgres_url: str, schema: str
) -> None:
    """A pool the application passed in and then closed: StoreError, not a raw PoolClosed.

    (Writes of a store already used may still succeed: the batch writer keeps
    one checked-out connection, and a closed pool leaves those open.)
    """
    from psycopg_pool import AsyncConnectionPool, PoolClosed

    from sagaflow.stores import PostgresSagaStore

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        postgres_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
    )
    await pool.open(wait=True)
    used = PostgresSagaStore(pool, schema=schema)
    await used.create("s1", first_records(), owner="w", lease=10)
    unused = PostgresSagaStore(pool, schema=schema)
    await pool.close()
    for call in (
        lambda: used.load("s1"),
        lambda: used.claim(owner="w", lease=10, limit=5),
        lambda: unused.load("s1"),
        lambda: unused.create("s2", first_records(), owner="w", lease=10),
        lambda: unused.append("s1", [_completed()], expected_version=2, fencing_token=1),
    ):
        with pytest.raises(StoreError) as caught:
            await call()
        assert not isinstance(caught.value, StoreUnavailableError)
        assert isinstance(caught.value.__cause__, PoolClosed)
    await used.close()
    await unused.close()
