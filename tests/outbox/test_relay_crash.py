"""A relay killed with SIGKILL mid-batch: everything is published later, nothing lost.

Duplicates are allowed (the dead relay published rows it never marked sent); a
bus with a durable inbox then handles every event exactly once.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from sagaflow import EventBus, MemoryTransport
from sagaflow.choreography.inbox_sqlite import SQLiteInbox
from sagaflow.choreography.outbox import OutboxRelay
from sagaflow.choreography.outbox_sqlite import SQLiteOutbox
from sagaflow.serialization import JsonSerializer

from ._crash_relay import LEASE, from_json
from ._support import (
    ItemAdded,
    RecordingTransport,
    assert_ordered,
    drop_schema,
    new_schema,
    numbers_by_key,
    registry,
)

SCRIPT = Path(__file__).with_name("_crash_relay.py")
KEYS, PER_KEY = 6, 40


def _published(out: Path) -> list:
    if not out.exists():
        return []
    # The last line may be half written (read while the relay writes): not confirmed yet.
    complete = out.read_text().split("\n")[:-1]
    return [from_json(json.loads(line)) for line in complete if line]


async def _kill_mid_batch(args: list[str], out: Path) -> None:
    process = await asyncio.create_subprocess_exec(sys.executable, str(SCRIPT), *args)
    try:
        async with asyncio.timeout(20):
            while len(_published(out)) < KEYS * PER_KEY // 3:
                assert process.returncode is None, "the relay process died by itself"
                await asyncio.sleep(0.005)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL


async def _finish_and_check(outbox, out: Path, leased_by_dead: int) -> None:
    assert leased_by_dead > 0, "the relay was not killed in the middle of a batch"
    before = _published(out)
    assert len(before) < KEYS * PER_KEY
    transport = RecordingTransport()
    async with OutboxRelay(outbox, transport, lease=LEASE, poll_interval=0.05):
        async with asyncio.timeout(20):
            while await outbox.pending():
                await asyncio.sleep(0.05)
    everything = before + transport.published
    decode = JsonSerializer(registry).decode
    by_key = numbers_by_key(everything, decode)
    assert sorted(by_key) == [f"k{k}" for k in range(KEYS)]
    for sequence in by_key.values():
        assert_ordered(sequence, PER_KEY)
    # The copies are absorbed by a durable inbox: each event is handled once.
    await _handle_once(everything, out.with_suffix(".inbox.db"))


async def _handle_once(messages, inbox_path: Path) -> None:
    transport = MemoryTransport()
    inbox = SQLiteInbox(inbox_path)
    bus = EventBus(transport, registry=registry, inbox=inbox)
    handled: list[tuple[str, int]] = []
    bus.subscribe(ItemAdded, lambda e: handled.append((e.key, e.n)), group="consumer")
    async with bus:
        await transport.publish(messages)
        await bus.join()
    await inbox.close()
    assert len(handled) == KEYS * PER_KEY == len(set(handled))
    assert bus.stats.duplicates == len(messages) - KEYS * PER_KEY


async def test_sqlite_relay_killed_mid_batch(tmp_path):
    path = tmp_path / "app.db"
    outbox = SQLiteOutbox(path, bus=EventBus(registry=registry))
    conn = outbox.connect()
    with conn:
        for n in range(PER_KEY):
            for k in range(KEYS):
                outbox.add(conn, ItemAdded(key=f"k{k}", n=n), key=f"k{k}")
    out = tmp_path / "published.jsonl"
    await _kill_mid_batch(["sqlite", str(path), str(out)], out)
    leased = conn.execute(
        "SELECT count(*) FROM sagaflow_outbox WHERE state = 0 AND lease_owner = 'doomed'"
    ).fetchone()[0]
    await _finish_and_check(outbox, out, leased)
    await outbox.close()


@pytest.mark.services
async def test_postgres_relay_killed_mid_batch(tmp_path, postgres_url):
    import psycopg

    from sagaflow.choreography.outbox_postgres import PostgresOutbox

    schema = new_schema()
    outbox = PostgresOutbox(postgres_url, bus=EventBus(registry=registry), schema=schema)
    await outbox.create_schema()
    try:
        async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
            for n in range(PER_KEY):
                for k in range(KEYS):
                    await outbox.add(conn, ItemAdded(key=f"k{k}", n=n), key=f"k{k}")
            await conn.commit()
            out = tmp_path / "published.jsonl"
            await _kill_mid_batch(["postgres", postgres_url, schema, str(out)], out)
            cursor = await conn.execute(
                f"SELECT count(*) FROM {schema}.outbox WHERE state = 0 AND lease_owner = 'doomed'"
            )
            leased = (await cursor.fetchone())[0]
            await conn.commit()
        await _finish_and_check(outbox, out, leased)
    finally:
        await outbox.close()
        await drop_schema(postgres_url, schema)
