"""The group-commit batcher: one write per saga per batch, cancellation, errors."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

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


# -- the guarantees of the module docstring, driven with a fake store ------------------


def write(saga_id: str, payload: Any = None) -> PendingWrite:
    return PendingWrite("append", saga_id, saga_id if payload is None else payload)


class FakeStore:
    """A `run_batch` that records batches, can hold them at a gate, and can fail them.

    Each batch waits for `release` (set by default), then calls `body` (by
    default: settle every write with its payload).
    """

    def __init__(self, body: Callable[[list[PendingWrite]], None] | None = None) -> None:
        self.release = asyncio.Event()
        self.release.set()
        self.entered = asyncio.Event()  # set when a batch is handed over
        self.batches: list[list[str]] = []  # saga ids of each batch, as handed over
        self.payloads: list[list[Any]] = []  # payloads of each batch
        self.completed: list[list[str]] = []  # batches that ran to the end
        self.tasks: list[asyncio.Task[Any] | None] = []  # the task that ran each batch
        self.body = body or self.settle_all

    @staticmethod
    def settle_all(batch: list[PendingWrite]) -> None:
        for w in batch:
            w.settle(w.payload)

    def hold(self) -> None:
        self.release.clear()
        self.entered.clear()

    async def __call__(self, batch: list[PendingWrite]) -> None:
        self.batches.append([w.saga_id for w in batch])
        self.payloads.append([w.payload for w in batch])
        self.tasks.append(asyncio.current_task())
        self.entered.set()
        await self.release.wait()
        self.body(batch)
        self.completed.append([w.saga_id for w in batch])


async def test_a_batch_that_raises_settles_every_write_and_the_next_batch_still_runs() -> None:
    error = RuntimeError("connection lost")

    def body(batch: list[PendingWrite]) -> None:
        if len(store.batches) == 1:
            batch[0].settle("written before the error")
            raise error
        FakeStore.settle_all(batch)

    store = FakeStore(body)
    store.hold()
    batcher = Batcher(store)
    failing = [batcher.submit(write(s)) for s in "abc"]
    await store.entered.wait()
    queued = [batcher.submit(write(s)) for s in "ad"]  # wait behind the failing batch
    store.release.set()
    results = await asyncio.gather(*failing, return_exceptions=True)
    assert results == ["written before the error", error, error]
    assert await asyncio.gather(*queued) == ["a", "d"]
    assert store.batches == [["a", "b", "c"], ["a", "d"]]
    await batcher.wait_idle()
    assert batcher.idle
    # The drainer is gone; a later write starts a new one and goes through.
    assert await batcher.submit(write("e")) == "e"
    assert store.batches[-1] == ["e"]


async def test_at_most_one_write_per_saga_per_batch_in_submission_order() -> None:
    store = FakeStore()
    store.hold()
    batcher = Batcher(store, max_batch=4)
    writes = [write(f"saga-{i % 3}", i) for i in range(20)]
    early, late = writes[:5], writes[5:]
    futures = [batcher.submit(w) for w in early]
    await store.entered.wait()
    futures += [batcher.submit(w) for w in late]  # queue up while a batch is in flight
    store.release.set()
    assert await asyncio.gather(*futures) == list(range(20))
    for batch in store.batches:
        assert len(batch) <= 4
        assert len(set(batch)) == len(batch), batch
    assert sum(map(len, store.batches)) == 20
    # Each saga's writes ran in the order they were submitted.
    ran = [payload for batch in store.payloads for payload in batch]
    for saga in range(3):
        assert [p for p in ran if p % 3 == saga] == list(range(saga, 20, 3))
    await batcher.wait_idle()


async def test_caller_cancelled_while_its_write_is_in_flight_does_not_interrupt_the_batch() -> None:
    store = FakeStore()
    store.hold()
    batcher = Batcher(store)

    async def caller(saga_id: str) -> Any:
        return await batcher.submit(write(saga_id))

    a = asyncio.create_task(caller("a"))
    b = asyncio.create_task(caller("b"))
    await store.entered.wait()
    assert store.batches == [["a", "b"]]
    assert store.tasks[0] not in (a, b)  # the batch runs in the drainer's own task
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    store.release.set()
    assert await b == "b"
    assert store.completed == [["a", "b"]]  # the batch ran to its end, a's write too
    await batcher.wait_idle()
    assert batcher.idle


async def test_writes_all_cancelled_before_their_batch_make_no_batch() -> None:
    store = FakeStore()
    store.hold()
    batcher = Batcher(store)
    first = batcher.submit(write("a"))
    await store.entered.wait()
    dropped = [write("b"), write("c")]
    for w in dropped:
        batcher.submit(w).cancel()
    store.release.set()
    assert await first == "a"
    await batcher.wait_idle()
    assert store.batches == [["a"]]  # no empty batch for the store to run
    assert batcher.idle


async def test_wait_idle_returns_once_queued_writes_have_run() -> None:
    store = FakeStore()
    store.hold()
    batcher = Batcher(store)
    futures = [batcher.submit(write(s)) for s in "aab"]
    await store.entered.wait()
    waiter = asyncio.create_task(batcher.wait_idle())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiter.done()
    store.release.set()
    await waiter
    assert all(f.done() for f in futures)
    assert store.batches == [["a", "b"], ["a"]]
    assert batcher.idle


async def test_drainer_cancelled_mid_batch_settles_its_writes_and_a_new_drainer_runs_the_rest() -> (
    None
):
    store = FakeStore()
    store.hold()
    batcher = Batcher(store)
    in_flight = [batcher.submit(write(s)) for s in "ab"]
    await store.entered.wait()
    queued = batcher.submit(write("a", "later"))
    waiter = asyncio.create_task(batcher.wait_idle())
    await asyncio.sleep(0)
    drainer = store.tasks[0]
    assert drainer is not None
    drainer.cancel()  # e.g. the task running the batch is torn down
    for future in in_flight:
        with pytest.raises(asyncio.CancelledError):
            await future
    store.release.set()
    assert await queued == "later"
    await waiter  # returns normally: wait_idle's caller was not cancelled
    assert store.batches == [["a", "b"], ["a"]]
    assert batcher.idle


@pytest.mark.parametrize("seed", range(8))
async def test_random_cancellations_and_failures_leave_no_write_pending(seed: int) -> None:
    rng = random.Random(seed)
    batches: list[list[str]] = []

    async def run_batch(batch: list[PendingWrite]) -> None:
        batches.append([w.saga_id for w in batch])
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)
        if rng.random() < 0.2:
            raise RuntimeError("batch failed")
        for w in batch:
            w.settle(w.payload)

    batcher = Batcher(run_batch, max_batch=5)
    writes: list[PendingWrite] = []

    async def caller(n: int) -> None:
        for i in range(5):
            w = write(f"saga-{rng.randrange(4)}", (n, i))
            writes.append(w)
            try:
                result = await batcher.submit(w)
            except RuntimeError:
                continue
            assert result == (n, i)

    tasks = [asyncio.create_task(caller(n)) for n in range(20)]
    for _ in range(8):
        for _ in range(rng.randrange(4)):
            await asyncio.sleep(0)
        rng.choice(tasks).cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(o is None or isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
    await batcher.wait_idle()
    assert batcher.idle
    assert all(w.future.done() for w in writes)
    for batch in batches:
        assert 0 < len(batch) <= 5
        assert len(set(batch)) == len(batch), batch
