"""Stalled flows: per-flow deadlines checked against the journal.

An `Expectation` says "after event A, event B should follow within N seconds,
unless one of events C... ends the flow otherwise"::

    Expectation(OrderPlaced, PaymentCaptured, within=300, unless=[PaymentFailed, InventoryRejected])

`find_stalled` lists the flows of a journal that missed one; `StallWatcher`
checks periodically in the background and reports each stalled flow once
through a callback (the hook); ``sagaflow flows stalled`` runs the check from
the command line. Both styles are covered: what is checked is the journal's
publish entries, whoever published them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

from sagaflow.errors import ConfigurationError
from sagaflow.events import Event
from sagaflow.observability.journal import EntryKind, FlowJournal

__all__ = ["Expectation", "StallWatcher", "StalledFlow", "find_stalled", "parse_duration"]

logger = logging.getLogger("sagaflow.observability")

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, "": 1.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_SPEC = re.compile(
    r"^\s*(?P<after>\S+)\s*->\s*(?P<expect>\S+)\s+within\s+(?P<n>\d+(?:\.\d+)?)(?P<unit>ms|s|m|h|d)?"
    r"(?:\s+unless\s+(?P<unless>\S+))?\s*$"
)


def parse_duration(text: str) -> float:
    """Parse ``"250ms"``, ``"30"``, ``"5m"``, ``"2h"`` or ``"7d"`` into seconds.

    Raises:
        ConfigurationError: Not a duration.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ConfigurationError(f"bad duration {text!r}: write e.g. 30s, 5m, 2h, 7d")
    return float(match[1]) * _UNITS[match[2] or ""]


def _wire(item: type[Event] | str) -> str:
    if isinstance(item, str):
        return item
    name = getattr(item, "event_type", None)
    if not name:
        raise ConfigurationError(f"{item!r} is not a concrete event class")
    return str(name)


@dataclass(frozen=True, slots=True, init=False)
class Expectation:
    """``expect`` should be published within ``within`` seconds of ``after`` in a flow.

    Args:
        after: The event that starts the clock (class or wire name).
        expect: The event that should follow in the same flow.
        within: Seconds allowed.
        unless: Events that end the flow another way (no stall then).
    """

    after: str
    expect: str
    within: float
    unless: tuple[str, ...]

    def __init__(
        self,
        after: type[Event] | str,
        expect: type[Event] | str,
        *,
        within: float,
        unless: Iterable[type[Event] | str] = (),
    ) -> None:
        if within <= 0:
            raise ConfigurationError(f"within must be > 0, got {within}")
        object.__setattr__(self, "after", _wire(after))
        object.__setattr__(self, "expect", _wire(expect))
        object.__setattr__(self, "within", float(within))
        object.__setattr__(self, "unless", tuple(_wire(u) for u in unless))

    @classmethod
    def parse(cls, spec: str) -> Expectation:
        """Parse ``"A -> B within 5m [unless C,D]"`` (units: ms, s, m, h, d; default s).

        Raises:
            ConfigurationError: The text does not have that shape.
        """
        match = _SPEC.match(spec)
        if match is None:
            raise ConfigurationError(
                f"bad expectation {spec!r}: write 'A -> B within 5m [unless C,D]'"
            )
        unless = match["unless"].split(",") if match["unless"] else []
        seconds = float(match["n"]) * _UNITS[match["unit"] or ""]
        return cls(match["after"], match["expect"], within=seconds, unless=unless)

    def __str__(self) -> str:
        unless = f" unless {','.join(self.unless)}" if self.unless else ""
        return f"{self.after} -> {self.expect} within {self.within:g}s{unless}"


@dataclass(frozen=True, slots=True)
class StalledFlow:
    """A flow that missed an expectation.

    Attributes:
        correlation_id: The flow.
        expectation: The expectation it missed.
        since: When ``after`` was published (seconds since the epoch).
        overdue: Seconds past the deadline at the time of the check.
    """

    correlation_id: str
    expectation: Expectation
    since: float
    overdue: float

    def __str__(self) -> str:
        return (
            f"{self.correlation_id}: no {self.expectation.expect} "
            f"{self.expectation.within:g}s after {self.expectation.after} "
            f"({self.overdue:.1f}s overdue)"
        )


