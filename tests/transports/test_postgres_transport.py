from __future__ import annotations

import pytest

from sagaflow.transports.postgres import PostgresTransport

from . import _scenarios as sc

pytestmark = pytest.mark.services


class TestPostgresTransportContract(sc.BrokerTests):
    url_fixture = "postgres_url"

    async def make_transport(self) -> PostgresTransport:
        return PostgresTransport(self.url, lease=30.0, poll_interval=0.5)

    async def make_capped_transport(self, max_deliveries: int) -> PostgresTransport:
        return PostgresTransport(self.url, max_deliveries=max_deliveries, poll_interval=0.5)


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
