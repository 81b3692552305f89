"""Time as sagaflow sees it, behind one small protocol so tests can replace it.

Everything in sagaflow that waits or measures time (retry backoff, step timeouts,
saga deadlines, leases, redelivery delays) asks a `Clock`. `SystemClock` is the
real one; `sagaflow.testing.FakeClock` makes long waits finish instantly and
deterministically.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Source of time, sleeps and timeouts.

    Implementations must be safe to share between tasks of one event loop.
    """

    def now(self) -> float:
        """Return wall-clock time as seconds since the epoch (for records)."""
        ...

    def monotonic(self) -> float:
        """Return a monotonic reading in seconds (for durations and deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        """Return a context manager that cancels its body after ``seconds``.

        On expiry the body is cancelled and `TimeoutError` is raised from the
        ``async with``; ``None`` means no limit.
        """
        ...


class SystemClock:
    """The real clock: `time.time`, the event loop's clock and `asyncio.timeout`."""

    __slots__ = ()

    def now(self) -> float:
        """Return `time.time()`."""
        return time.time()

    def monotonic(self) -> float:
        """Return `time.monotonic()`."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep with `asyncio.sleep`."""
        await asyncio.sleep(seconds)

    def timeout(self, seconds: float | None) -> AbstractAsyncContextManager[object]:
        """Return `asyncio.timeout(seconds)`."""
        return asyncio.timeout(seconds)
