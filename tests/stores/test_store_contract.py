"""Every saga store passes the one contract suite: memory, SQLite, and PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from sagaflow.clock import Clock
from sagaflow.orchestration.store import SagaStore
from sagaflow.stores import MemorySagaStore, SQLiteSagaStore
from sagaflow.testing.store_contract import SagaStoreContract

from ._pg import drop_schema


class TestMemoryStore(SagaStoreContract):
    async def make_store(self, clock: Clock) -> SagaStore:
        return MemorySagaStore(clock=clock)


class TestSQLiteStore(SagaStoreContract):
    stateful_examples = 15

    @pytest.fixture(autouse=True)
    def _directory(self, tmp_path: Path) -> None:
        self.directory = tmp_path
        self.count = 0

    async def make_store(self, clock: Clock) -> SagaStore:
        # The stateful test makes one store per example: give each its own file.
        self.count += 1
        return SQLiteSagaStore(self.directory / f"sagas{self.count}.db", clock=clock)


class TestPostgresStore(SagaStoreContract):
    stateful_examples = 15

    @pytest.fixture(autouse=True)
    def _server(self, postgres_url: str) -> None:
        self.url = postgres_url

    async def make_store(self, clock: Clock) -> SagaStore:
        from sagaflow.stores import PostgresSagaStore  # needs the postgres extra

        return PostgresSagaStore(self.url, schema=f"sf_test_{uuid.uuid4().hex[:12]}", clock=clock)

    async def dispose_store(self, store: SagaStore) -> None:
        await store.close()
        await drop_schema(self.url, store.schema)  # type: ignore[attr-defined]


class TestSQLiteStoreInline(TestSQLiteStore):
    """The same contract with ``inline=True`` (calls run on the event loop when idle)."""

    async def make_store(self, clock: Clock) -> SagaStore:
        self.count += 1
        return SQLiteSagaStore(self.directory / f"sagas{self.count}.db", clock=clock, inline=True)
