"""`FakeClock`: virtual time for tests of timeouts, deadlines, backoff and leases.

Pass one to an `Orchestrator`, a store or the bus instead of the system clock.
Time stands still until you `advance` it, or, with ``auto_advance=True``, jumps
straight to the next timer whenever the event loop has nothing else to do, so a
test of a one-hour timeout finishes at once and always the same way.

Example:
    >>> import asyncio
    >>> async def demo():
    ...     clock = FakeClock(auto_advance=True)
    ...     await clock.sleep(3600)
    ...     return clock.monotonic()
    >>> asyncio.run(demo())
    3600.0
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

__all__ = ["FakeClock"]


class FakeClock:
    """A controllable `sagaflow.clock.Clock`.

    Args:
        start: Wall-clock value of `now` at virtual time zero (seconds since the epoch).
        auto_advance: Jump to the next timer whenever the loop is idle.
        idle_yields: How many loop iterations count as idle before an automatic jump;
            raise it if your code needs more turns of the loop between awaits.
    """

    def __init__(
        self, *, start: float = 1_700_000_000.0, auto_advance: bool = False, idle_yields: int = 20
    ) -> None:
        self._start = start
        self._offset = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._auto = auto_advance
        self._idle_yields = idle_yields
        self._driver: asyncio.Task[None] | None = None

    def now(self) -> float:
        """Virtual wall-clock time."""
        return self._start + self._offset

    def monotonic(self) -> float:
        """Virtual seconds since the clock was made."""
        return self._offset

    async def sleep(self, seconds: float) -> None:
        """Wait until virtual time has moved ``seconds`` forward."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        await self._wait_until(self._offset + seconds)

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        """Cancel the body once virtual time passes ``seconds``; raise `TimeoutError`."""
        return self._timeout(seconds)

    @asynccontextmanager
    async def _timeout(self, seconds: float | None) -> AsyncIterator[object]:
        if seconds is None:
            yield None
            return
        # Reuse asyncio's own timeout for its careful cancel/uncancel semantics; only
        # the moment it fires comes from virtual time.
        async with asyncio.timeout(None) as scope:
            loop = asyncio.get_running_loop()
            waiter = self._timer(self._offset + seconds)
            waiter.add_done_callback(
                lambda fut: None if fut.cancelled() else scope.reschedule(loop.time())
            )
            try:
                yield scope
            finally:
                if not waiter.done():
                    waiter.cancel()

    async def advance(self, seconds: float) -> None:
        """Move virtual time forward by ``seconds``, waking timers due on the way in order."""
        if seconds < 0:
            raise ValueError("cannot move time backwards")
        target = self._offset + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, future = heapq.heappop(self._timers)
            self._offset = max(self._offset, when)
            if not future.done():
                future.set_result(None)
            for _ in range(self._idle_yields):
                await asyncio.sleep(0)
        self._offset = target
        await asyncio.sleep(0)

    @property
    def pending_timers(self) -> int:
        """How many sleeps and timeouts are waiting on virtual time."""
        return sum(1 for _, _, future in self._timers if not future.done())

    def _timer(self, when: float) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (when, next(self._seq), future))
        if self._auto and (self._driver is None or self._driver.done()):
            self._driver = asyncio.get_running_loop().create_task(self._drive())
        return future

    async def _wait_until(self, when: float) -> None:
        future = self._timer(when)
        try:
            await future
        finally:
            if not future.done():
                future.cancel()

    async def _drive(self) -> None:
        """Jump to the next timer whenever the loop has gone idle (auto-advance mode)."""
        while True:
            for _ in range(self._idle_yields):
                await asyncio.sleep(0)
            while self._timers and self._timers[0][2].done():
                heapq.heappop(self._timers)
            if not self._timers:
                return
            await self.advance(max(self._timers[0][0] - self._offset, 0.0))
