"""The flow journal: what happened to every flow, keyed by correlation id.

A `FlowJournal` keeps `JournalEntry` rows: one per publish, per handling of a
delivery by a consumer group (with its attempts and outcome), per dead letter,
and per saga lifecycle event (saga started/finished, step and compensation
attempts). For a saga the correlation id is the saga id, so the commands a
remote step sends and the saga's own steps land in the same flow.

Entries hold no payloads: types, ids, groups, services, timings, and errors as
type + message. They are written by `sagaflow.observability.Journaling` (a bus
middleware plus saga hooks) through a `JournalWriter`, which buffers them and
writes in batches off the hot path.

Implementations: `MemoryJournal` (here), `SqliteJournal`
(`sagaflow.observability.sqlite`) and `PostgresJournal`
(`sagaflow.observability.postgres`, extra ``postgres``). `open_journal` picks
one from a URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable
from urllib.parse import unquote

from sagaflow.errors import ConfigurationError

__all__ = [
    "EntryKind",
    "FlowJournal",
    "FlowSummary",
    "JournalEntry",
    "JournalWriter",
    "MemoryJournal",
    "open_journal",
]

logger = logging.getLogger("sagaflow.observability")

MAX_ERROR_MESSAGE = 500
"""Error messages are cut to this many characters (they may quote data)."""


class EntryKind(enum.StrEnum):
    """What one journal entry records."""

    PUBLISH = "publish"
    """An event was accepted by the transport."""
    HANDLE = "handle"
    """A consumer group finished one delivery; ``outcome`` is ``acked``,
    ``duplicate`` (acked, already handled) or ``failed`` (nacked for redelivery,
    or dead-lettered: a `DEAD_LETTER` entry follows)."""
    DEAD_LETTER = "dead_letter"
    """A group gave up on an event; ``detail`` holds the reason."""
    SAGA_STARTED = "saga_started"
    """A saga instance started or was resumed; ``detail`` is the saga name."""
    SAGA_FINISHED = "saga_finished"
    """A saga ended; ``outcome`` is its status (completed, compensated, failed)."""
    STEP_STARTED = "step_started"
    """An attempt of a step's action began."""
    STEP_SUCCEEDED = "step_succeeded"
    """A step's action completed."""
    STEP_FAILED = "step_failed"
    """An attempt failed; ``outcome`` is ``retry`` or ``final``."""
    COMPENSATION_STARTED = "compensation_started"
    """An attempt of a compensation began."""
    STEP_COMPENSATED = "step_compensated"
    """A compensation completed."""
    COMPENSATION_FAILED = "compensation_failed"
    """An attempt of a compensation failed; ``outcome`` is ``retry`` or ``final``."""


class JournalEntry(NamedTuple):
    """One thing that happened in a flow. Immutable; no payload.

    A named tuple (cheap to build on the hot path); build it with keywords.

    Attributes:
        correlation_id: The flow (the saga id for sagas).
        kind: What happened.
        at: When, in seconds since the epoch (for `HANDLE` and steps: when it began).
        service: Who recorded it (the bus's source or the orchestrator's name).
        event_id: The event concerned (publish, handle, dead letter).
        event_type: Its wire name.
        causation_id: The event whose handling published this one.
        group: The handling consumer group (handle, dead letter), or the group
            whose handler published the event (publish).
        step: The saga step (step entries), or the step that published the
            event (a remote step's command).
        attempt: Delivery count (handle) or attempt number (step entries).
        attempts: Handler calls during the delivery (handle).
        duration: Seconds the handling or the step attempt took.
        outcome: See `EntryKind`.
        error_type: The error's class name, when something failed.
        error_message: The error's message, cut to `MAX_ERROR_MESSAGE` characters.
        detail: Saga name, dead-letter reason.
    """

    correlation_id: str
    kind: EntryKind
    at: float
    service: str = ""
    event_id: str | None = None
    event_type: str | None = None
    causation_id: str | None = None
    group: str | None = None
    step: str | None = None
    attempt: int = 0
    attempts: int = 0
    duration: float | None = None
    outcome: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    detail: str | None = None

    @property
    def failed(self) -> bool:
        """Whether this entry records a failure.

        Failed handlings, steps and compensations, dead letters, and sagas
        parked as FAILED count; a compensated saga's end only repeats the
        error of the step that failed, so it does not.
        """
        if self.kind is EntryKind.SAGA_FINISHED:
            return self.outcome == "failed"
        return self.error_type is not None or self.kind is EntryKind.DEAD_LETTER

    def to_row(self) -> tuple[Any, ...]:
        """Return the fields as a tuple in `COLUMNS` order (for SQL stores)."""
        return tuple(self.kind.value if name == "kind" else getattr(self, name) for name in COLUMNS)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> JournalEntry:
        """Rebuild an entry from a `to_row` tuple."""
        values = dict(zip(COLUMNS, row, strict=True))
        values["kind"] = EntryKind(values["kind"])
        return cls(**values)


