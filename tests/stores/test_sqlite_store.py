"""SQLite-specific behaviour: pragmas, schema versions, error mapping, crash durability."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sagaflow.errors import (
    ConcurrencyError,
    FencedError,
    SchemaVersionError,
    StoreError,
    StoreUnavailableError,
)
from sagaflow.orchestration.records import RecordKind, SagaRecord
from sagaflow.stores import SQLiteSagaStore
from sagaflow.stores._sqlite import map_error as _map_error
from sagaflow.stores.sqlite import SCHEMA_VERSION

from ._support import first_records


def _completed(step: str = "reserve") -> SagaRecord:
    return SagaRecord(RecordKind.STEP_COMPLETED, step, 1, data={"updates": {}})


async def test_wal_mode_and_schema_version_are_set(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteSagaStore(path)
    await store.create("s1", first_records(), owner="w", lease=10)
    await store.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        version = raw.execute(
            "SELECT value FROM sagaflow_meta WHERE key = 'schema_version'"
        ).fetchone()[0]
        assert int(version) == SCHEMA_VERSION


async def test_log_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteSagaStore(path)
    claim = await store.create("s1", first_records(), owner="w", lease=10)
    await store.append("s1", [_completed()], expected_version=2, fencing_token=1)
    await store.close()
    again = SQLiteSagaStore(path, synchronous="NORMAL")
    log = await again.load("s1")
    assert (log.version, log.fencing_token, log.owner) == (3, claim.fencing_token, "w")
    await again.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SQLiteSagaStore(path)
    await store.list_sagas()
    await store.close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE sagaflow_meta SET value = '99' WHERE key = 'schema_version'")
    newer = SQLiteSagaStore(path)
    with pytest.raises(SchemaVersionError) as caught:
        await newer.list_sagas()
    assert (caught.value.found, caught.value.supported) == (99, SCHEMA_VERSION)
    await newer.close()


async def test_table_prefixes_keep_stores_apart(tmp_path: Path) -> None:
    a = SQLiteSagaStore(tmp_path / "s.db", table_prefix="a_")
    b = SQLiteSagaStore(tmp_path / "s.db", table_prefix="b_")
    await a.create("s1", first_records(), owner="w", lease=10)
    assert await b.list_sagas() == []
    await a.close()
    await b.close()


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        SQLiteSagaStore(tmp_path / "s.db", synchronous="OFF")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="table_prefix"):
        SQLiteSagaStore(tmp_path / "s.db", table_prefix="x; DROP TABLE y")


async def test_two_stores_on_one_file_share_leases_and_fencing(tmp_path: Path) -> None:
    # Two store objects stand for two processes sharing one database file.
    store_a = SQLiteSagaStore(tmp_path / "s.db")
    store_b = SQLiteSagaStore(tmp_path / "s.db")
    await store_a.create("s1", first_records(), owner="a", lease=0)
    (claim,) = await store_b.claim(owner="b", lease=60, limit=5)
    with pytest.raises(FencedError):
        await store_a.append("s1", [_completed()], expected_version=2, fencing_token=1)
    assert (
        await store_b.append(
            "s1", [_completed()], expected_version=2, fencing_token=claim.fencing_token
        )
        == 3
    )
    assert await store_a.claim(owner="a", lease=60, limit=5) == []
    await store_a.close()
    await store_b.close()


async def test_in_memory_database_works(tmp_path: Path) -> None:
    store = SQLiteSagaStore(":memory:")
    await store.create("s1", first_records(), owner="w", lease=10)
    assert (await store.load("s1")).version == 2
    await store.close()


# -- error mapping ---------------------------------------------------------------------


async def test_unopenable_path_is_unavailable(tmp_path: Path) -> None:
    store = SQLiteSagaStore(tmp_path / "missing-dir" / "s.db")
    with pytest.raises(StoreUnavailableError) as caught:
        await store.list_sagas()
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert caught.value.retryable
    await store.close()


async def test_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"this is not an sqlite database" * 100)
    store = SQLiteSagaStore(path)
    with pytest.raises(StoreError) as caught:
        await store.list_sagas()
    assert not isinstance(caught.value, StoreUnavailableError)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    await store.close()


@pytest.mark.parametrize("inline", [False, True])
async def test_locked_database_is_unavailable_then_recovers(tmp_path: Path, inline: bool) -> None:
    path = tmp_path / "s.db"
    store = SQLiteSagaStore(path, busy_timeout=0.05, inline=inline)
    await store.create("s1", first_records(), owner="w", lease=10)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailableError, match="locked"):
            await store.append("s1", [_completed()], expected_version=2, fencing_token=1)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await store.append("s1", [_completed()], expected_version=2, fencing_token=1) == 3
    await store.close()


def test_driver_errors_map_to_store_errors() -> None:
    locked = _map_error(sqlite3.OperationalError("database is locked"))
    assert isinstance(locked, StoreUnavailableError)
    assert isinstance(locked.__cause__, sqlite3.OperationalError)
    integrity = _map_error(sqlite3.IntegrityError("UNIQUE constraint failed"))
    assert type(integrity) is StoreError
    corrupt = _map_error(sqlite3.DatabaseError("database disk image is malformed"))
    assert type(corrupt) is StoreError
    passthrough = ConcurrencyError("s1", expected_version=1, actual_version=2)
    assert _map_error(passthrough) is passthrough


async def test_cancelled_caller_does_not_break_the_store(tmp_path: Path) -> None:
    store = SQLiteSagaStore(tmp_path / "s.db")
    task = asyncio.ensure_future(store.create("s1", first_records(), owner="w", lease=10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The write may or may not have happened; the store keeps working either way.
    await store.create("s2", first_records(), owner="w", lease=10)
    assert {s.saga_id for s in await store.list_sagas()} >= {"s2"}
    await store.close()


# -- crash durability ------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from sagaflow.orchestration.records import RecordKind, SagaRecord
    from sagaflow.stores import SQLiteSagaStore

    async def main() -> None:
        store = SQLiteSagaStore(sys.argv[1], synchronous=sys.argv[2], inline=sys.argv[3] == "1")
        first = [SagaRecord(RecordKind.SAGA_STARTED, data={"saga": "crash"})]
        await store.create("s", first, owner="w", lease=60)
        version = 1
        while True:
            records = [SagaRecord(RecordKind.STEP_STARTED, "x", version)]
            version = await store.append("s", records, expected_version=version, fencing_token=1)
            print(version, flush=True)  # acknowledged: must survive kill -9

    asyncio.run(main())
    """
)


