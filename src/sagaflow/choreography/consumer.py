"""The intake loop of one subscription on one topic: concurrency, key ordering, draining.

A `Consumer` pulls deliveries from a transport iterator and hands each one to its
subscription's `Pipeline`:

* with ``concurrency == 1`` it handles each delivery inline, in the intake task
  (no task per event: the fast path);
* with more, each delivery runs in its own task, at most ``concurrency`` at once
  (the limit is shared by the subscription's consumers of every topic);
* with ``ordered_by_key``, deliveries that share a partition key queue in a
  *lane* handled by one task, so they run one at a time, in delivery order.
  In-process retries keep that order; a redelivery (after the retries ran out)
  goes back to the transport and may overtake later events of the same key.

Stopping is two-phase: `stop_intake` takes no new delivery (an idle intake is
cancelled at once, one busy with an event finishes it first); then the bus waits
for the work in flight, cancels what outlives its timeout, and `close` closes the
transport iterators so that unsettled deliveries go back to the transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from sagaflow.choreography.subscription import Pipeline
from sagaflow.clock import Clock
from sagaflow.errors import TransportClosedError
from sagaflow.transports.base import Delivery, Transport

__all__ = ["Consumer", "Limiter"]

logger = logging.getLogger("sagaflow.choreography")

_RESUBSCRIBE_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)


class Limiter:
    """A counting semaphore whose uncontended path is a plain attribute check.

    The intake checks ``free`` itself and only awaits `acquire` when it is zero,
    which saves a coroutine per event over `asyncio.Semaphore`.
    """

    __slots__ = ("free", "waiters")

    def __init__(self, value: int) -> None:
        self.free = value
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        """Take a slot, waiting for one if none is free."""
        while self.free <= 0:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass on a wake-up meant for us
                raise
        self.free -= 1

    def release(self) -> None:
        """Give a slot back and wake one waiter."""
        self.free += 1
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


class Consumer:
    """Consumes one topic for one subscription; see the module docstring."""

    __slots__ = (
        "_idle",
        "_iterators",
        "_lanes",
        "_limiter",
        "_stopping",
        "_task",
        "_workers",
        "clock",
        "inline",
        "ordered",
        "pipeline",
        "topic",
        "transport",
    )

    def __init__(
        self,
        pipeline: Pipeline,
        transport: Transport,
        topic: str,
        *,
        limiter: Limiter,
        clock: Clock,
    ) -> None:
        sub = pipeline.subscription
        self.pipeline = pipeline
        self.transport = transport
        self.topic = topic
        self.clock = clock
        self.inline = sub.concurrency == 1
        self.ordered = sub.ordered_by_key
        self._limiter = limiter
        self._lanes: dict[str, deque[Delivery]] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._iterators: list[AsyncIterator[Delivery]] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._idle = True

    def start(self) -> None:
        """Subscribe and start the intake task."""
        iterator = self.transport.subscribe(self.topic, group=self.pipeline.group)
        self._iterators.append(iterator)
        self._task = asyncio.get_running_loop().create_task(
            self._run(iterator), name=f"sagaflow-consumer:{self.pipeline.group}:{self.topic}"
        )

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The intake task and the workers still running."""
        tasks = [t for t in self._workers if not t.done()]
        if self._task is not None and not self._task.done():
            tasks.append(self._task)
        return tasks

    def stop_intake(self) -> None:
        """Take no new delivery; cancel the intake at once if it is waiting for one."""
        self._stopping = True
        if self._idle and self._task is not None:
            self._task.cancel()

    def cancel(self) -> None:
        """Cancel the intake and every worker (deliveries stay unsettled)."""
        for task in self.tasks:
            task.cancel()

    async def close(self) -> None:
        """Close the transport iterators; their unsettled deliveries are redelivered."""
        for iterator in self._iterators:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception as exc:
                    logger.warning("closing a subscription failed: %s", type(exc).__name__)
        self._iterators.clear()

    async def _run(self, iterator: AsyncIterator[Delivery]) -> None:
        failures = 0
        while not self._stopping:
            try:
                await self._intake(iterator)
                return
            except (StopAsyncIteration, TransportClosedError):
                return
            except Exception as exc:
                # A broken connection must not end consumption: subscribe again,
                # with a growing pause. The old iterator is closed at shutdown,
                # after the work it handed out has finished.
                delay = _RESUBSCRIBE_DELAYS[min(failures, len(_RESUBSCRIBE_DELAYS) - 1)]
                failures += 1
                logger.warning(
                    "consumer of group %r on %r failed (%s); resubscribing in %.1f s",
                    self.pipeline.group,
                    self.topic,
                    type(exc).__name__,
                    delay,
                )
                self._idle = True
                await self.clock.sleep(delay)
                if self._stopping:
                    return
                iterator = self.transport.subscribe(self.topic, group=self.pipeline.group)
                self._iterators.append(iterator)

    async def _intake(self, iterator: AsyncIterator[Delivery]) -> None:
        limiter = self._limiter
        process = self.pipeline.process  # never raises but for cancellation
        next_delivery = iterator.__anext__
        while not self._stopping:
            self._idle = True
            delivery = await next_delivery()
            if limiter.free > 0:
                limiter.free -= 1
            else:
                await limiter.acquire()
            self._idle = False
            if self.inline:
                try:
                    await process(delivery)
                finally:
                    limiter.release()
            else:
                self._dispatch(delivery)

    def _dispatch(self, delivery: Delivery) -> None:
        key = delivery.message.key
        if self.ordered and key is not None:
            lane = self._lanes.get(key)
            if lane is not None:
                lane.append(delivery)
                return
            self._lanes[key] = deque((delivery,))
            self._spawn(self._drain_lane(key))
        else:
            self._spawn(self._one(delivery))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._workers.add(task)
        task.add_done_callback(self._workers.discard)

    async def _one(self, delivery: Delivery) -> None:
        try:
            await self.pipeline.process(delivery)
        finally:
            self._limiter.release()

    async def _drain_lane(self, key: str) -> None:
        lane = self._lanes[key]
        try:
            while lane:
                try:
                    await self.pipeline.process(lane[0])
                finally:
                    lane.popleft()
                    self._limiter.release()
        finally:
            if not lane and self._lanes.get(key) is lane:
                del self._lanes[key]