COLUMNS: tuple[str, ...] = JournalEntry._fields
"""Column names of the SQL journals, in `JournalEntry.to_row` order."""

FAILED_SQL = (
    "CASE WHEN kind = 'saga_finished' THEN (CASE WHEN outcome = 'failed' THEN 1 ELSE 0 END) "
    "WHEN error_type IS NOT NULL OR kind = 'dead_letter' THEN 1 ELSE 0 END"
)
"""SQL expression that is 1 for a row `JournalEntry.failed` counts, else 0."""


def error_fields(error: BaseException) -> dict[str, str]:
    """Return ``error_type`` and ``error_message`` keyword arguments for an entry."""
    return {
        "error_type": type(error).__name__,
        "error_message": str(error)[:MAX_ERROR_MESSAGE],
    }


class FlowSummary(NamedTuple):
    """One flow in a listing (see `FlowJournal.flows`).

    Attributes:
        correlation_id: The flow.
        first: Time of its first entry.
        last: Time of its last entry.
        entries: How many entries it has.
        failures: How many of them record a failure (`JournalEntry.failed`:
            failed handlings, steps, compensations, dead letters, a parked saga).
    """

    correlation_id: str
    first: float
    last: float
    entries: int
    failures: int


@runtime_checkable
class FlowJournal(Protocol):
    """Where journal entries are kept. Task-safe; several processes may share one.

    Entries are returned in the order of their ``at`` time (ties in write order).
    """

    async def write(self, entries: Sequence[JournalEntry]) -> None:
        """Append ``entries`` (one batch; all or nothing where the backend can)."""
        ...

    async def read(self, correlation_id: str) -> Sequence[JournalEntry]:
        """Return every entry of one flow, oldest first (empty if unknown)."""
        ...

    async def published(
        self, event_type: str, *, since: float, until: float, limit: int = 10_000
    ) -> Sequence[JournalEntry]:
        """Return publish entries of ``event_type`` with ``since <= at < until``, oldest first."""
        ...

    async def flows(
        self, *, since: float, failed_only: bool = False, limit: int = 100
    ) -> Sequence[FlowSummary]:
        """Return flows with entries at or after ``since``, most recent first.

        Args:
            since: Seconds since the epoch.
            failed_only: Only flows with at least one failure.
            limit: At most this many.
        """
        ...

    async def prune(self, *, before: float) -> int:
        """Delete entries older than ``before`` (seconds since the epoch); return how many.

        The journal is diagnostics, not a system of record: keep what you need
        to debug (days, not years) and prune the rest periodically
        (``sagaflow flows prune``).
        """
        ...

    async def close(self) -> None:
        """Release connections; idempotent."""
        ...


class MemoryJournal:
    """A journal in a dictionary; for tests and single-process demos."""

    def __init__(self) -> None:
        self._flows: dict[str, list[JournalEntry]] = defaultdict(list)

    async def write(self, entries: Sequence[JournalEntry]) -> None:
        """Append ``entries``."""
        for entry in entries:
            self._flows[entry.correlation_id].append(entry)

    async def read(self, correlation_id: str) -> Sequence[JournalEntry]:
        """Return one flow's entries, oldest first."""
        return sorted(self._flows.get(correlation_id, ()), key=lambda e: e.at)

    async def published(
        self, event_type: str, *, since: float, until: float, limit: int = 10_000
    ) -> Sequence[JournalEntry]:
        """Return publish entries of ``event_type`` in ``[since, until)``, oldest first."""
        found = [
            entry
            for flow in self._flows.values()
            for entry in flow
            if entry.kind is EntryKind.PUBLISH
            and entry.event_type == event_type
            and since <= entry.at < until
        ]
        return sorted(found, key=lambda e: e.at)[:limit]

    async def flows(
        self, *, since: float, failed_only: bool = False, limit: int = 100
    ) -> Sequence[FlowSummary]:
        """Return flows active since ``since``, most recent first."""
        found = []
        for cid, entries in self._flows.items():
            recent = [e for e in entries if e.at >= since]
            if not recent:
                continue
            failures = sum(1 for e in recent if e.failed)
            if failed_only and not failures:
                continue
            times = [e.at for e in recent]
            found.append(FlowSummary(cid, min(times), max(times), len(recent), failures))
        found.sort(key=lambda f: f.last, reverse=True)
        return found[:limit]

    async def prune(self, *, before: float) -> int:
        """Delete entries older than ``before``; return how many."""
        removed = 0
        for cid in list(self._flows):
            kept = [e for e in self._flows[cid] if e.at >= before]
            removed += len(self._flows[cid]) - len(kept)
            if kept:
                self._flows[cid] = kept
            else:
                del self._flows[cid]
        return removed

    async def close(self) -> None:
        """Nothing to release."""

    def entries(self) -> list[JournalEntry]:
        """Every entry of every flow (for tests)."""
        return [entry for flow in self._flows.values() for entry in flow]