async def find_stalled(
    journal: FlowJournal,
    expectations: Sequence[Expectation],
    *,
    now: float | None = None,
    horizon: float = 86_400.0,
    limit: int = 10_000,
) -> list[StalledFlow]:
    """Return the flows of ``journal`` that missed an expectation, oldest first.

    Only flows whose ``after`` event is at most ``horizon`` seconds old are
    examined (the journal may be long).

    Args:
        journal: The journal to check.
        expectations: What to check.
        now: The time of the check (default: the wall clock).
        horizon: How far back to look, in seconds.
        limit: At most this many starting events per expectation.
    """
    now = time.time() if now is None else now
    stalled: list[StalledFlow] = []
    for expectation in expectations:
        starts = await journal.published(
            expectation.after, since=now - horizon, until=now - expectation.within, limit=limit
        )
        seen: set[str] = set()
        for start in starts:
            if start.correlation_id in seen:
                continue
            seen.add(start.correlation_id)
            if not await _met(journal, expectation, start.correlation_id, start.at):
                overdue = now - (start.at + expectation.within)
                stalled.append(StalledFlow(start.correlation_id, expectation, start.at, overdue))
    stalled.sort(key=lambda s: s.since)
    return stalled


async def _met(journal: FlowJournal, expectation: Expectation, flow: str, since: float) -> bool:
    deadline = since + expectation.within
    ends = {expectation.expect, *expectation.unless}
    for entry in await journal.read(flow):
        if entry.kind is not EntryKind.PUBLISH or entry.event_type not in ends:
            continue
        # A flow that ended another way is not stalled, whenever it did.
        if entry.event_type != expectation.expect or entry.at <= deadline:
            return True
    return False


class StallWatcher:
    """Checks expectations periodically and reports each stalled flow once.

    Use as an async context manager next to a service (or in a monitoring
    process)::

        async with StallWatcher(journal, [expectation], on_stalled=alert):
            ...

    Args:
        journal: The journal to watch.
        expectations: What to check.
        on_stalled: Called with each newly stalled flow (the hook); may be
            ``None`` to only log a warning.
        interval: Seconds between checks.
        horizon: See `find_stalled`.
    """

    def __init__(
        self,
        journal: FlowJournal,
        expectations: Sequence[Expectation],
        *,
        on_stalled: Callable[[StalledFlow], object] | None = None,
        interval: float = 30.0,
        horizon: float = 86_400.0,
    ) -> None:
        if interval <= 0:
            raise ConfigurationError("interval must be > 0")
        self.journal = journal
        self.expectations = tuple(expectations)
        self.on_stalled = on_stalled
        self.interval = interval
        self.horizon = horizon
        self._reported: set[tuple[str, Expectation]] = set()
        self._task: asyncio.Task[None] | None = None

    async def check(self) -> list[StalledFlow]:
        """Check now; report and return the flows not reported before."""
        found = await find_stalled(self.journal, self.expectations, horizon=self.horizon)
        new = [s for s in found if (s.correlation_id, s.expectation) not in self._reported]
        for flow in new:
            self._reported.add((flow.correlation_id, flow.expectation))
            logger.warning("stalled flow %s", flow)
            if self.on_stalled is not None:
                try:
                    self.on_stalled(flow)
                except Exception:
                    logger.exception("on_stalled hook failed")
        return new

    async def _run(self) -> None:
        while True:
            try:
                await self.check()
            except Exception as exc:  # a journal outage must not end the watcher
                logger.warning("stall check failed: %s", type(exc).__name__)
            await asyncio.sleep(self.interval)

    async def start(self) -> None:
        """Start checking in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop checking; idempotent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> StallWatcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
