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

from ._crash_relay import BATCH, LEASE, FileTransport, from_json
from ._support import (
    ItemAdded,
    assert_ordered,
    drop_schema,
    new_schema,
    numbers_by_key,
    registry,
)

SCRIPT = Path(__file__).with_name("_crash_relay.py")
# More keys than one batch holds: both relays find work at the same time.
KEYS, PER_KEY = 24, 15
_LEASED = "SELECT count(*) FROM {table} WHERE state = 0 AND lease_owner = 'doomed'"


def _published(out: Path) -> list:
    if not out.exists():
        return []
    # The last line may be half written (read while the relay writes): not confirmed yet.
    complete = out.read_text().split("\n")[:-1]
    return [from_json(json.loads(line)) for line in complete if line]


def _last_by(out: Path) -> str | None:
    lines = out.read_text().split("\n")[:-1]
    return json.loads(lines[-1])["by"] if lines else None


async def _kill_mid_batch(outbox, args: list[str], out: Path, leased_by_doomed) -> None:
    """Run the doomed relay next to a surviving one; SIGKILL it mid-batch; finish.

    Both relays append to ``out`` when the "broker" confirms, so the file is the
    timeline of confirmed publishes across both processes.
    """
    process = await asyncio.create_subprocess_exec(sys.executable, str(SCRIPT), *args)
    survivor = OutboxRelay(
        outbox,
        FileTransport(str(out), "survivor"),
        batch_size=BATCH,
        lease=LEASE,
        poll_interval=0.05,
    )
    try:
        async with asyncio.timeout(20):
            while not _published(out):  # the doomed relay is at work
                assert process.returncode is None, "the relay process died by itself"
                await asyncio.sleep(0.005)
            await survivor.start()
            # Kill right after the doomed relay's broker stored a wave: its
            # confirmation is still on the way, its rows still leased.
            while len(_published(out)) < KEYS * PER_KEY // 3 or _last_by(out) != "doomed":
                assert process.returncode is None, "the relay process died by itself"
                await asyncio.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        await process.wait()
        assert process.returncode == -signal.SIGKILL
        assert await leased_by_doomed() > 0, "the relay was not killed in the middle of a batch"
        assert len(_published(out)) < KEYS * PER_KEY
        async with asyncio.timeout(20):
            while await outbox.pending():
                await asyncio.sleep(0.05)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()
        await survivor.stop()
        await survivor.transport.close()


async def _check(out: Path) -> None:
    everything = _published(out)
    # The wave stored just before the kill was never marked sent: published again.
    assert len(everything) > KEYS * PER_KEY
    decode = JsonSerializer(registry).decode
    by_key = numbers_by_key(everything, decode)
    assert sorted(by_key) == sorted(f"k{k}" for k in range(KEYS))
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

    async def leased_by_doomed() -> int:
        return conn.execute(_LEASED.format(table="sagaflow_outbox")).fetchone()[0]

    await _kill_mid_batch(outbox, ["sqlite", str(path), str(out)], out, leased_by_doomed)
    await outbox.close()
    await _check(out)


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

            async def leased_by_doomed() -> int:
                cursor = await conn.execute(_LEASED.format(table=f"{schema}.outbox"))
                found = (await cursor.fetchone())[0]
                await conn.commit()
                return int(found)

            args = ["postgres", postgres_url, schema, str(out)]
            await _kill_mid_batch(outbox, args, out, leased_by_doomed)
        await _check(out)
    finally:
        await outbox.close()
        await drop_schema(postgres_url, schema)