def _write_until_killed(path: Path, count: int, synchronous: str, inline: bool) -> int:
    """Run the writer in a subprocess, SIGKILL it after ``count`` acknowledged appends."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), synchronous, "1" if inline else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acknowledged = 0
    for line in proc.stdout:
        acknowledged = int(line)
        if acknowledged >= count:
            break
    proc.kill()  # SIGKILL: no cleanup, no final commit
    proc.wait()
    proc.stdout.close()
    return acknowledged


@pytest.mark.parametrize(
    ("synchronous", "inline"), [("FULL", False), ("NORMAL", False), ("FULL", True)]
)
def test_acknowledged_writes_survive_kill_9(tmp_path: Path, synchronous: str, inline: bool) -> None:
    path = tmp_path / "crash.db"
    acknowledged = _write_until_killed(path, 200, synchronous, inline)

    async def check() -> None:
        store = SQLiteSagaStore(path)
        log = await store.load("s")
        assert log.version >= acknowledged
        assert [r.attempt for r in log.records[1:]] == list(range(1, log.version))
        await store.close()

    asyncio.run(check())


@pytest.mark.parametrize("inline", [False, True])
async def test_a_failing_call_alone_in_its_transaction_leaves_nothing(tmp_path, inline) -> None:
    """A call that fails after writing is rolled back, alone (or inline) or batched with others."""
    import asyncio as _asyncio

    from sagaflow.stores.sqlite import SQLiteSagaStore

    store = SQLiteSagaStore(tmp_path / "alone.db", inline=inline)
    await store.list_sagas()  # creates the schema

    def write_then_fail(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS probe (n INTEGER)")
        conn.execute("INSERT INTO probe VALUES (1)")
        raise ValueError("boom")

    def count(conn):
        return conn.execute("SELECT count(*) FROM probe").fetchone()[0]

    def create_probe(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS probe (n INTEGER)")

    await store._worker.run(create_probe)
    with pytest.raises(Exception, match="boom"):
        await store._worker.run(write_then_fail)  # alone in its transaction
    assert await store._worker.run(count) == 0
    results = await _asyncio.gather(
        store._worker.run(write_then_fail), store._worker.run(count), return_exceptions=True
    )
    assert isinstance(results[0], Exception)
    assert await store._worker.run(count) == 0
    await store.close()


# -- inline mode -----------------------------------------------------------------------


async def test_inline_calls_run_on_the_event_loop_thread_only_when_idle(tmp_path: Path) -> None:
    store = SQLiteSagaStore(tmp_path / "s.db", inline=True)
    here = threading.get_ident()

    def where(conn: sqlite3.Connection) -> int:
        return threading.get_ident()

    assert await store._worker.run(where) != here  # the first call opens the connection
    assert await store._worker.run(where) == here  # same task, nothing in flight: inline
    assert await store._worker.run(where) == here
    # Calls from several tasks in turn are concurrent work: the thread commits them together.
    threads = await asyncio.gather(*(store._worker.run(where) for _ in range(4)))
    assert here not in threads
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store._worker.run(where)


async def test_inline_call_does_not_overtake_a_call_on_the_thread(tmp_path: Path) -> None:
    store = SQLiteSagaStore(tmp_path / "s.db", inline=True)
    worker = store._worker
    done: list[str] = []
    await asyncio.create_task(worker.run(lambda conn: None))  # opens the connection
    run_batch = worker._run_batch

    def late_run_batch(batch: Any) -> None:
        time.sleep(0.2)  # taken off the queue, connection still free
        run_batch(batch)

    worker._run_batch = late_run_batch  # type: ignore[method-assign]
    me = asyncio.current_task()
    assert me is not None
    asyncio.get_running_loop().call_later(0.05, me.cancel)
    with pytest.raises(asyncio.CancelledError):
        await worker.run(lambda conn: done.append("first"))  # another task called last: thread
    me.uncancel()
    await worker.run(lambda conn: done.append("second"))  # would run inline: must queue
    assert done == ["first", "second"]
    await store.close()


async def test_inline_call_never_waits_for_another_process_lock_on_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.db"
    store = SQLiteSagaStore(path, inline=True)
    await store.create("s1", first_records(), owner="w", lease=10)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process is writing

    async def writer() -> int:
        await store._worker.run(lambda conn: None, write=False)  # reads need no lock
        # Same task, nothing in flight: tried inline, finds the lock taken, and
        # waits for it on the thread rather than on the event loop.
        return await store.append("s1", [_completed()], expected_version=2, fencing_token=1)

    try:
        append = asyncio.ensure_future(writer())
        started = time.monotonic()
        await asyncio.sleep(0.05)
        assert time.monotonic() - started < 1.0  # the loop kept running
        assert not append.done()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert await append == 3
    assert (await store.load("s1")).version == 3
    await store.close()


async def test_inline_store_in_memory_and_reopened(tmp_path: Path) -> None:
    memory = SQLiteSagaStore(":memory:", inline=True)
    await memory.create("s1", first_records(), owner="w", lease=10)
    assert await memory.append("s1", [_completed()], expected_version=2, fencing_token=1) == 3
    assert (await memory.load("s1")).version == 3
    await memory.close()
    path = tmp_path / "s.db"
    store = SQLiteSagaStore(path, inline=True)
    await store.create("s1", first_records(), owner="w", lease=10)
    await store.append("s1", [_completed()], expected_version=2, fencing_token=1)
    await store.close()
    again = SQLiteSagaStore(path)
    assert (await again.load("s1")).version == 3
    await again.close()