class JournalWriter:
    """Buffers entries and writes them to a journal in batches, in the background.

    `add` is a plain list append, safe to call on the hot path. A background task
    writes a batch when ``batch_size`` entries are waiting or every ``interval``
    seconds. A journal that fails never breaks a flow: the batch is dropped,
    counted in ``dropped`` and logged (once per failure streak). When more than
    ``max_buffer`` entries wait (a slow journal), new entries are dropped too.

    Args:
        journal: Where to write.
        batch_size: Entries per write, at most.
        interval: Seconds between background writes.
        max_buffer: Entries kept waiting, at most.
    """

    def __init__(
        self,
        journal: FlowJournal,
        *,
        batch_size: int = 500,
        interval: float = 0.2,
        max_buffer: int = 100_000,
    ) -> None:
        if batch_size < 1 or interval <= 0 or max_buffer < batch_size:
            raise ConfigurationError("need batch_size >= 1, interval > 0, max_buffer >= batch_size")
        self.journal = journal
        self.batch_size = batch_size
        self.interval = interval
        self.max_buffer = max_buffer
        self.dropped = 0
        self.written = 0
        self._buffer: list[JournalEntry] = []
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._failing = False
        self._closed = False

    def add(self, entry: JournalEntry) -> None:
        """Queue one entry; never raises, never waits."""
        buffer = self._buffer
        if len(buffer) >= self.max_buffer or self._closed:
            self.dropped += 1
            return
        buffer.append(entry)
        if self._task is None:
            self._start()
        elif len(buffer) >= self.batch_size and self._wake is not None:
            self._wake.set()

    def _start(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a sync caller): the next flush writes it
            return
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="sagaflow-journal-writer")

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        # Ends when close() sets _closed (no task cancellation: a cancel landing
        # while wait_for completes can be swallowed, and a batch half-written
        # would be lost).
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.interval)
            wake.clear()
            await self._write_all()

    async def _write_all(self) -> None:
        while self._buffer:
            batch = self._buffer[: self.batch_size]
            del self._buffer[: self.batch_size]
            await self._write(batch)

    async def _write(self, batch: list[JournalEntry]) -> None:
        try:
            await self.journal.write(batch)
        except Exception as exc:
            # Observability must not hurt the flows it watches: drop and say so once.
            self.dropped += len(batch)
            if not self._failing:
                logger.warning(
                    "flow journal write failed (%s); dropping entries until it recovers",
                    type(exc).__name__,
                )
            self._failing = True
            return
        if self._failing:
            logger.warning("flow journal writes recovered; %d entries were dropped", self.dropped)
        self._failing = False
        self.written += len(batch)

    async def flush(self) -> None:
        """Write every waiting entry now."""
        await self._write_all()

    async def close(self) -> None:
        """Write what is waiting, stop the background task; idempotent.

        Entries added after this are dropped. Does not close the journal (its
        owner does).
        """
        self._closed = True
        task, self._task = self._task, None
        if task is not None and self._wake is not None:
            self._wake.set()
            with contextlib.suppress(Exception):
                await task
        await self._write_all()


def open_journal(url: str) -> FlowJournal:
    """Open a journal from a URL.

    * ``memory://`` — a new `MemoryJournal`;
    * ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite://:memory:``
      — `SqliteJournal` (the path is everything after ``sqlite:///``, as for stores);
    * ``postgresql://user@host/db`` — `PostgresJournal` (extra ``postgres``).

    Raises:
        ConfigurationError: Unknown scheme or malformed URL.
        MissingDependencyError: The backend's client library is not installed.
    """
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise ConfigurationError(f"journal URL needs a scheme: {url!r}")
    if scheme == "memory":
        return MemoryJournal()
    if scheme == "sqlite":
        from sagaflow.observability.sqlite import SqliteJournal

        # Same convention as the stores: the path is everything after "sqlite:///".
        if rest == ":memory:":
            return SqliteJournal(":memory:")
        if not (rest.startswith("/") and len(rest) > 1):
            raise ConfigurationError(f"sqlite journal URL needs a path: {url!r}")
        return SqliteJournal(unquote(rest[1:].split("?", 1)[0]))
    if scheme in ("postgresql", "postgres"):
        from sagaflow.observability.postgres import PostgresJournal

        return PostgresJournal(url)
    raise ConfigurationError(
        f"unsupported journal URL scheme {scheme!r}: use memory://, sqlite:///PATH or postgresql://"
    )
