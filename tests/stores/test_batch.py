"""The group-commit batcher: one write per saga per batch, cancellation, errors."""

from __future__ import annotations

import asyncio

import pytest

from sagaflow.stores._batch import Batcher, PendingWrite


async def test_concurrent_writes_share_batches_one_per_saga() -> None:
    batches: list[list[tuple[str, int]]] = []

    async def run(batch: list[PendingWrite]) -> None:
        batches.append([(w.saga_id, w.payload) for w in batch])
        await asyncio.sleep(0.01)
        for w in batch:
            w.settle(w.payload * 10)

    batcher = Batcher(run, max_batch=3)
    writes = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("d", 5)]
    results = await asyncio.gather(
        *(batcher.submit(PendingWrite("w", saga, n)) for saga, n in writes)
    )
    assert results == [10, 20, 30, 40, 50]
    assert batches == [[("a", 1), ("b", 2), ("c", 4)], [("a", 3), ("d", 5)]]
    await batcher.wait_idle()


async def test_cancelled_caller_does_not_stop_the_batch() -> None:
    release = asyncio.Event()
    ran: list[str] = []

    async def run(batch: list[PendingWrite]) -> None:
        await release.wait()
        for w in batch:
            ran.append(w.saga_id)
            w.settle(True)

    batcher = Batcher(run)
    first = asyncio.ensure_future(batcher.submit(PendingWrite("w", "a", None)))
    second = batcher.submit(PendingWrite("w", "b", None))
    await asyncio.sleep(0)
    first.cancel()
    release.set()
    assert await second is True
    await batcher.wait_idle()
    assert ran == ["a", "b"]


async def test_write_cancelled_before_its_batch_is_dropped() -> None:
    gate = asyncio.Event()
    ran: list[str] = []

    async def run(batch: list[PendingWrite]) -> None:
        await gate.wait()
        for w in batch:
            ran.append(w.saga_id)
            w.settle(True)

    batcher = Batcher(run)
    batcher.submit(PendingWrite("w", "a", None))
    await asyncio.sleep(0)  # "a" is in flight; the next writes wait for the next batch
    late = PendingWrite("w", "b", None)
    batcher.submit(late)
    late.future.cancel()
    kept = batcher.submit(PendingWrite("w", "c", None))
    gate.set()
    assert await kept is True
    await batcher.wait_idle()
    assert ran == ["a", "c"]


async def test_a_failing_batch_fails_its_writes_only() -> None:
    async def run(batch: list[PendingWrite]) -> None:
        if any(w.payload == "boom" for w in batch):
            raise RuntimeError("boom")
        for w in batch:
            w.settle("ok")

    batcher = Batcher(run)
    with pytest.raises(RuntimeError):
        await batcher.submit(PendingWrite("w", "a", "boom"))
    assert await batcher.submit(PendingWrite("w", "a", "fine")) == "ok"
