"""PostgreSQL-specific behaviour: schema creation and versions, pools, error mapping."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from sagaflow.errors import (
    FencedError,
    SagaNotFoundError,
    SchemaVersionError,
    StoreError,
    StoreUnavailableError,
)
from sagaflow.orchestration.records import RecordKind, SagaRecord
from sagaflow.stores import PostgresSagaStore
from sagaflow.stores.postgres import SCHEMA_VERSION, _map_error

from ._pg import drop_schema
from ._support import first_records


@pytest_asyncio.fixture
async def schema(postgres_url: str) -> AsyncIterator[str]:
    name = f"sf_test_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_schema(postgres_url, name)


async def _sql(url: str, query: sql.Composable) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(query)
        return await cursor.fetchall() if cursor.description else []


async def test_schema_is_created_with_its_version(postgres_url: str, schema: str) -> None:
    store = PostgresSagaStore(postgres_url, schema=schema)
    await store.create("s1", first_records(), owner="w", lease=10)
    await store.close()
    rows = await _sql(
        postgres_url,
        sql.SQL("SELECT value FROM {}.meta WHERE key = 'schema_version'").format(
            sql.Identifier(schema)
        ),
    )
    assert rows == [(str(SCHEMA_VERSION),)]


async def test_concurrent_first_users_do_not_race(postgres_url: str, schema: str) -> None:
    stores = [PostgresSagaStore(postgres_url, schema=schema) for _ in range(5)]

    async def first_use(store: PostgresSagaStore) -> None:
        with pytest.raises(SagaNotFoundError):
            await store.load("nothing")

    await asyncio.gather(*(first_use(s) for s in stores))
    await stores[0].create("s1", first_records(), owner="w", lease=10)
    assert (await stores[4].load("s1")).version == 2
    await asyncio.gather(*(s.close() for s in stores))


async def test_newer_schema_is_refused(postgres_url: str, schema: str) -> None:
    store = PostgresSagaStore(postgres_url, schema=schema)
    await store.list_sagas()
    await store.close()
    await _sql(
        postgres_url,
        sql.SQL("UPDATE {}.meta SET value = '99' WHERE key = 'schema_version'").format(
            sql.Identifier(schema)
        ),
    )
    newer = PostgresSagaStore(postgres_url, schema=schema)
    with pytest.raises(SchemaVersionError) as caught:
        await newer.list_sagas()
    assert (caught.value.found, caught.value.supported) == (99, SCHEMA_VERSION)
    await newer.close()


async def test_given_pool_is_used_and_left_open(postgres_url: str, schema: str) -> None:
    async with AsyncConnectionPool(postgres_url, min_size=1, max_size=2, open=False) as pool:
        store = PostgresSagaStore(pool, schema=schema)
        await store.create("s1", first_records(), owner="w", lease=10)  # pool not autocommit
        assert (await store.load("s1")).version == 2
        await store.close()
        assert not pool.closed
        store2 = PostgresSagaStore(pool, schema=schema)
        assert (await store2.load("s1")).version == 2
        await store2.close()


# -- error mapping ---------------------------------------------------------------------


async def test_unreachable_server_is_unavailable_and_password_is_masked() -> None:
    url = "postgresql://user:hunter2@127.0.0.1:1/db"
    store = PostgresSagaStore(url, connect_timeout=0.5)
    assert "hunter2" not in repr(store)
    with pytest.raises(StoreUnavailableError) as caught:
        await store.list_sagas()
    assert caught.value.retryable
    assert "hunter2" not in str(caught.value)
    await store.close()


@pytest.mark.parametrize("pool_size", [1, 2])
async def test_lost_connections_are_unavailable_then_recover(
    postgres_url: str, schema: str, pool_size: int
) -> None:
    # pool_size 1: reads and writes share one pooled connection; 2: the batch
    # writer keeps its own connection.
    app = f"sagaflow-test-{uuid.uuid4().hex[:8]}"
    pool: AsyncConnectionPool[psycopg.AsyncConnection[object]] = AsyncConnectionPool(
        postgres_url,
        min_size=pool_size,
        max_size=pool_size,
        open=False,
        kwargs={"autocommit": True, "application_name": app},
    )
    await pool.open()
    store = PostgresSagaStore(pool, schema=schema)
    await store.create("s1", first_records(), owner="w", lease=10)
    assert (await store.load("s1")).version == 2
    await _sql(
        postgres_url,
        sql.SQL(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = {}"
        ).format(sql.Literal(app)),
    )
    with pytest.raises(StoreUnavailableError) as caught:
        await store.create("s2", first_records(), owner="w", lease=10)
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    # One failure is enough: the store has the pool weed out its other dead connections.
    await store.create("s2", first_records(), owner="w", lease=10)
    assert (await store.load("s1")).version == 2
    await store.close()
    await pool.close()


async def test_dropped_tables_are_a_store_error(postgres_url: str, schema: str) -> None:
    store = PostgresSagaStore(postgres_url, schema=schema)
    await store.create("s1", first_records(), owner="w", lease=10)
    await _sql(postgres_url, sql.SQL("DROP TABLE {}.records").format(sql.Identifier(schema)))
    with pytest.raises(StoreError) as caught:
        await store.load("s1")
    assert not isinstance(caught.value, StoreUnavailableError)
    assert isinstance(caught.value.__cause__, psycopg.errors.UndefinedTable)
    assert "42P01" in str(caught.value)
    await store.close()


def test_driver_errors_map_to_store_errors() -> None:
    assert isinstance(_map_error(psycopg.OperationalError("gone"), "x"), StoreUnavailableError)
    assert isinstance(_map_error(PoolTimeout("no connection"), "x"), StoreUnavailableError)
    mapped = _map_error(psycopg.errors.UndefinedTable("no table"), "x")
    assert type(mapped) is StoreError


def test_bad_schema_name_is_refused() -> None:
    with pytest.raises(ValueError, match="schema"):
        PostgresSagaStore("postgresql://127.0.0.1/x", schema="bad; DROP")


async def test_deadlocked_batch_is_redone_write_by_write(
    postgres_url: str, schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PostgresSagaStore(postgres_url, schema=schema)
    claims = [await store.create(f"s{i}", first_records(), owner="w", lease=10) for i in range(6)]
    real = store._run_appends
    sizes: list[int] = []

    async def deadlocking(conn: psycopg.AsyncConnection[object], writes: list[object]) -> object:
        sizes.append(len(writes))
        if len(writes) > 1:
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return await real(conn, writes)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_run_appends", deadlocking)
    done = SagaRecord(RecordKind.STEP_COMPLETED, "reserve", 1)
    versions = await asyncio.gather(
        *(
            store.append(c.saga_id, [done], expected_version=2, fencing_token=c.fencing_token)
            for c in claims
        )
    )
    assert versions == [3] * 6
    assert max(sizes) > 1  # a real batch was tried first
    await store.close()


async def test_two_workers_share_sagas_without_overlap(postgres_url: str, schema: str) -> None:
    # Two stores with their own pools stand for two worker processes.
    a = PostgresSagaStore(postgres_url, schema=schema, pool_size=4)
    b = PostgresSagaStore(postgres_url, schema=schema, pool_size=4)
    for i in range(30):
        await a.create(f"s{i:02d}", first_records(), owner="crashed", lease=0)
    taken = await asyncio.gather(
        *(
            store.claim(owner=name, lease=60, limit=4)
            for _ in range(5)
            for store, name in ((a, "a"), (b, "b"))
        )
    )
    ids = [c.saga_id for claims in taken for c in claims]
    assert len(ids) == len(set(ids)) == 30
    # The creator's token is stale in every process; the claimant's works in any.
    first = next(c for claims in taken for c in claims)
    done = SagaRecord(RecordKind.STEP_COMPLETED, "reserve", 1)
    with pytest.raises(FencedError):
        await b.append(first.saga_id, [done], expected_version=2, fencing_token=1)
    assert (
        await b.append(first.saga_id, [done], expected_version=2, fencing_token=first.fencing_token)
        == 3
    )
    await a.close()
    await b.close()
