"""Rules of the PostgreSQL transport, each exercised against the real database.

Every test uses tables of its own (a unique prefix) and drops them; malformed rows
are inserted with psycopg straight into the queue table the transport reads.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sagaflow.transports.postgres import PostgresTransport

from . import _scenarios as sc

pytestmark = pytest.mark.services

Make = Callable[..., PostgresTransport]


@pytest.fixture
async def prefix(postgres_url: str) -> AsyncIterator[str]:
    import psycopg

    p = f"sft_{uuid.uuid4().hex[:8]}_"
    yield p
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        for table in ("groups", "queue", "dead_letters"):
            await conn.execute(f"DROP TABLE IF EXISTS {p}{table}")


@pytest.fixture
async def make(postgres_url: str, prefix: str) -> AsyncIterator[Make]:
    make = sc.Transports(PostgresTransport, postgres_url, prefix=prefix, poll_interval=0.2)
    yield make
    await make.close()


@pytest.fixture
async def sql(postgres_url: str) -> AsyncIterator[Any]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        yield conn


MALFORMED = [
    ("headers an array", "[1, 2]"),
    ("headers a number", "7"),
    ("header value not text", '{"n": 1}'),
    ("header value an object", '{"n": {"deep": "x"}}'),
]


async def test_malformed_rows_are_dead_lettered_and_the_consumer_goes_on(
    make: Make, prefix: str, sql: Any
) -> None:
    """Rows another writer inserted: moved to the dead letters with a reason, kept as is."""
    t = make()
    topic, group = sc.name("bad"), sc.name("g")
    await t.declare(topic, group=group)
    for i, (_, headers) in enumerate(MALFORMED):
        await sql.execute(
            f"INSERT INTO {prefix}queue (topic, grp, msg_id, body, headers) "
            "VALUES (%s, %s, %s, %s, %s::jsonb)",
            (topic, group, f"bad-{i}", b"raw", headers),
        )
    good = sc.msg(topic, 1)
    await t.publish([good])
    it = t.subscribe(topic, group=group)
    (d,) = await sc.take(it, 1)  # the consumer died on the first malformed row before
    assert d.message == good
    await d.ack()
    await sc.nothing_within(it, 0.5)
    letters = await t.dead_letters(topic, group=group)
    assert [x.message.id for x in letters] == [f"bad-{i}" for i in range(len(MALFORMED))]
    assert all(x.reason.startswith("malformed row: ") for x in letters)
    assert all(x.message.body == b"raw" and x.message.headers == {} for x in letters)
    # The table keeps each row's own headers; the queue holds nothing any more.
    cur = await sql.execute(f"SELECT headers::text FROM {prefix}dead_letters ORDER BY seq")
    stored = [json.loads(row[0]) for row in await cur.fetchall()]
    assert stored == [json.loads(h) for _, h in MALFORMED]
    await asyncio.sleep(0.2)  # the ack is written behind
    cur = await sql.execute(f"SELECT count(*) FROM {prefix}queue")
    assert (await cur.fetchone())[0] == 0
