from __future__ import annotations

from typing import Any

import pytest

from sagaflow.testing.transport_contract import TransportContract
from sagaflow.transports.postgres import PostgresTransport

from . import _scenarios as sc

pytestmark = pytest.mark.services


@pytest.fixture
def factory(postgres_url: str) -> sc.Factory:
    async def make() -> PostgresTransport:
        return PostgresTransport(postgres_url, lease=30.0, poll_interval=0.5)

    return make


class TestPostgresTransportContract(TransportContract):
    redelivery_timeout = 10.0

    @pytest.fixture(autouse=True)
    def _service(self, postgres_url: str) -> None:
        self.url = postgres_url

    async def make_transport(self) -> PostgresTransport:
        return PostgresTransport(self.url, lease=30.0, poll_interval=0.5)


async def read_dlq(t: Any, topic: str) -> list[tuple[str, str]]:
    return [(d.message.id, d.reason) for d in await t.dead_letters(topic)]


async def test_dead_letter(factory: sc.Factory) -> None:
    await sc.dead_letter(factory, read_dlq)


async def test_redelivered_after_close(factory: sc.Factory) -> None:
    await sc.redelivered_after_close(factory)


async def test_max_deliveries(postgres_url: str) -> None:
    async def make() -> PostgresTransport:
        return PostgresTransport(postgres_url, max_deliveries=3, poll_interval=0.5)

    await sc.max_deliveries(make, read_dlq, 3)


async def test_publish_in_user_transaction(postgres_url: str) -> None:
    import psycopg

    t = PostgresTransport(postgres_url, poll_interval=0.5)
    topic, group = sc.name("topic"), sc.name("g")
    try:
        it = t.subscribe(topic, group=group)
        first = await sc.started(it)
        conn = await psycopg.AsyncConnection.connect(postgres_url)
        async with conn:
            async with conn.transaction(force_rollback=True):
                await t.publish_in(conn, [sc.msg(topic, 1)])  # rolled back: never published
            async with conn.transaction():
                m = sc.msg(topic, 2)
                await t.publish_in(conn, [m])
        d = await first
        assert d.message.id == m.id
        await d.ack()
        await sc.nothing_within(it, 1.0)
    finally:
        await t.close()
