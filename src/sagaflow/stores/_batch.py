"""Group commit for asyncio stores: many tasks' writes, one statement.

Tasks submit writes and await their own future. One drainer task at a time
takes everything pending (at most one write per saga, so that a batch never
holds two competing writes to one saga) and hands the batch to the store, which
executes it as one statement and settles every future. Under load this turns N
round trips and N commits into one; with a single caller a batch is one write
and costs one extra task switch.

The drainer runs in its own task, so a caller that is cancelled never
interrupts the batch carrying other tasks' writes; its own write may still
happen, as with any cancelled database call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Batcher", "PendingWrite"]


@dataclass(slots=True)
class PendingWrite:
    """One write waiting for a batch.

    Attributes:
        kind: What the store should do (the store's own vocabulary).
        saga_id: The saga written; a batch holds at most one write per saga.
        payload: What the store needs to run the write.
        future: Settled by the store with the write's result or error.
    """

    kind: str
    saga_id: str
    payload: Any
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        """Deliver the outcome unless the caller has given up (cancelled)."""
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)


class Batcher:
    """Collects `PendingWrite` objects and runs them in batches, one batch at a time.

    Args:
        run_batch: Executes a batch and settles every write in it; must not raise.
        max_batch: Most writes in one batch.
    """

    def __init__(
        self, run_batch: Callable[[list[PendingWrite]], Awaitable[None]], *, max_batch: int = 256
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._pending: deque[PendingWrite] = deque()
        self._drainer: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        """Whether no batch is running and nothing waits for one."""
        return self._drainer is None and not self._pending

    def submit(self, write: PendingWrite) -> asyncio.Future[Any]:
        """Queue ``write`` for the next batch and return its future."""
        self._pending.append(write)
        if self._drainer is None:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return write.future

    async def wait_idle(self) -> None:
        """Return once every submitted write has been run."""
        while self._drainer is not None:
            # Not shield(): a drainer that was cancelled must not look like this
            # caller's cancellation; the drainer it leaves behind is waited for next.
            await asyncio.wait((self._drainer,))

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._take()
                if not batch:
                    continue  # every write left was cancelled before it was sent
                try:
                    await self._run_batch(batch)
                except BaseException as exc:  # run_batch should not raise; never strand callers
                    for write in batch:
                        write.settle(error=exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            self._drainer = None
            if self._pending:  # only if the loop was interrupted
                self._drainer = asyncio.get_running_loop().create_task(self._drain())

    def _take(self) -> list[PendingWrite]:
        batch: list[PendingWrite] = []
        seen: set[str] = set()
        deferred: list[PendingWrite] = []
        while self._pending and len(batch) < self._max_batch:
            write = self._pending.popleft()
            if write.future.done():
                continue  # cancelled before it was sent: drop it
            if write.saga_id in seen:
                deferred.append(write)  # a competing write to the same saga: next batch
            else:
                seen.add(write.saga_id)
                batch.append(write)
        self._pending.extendleft(reversed(deferred))
        return batch
