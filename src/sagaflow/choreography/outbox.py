"""The transactional outbox: record events in your own transaction, relay them later.

"Change my data and publish an event" cannot be atomic across a database and a
broker. The outbox makes it atomic inside the database: the event is written to
an outbox table through *your* connection, in *your* transaction, next to your
own writes. Commit keeps both; rollback drops both. A relay then reads the
table, publishes each recorded message to a `Transport` and marks it sent.

* `SQLiteOutbox` (``sagaflow.choreography.outbox_sqlite``) and `PostgresOutbox`
  (``sagaflow.choreography.outbox_postgres``) record messages on a
  ``sqlite3`` connection or a psycopg async connection.
* `OutboxRelay` publishes them: at-least-once, **in order per partition key**,
  surviving crashes of the relay.

Guarantees of the relay:

* **At-least-once.** A row is marked sent only after the transport confirmed it.
  A relay that dies between the two leaves the row leased; once the lease
  lapses another relay (or the restarted one) publishes it again. The message
  id is the event id, so the consumer's inbox (and brokers that deduplicate on
  the id, such as NATS JetStream) drops the copy.
* **Ordered per key.** A row is claimed only when every earlier unsent row of
  its partition key is claimable too, and one ``publish`` call never carries two
  messages of one key: the claimed batch is published in *waves* (the first
  message of every key, then the second, ...), each wave after the previous one
  was confirmed. A later message of a key is therefore never published before
  an earlier one is confirmed. Messages without a key have no order.
* **Poison messages are parked**, with the reason, when the transport refuses
  them for good (too large, bad topic, not serializable) or after
  ``max_attempts`` failed publishes; a parked row no longer holds back its key,
  and never holds back other keys. `Outbox.parked` lists them and
  `Outbox.requeue` sends one again.
* **Retention.** Sent rows are deleted after ``retention`` seconds (at once
  when ``0``) by the relay's periodic cleanup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, runtime_checkable

from sagaflow.clock import Clock, SystemClock
from sagaflow.errors import (
    ConfigurationError,
    MessageTooLargeError,
    NonRetryableError,
    SerializationError,
    TransportClosedError,
    TransportUnavailableError,
)
from sagaflow.retry import RetryPolicy
from sagaflow.transports.base import Message, Transport

__all__ = [
    "DEFAULT_RELAY_RETRY",
    "Outbox",
    "OutboxMessage",
    "OutboxRelay",
    "ParkedMessage",
    "RelayStats",
]

logger = logging.getLogger("sagaflow.outbox")

DEFAULT_RELAY_RETRY = RetryPolicy(max_attempts=20, initial_delay=0.5, max_delay=60.0)
"""Backoff between failed publishes of one row; ``max_attempts`` failures park it."""

# Backoff of the relay loop itself after a failed round (database or broker away).
_ROUND_BACKOFF = RetryPolicy(max_attempts=None, initial_delay=0.1, max_delay=10.0)

# Errors that publishing the same message again cannot cure: park at once.
_PERMANENT: tuple[type[BaseException], ...] = (
    MessageTooLargeError,
    SerializationError,
    ConfigurationError,
    NonRetryableError,
)
_MAX_REASON = 1000


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A recorded message claimed by a relay.

    Attributes:
        seq: Position in the outbox; rows of one key are published in ``seq`` order.
        message: The transport message (id = event id, key = partition key).
        attempts: Failed publishes so far.
    """

    seq: int
    message: Message
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class ParkedMessage:
    """A recorded message the relay gave up on.

    Attributes:
        seq: Position in the outbox.
        message: The transport message.
        reason: Why it was parked (the last error).
        attempts: Failed publishes.
        parked_at: When it was parked (seconds since the epoch).
    """

    seq: int
    message: Message
    reason: str
    attempts: int
    parked_at: float


@runtime_checkable
class Outbox(Protocol):
    """What `OutboxRelay` needs from an outbox table (SQLite, PostgreSQL).

    Writers use the implementation's own ``add`` methods on their connection;
    this protocol is the relay's side. Times are seconds since the epoch from
    the relay's clock.
    """

    async def claim(
        self, *, owner: str, limit: int, lease: float, now: float
    ) -> list[OutboxMessage]:
        """Lease up to ``limit`` publishable rows, oldest first.

        A row is publishable when it is unsent, not parked, not leased (or its
        lease lapsed), not waiting for a retry, and every earlier unsent row of
        its key is publishable too.
        """
        ...

    async def mark_sent(self, seqs: Sequence[int], *, now: float, delete: bool) -> None:
        """Record that the rows ``seqs`` were published (delete them if ``delete``)."""
        ...

    async def retry_later(self, owner: str, seqs: Sequence[int], *, at: float, reason: str) -> None:
        """Count a failed publish of the rows and make them claimable again at ``at``."""
        ...

    async def park(self, seqs: Sequence[int], *, reason: str, now: float) -> None:
        """Give up on the rows ``seqs``, keeping them with ``reason``."""
        ...

    async def release(self, owner: str, seqs: Sequence[int]) -> None:
        """Drop ``owner``'s lease on rows it claimed but did not publish."""
        ...

    async def cleanup(self, *, sent_before: float) -> int:
        """Delete rows sent before ``sent_before``; return how many."""
        ...

    async def wait_for_work(self, timeout: float) -> None:  # noqa: ASYNC109 - a poll interval
        """Return when new rows may be there (a hint), or after ``timeout`` seconds."""
        ...

    async def parked(self, *, limit: int = 100) -> list[ParkedMessage]:
        """Return parked rows, oldest first."""
        ...

    async def requeue(self, seq: int) -> bool:
        """Make a parked row publishable again; return whether it was parked."""
        ...

    async def pending(self) -> int:
        """Return how many rows are neither sent nor parked."""
        ...

    async def close(self) -> None:
        """Release the relay-side connection; idempotent."""
        ...


# -- the relay ---------------------------------------------------------------------------


@dataclass(slots=True)
class RelayStats:
    """Counters kept by an `OutboxRelay` (read them; do not write them).

    Attributes:
        published: Rows published and marked sent.
        batches: Claims that returned at least one row.
        failed_publishes: Rows whose publish failed and will be retried.
        parked: Rows parked for good.
        released: Rows given back unpublished (held back by an earlier failure of their key).
        cleaned: Sent rows deleted by the retention cleanup.
        errors: Relay rounds that failed (database or transport trouble).
    """

    published: int = 0
    batches: int = 0
    failed_publishes: int = 0
    parked: int = 0
    released: int = 0
    cleaned: int = 0
    errors: int = 0


@dataclass(slots=True)
class _Outcome:
    """What happened to the rows of one claimed batch."""

    sent: list[int] = field(default_factory=list)
    failed: list[tuple[OutboxMessage, BaseException]] = field(default_factory=list)
    held: list[int] = field(default_factory=list)


def _waves(rows: Sequence[OutboxMessage]) -> list[list[OutboxMessage]]:
    """Split ``rows`` (in seq order) so that no wave holds two rows of one key.

    Wave ``i`` holds the ``i``-th row of every key; keyless rows all go in the
    first wave (they have no order to keep).
    """
    waves: list[list[OutboxMessage]] = []
    depth: dict[str, int] = {}
    for row in rows:
        key = row.message.key
        index = 0
        if key is not None:
            index = depth.get(key, 0)
            depth[key] = index + 1
        if index == len(waves):
            waves.append([])
        waves[index].append(row)
    return waves


def _reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:_MAX_REASON]


def _default_owner() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class OutboxRelay:
    """Publishes an outbox's recorded messages to a transport and marks them sent.

    Run it as a background task (``async with OutboxRelay(outbox, transport):``
    or `start`/`stop`), or call `drain` to publish whatever is ready and return.
    Several relays may serve one PostgreSQL outbox; each claims rows under a
    lease, and per-key order holds across relays.

    Args:
        outbox: The outbox table to read (`SQLiteOutbox`, `PostgresOutbox`).
        transport: Where messages are published.
        batch_size: Most rows claimed per round.
        lease: Seconds a claimed row stays reserved for this relay. A relay that
            dies holds its rows this long; keep it well above the time one
            batch takes to publish.
        poll_interval: Longest idle wait between claims; PostgreSQL wakes the
            relay earlier through ``LISTEN/NOTIFY``.
        retry: Backoff between failed publishes of a row; its ``max_attempts``
            failures park the row (``None``: never park for transient errors).
        retention: Seconds sent rows are kept (for audit); ``0`` deletes them
            as soon as they are published; ``None`` keeps them forever.
        cleanup_interval: Seconds between retention cleanups.
        strict_order: Never put two messages of one key in one ``publish`` call
            (waves; see the module docstring). With ``False`` a claimed batch is
            published in one call, in seq order: much faster when few keys are
            hot, and ordered on every transport that publishes a batch in order,
            but a publish that fails midway may have sent later messages of a
            key before an earlier one is sent again.
        owner: Name of this relay in leases (default: host, pid and a random part).
        clock: Time source for leases, backoff and retention.
        rng: Random source for backoff jitter.
    """

    def __init__(
        self,
        outbox: Outbox,
        transport: Transport,
        *,
        batch_size: int = 256,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        retry: RetryPolicy = DEFAULT_RELAY_RETRY,
        retention: float | None = 3600.0,
        cleanup_interval: float = 60.0,
        strict_order: bool = True,
        owner: str | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
        if lease <= 0 or poll_interval <= 0 or cleanup_interval <= 0:
            raise ConfigurationError("lease, poll_interval and cleanup_interval must be positive")
        if retention is not None and retention < 0:
            raise ConfigurationError(f"retention must be >= 0 or None, got {retention}")
        self.outbox = outbox
        self.transport = transport
        self.batch_size = batch_size
        self.lease = lease
        self.poll_interval = poll_interval
        self.retry = retry
        self.retention = retention
        self.cleanup_interval = cleanup_interval
        self.strict_order = strict_order
        self.owner = owner or _default_owner()
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.stats = RelayStats()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._next_cleanup = 0.0
        self._failures = 0

    def __repr__(self) -> str:
        state = "running" if self.running else "idle"
        return f"<OutboxRelay {state} owner={self.owner!r} published={self.stats.published}>"

    @property
    def running(self) -> bool:
        """Whether the background task started by `start` is running."""
        return self._task is not None and not self._task.done()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Run the relay in a background task; idempotent."""
        if self.running:
            return
        self._stopping.clear()
        self._task = asyncio.get_running_loop().create_task(self.run(), name="sagaflow-relay")

    async def stop(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a drain budget
        """Stop after the round in flight (at most ``timeout`` seconds, then cancel).

        Rows of a cancelled round stay leased and are published again after
        their lease (at-least-once).
        """
        self._stopping.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> OutboxRelay:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def run(self) -> None:
        """Relay until `stop` is called (or the transport is closed).

        Database and transport trouble is logged and retried with backoff; the
        loop only ends on `stop` or when the transport is closed (logged: rows
        of the round in flight are published again after their lease).
        """
        while not self._stopping.is_set():
            try:
                claimed = await self.relay_once()
                await self._maybe_cleanup()
                self._failures = 0
            except TransportClosedError:
                logger.warning("outbox relay %s stops: its transport is closed", self.owner)
                return
            except Exception:
                self.stats.errors += 1
                self._failures += 1
                logger.exception("outbox relay round failed (%d in a row)", self._failures)
                await self._pause(_ROUND_BACKOFF.delay(self._failures, self.rng))
                continue
            if claimed < self.batch_size:
                await self._idle()

    async def drain(self, *, timeout: float | None = 30.0) -> int:  # noqa: ASYNC109
        """Publish until no row is ready, and return how many were published.

        Rows waiting for a retry (after a failed publish) or leased by another
        relay are not waited for.

        Raises:
            TimeoutError: Rows were still ready after ``timeout`` seconds.
        """
        before = self.stats.published
        async with asyncio.timeout(timeout):
            while await self.relay_once():
                pass
        return self.stats.published - before

    async def _idle(self) -> None:
        wait = asyncio.ensure_future(self.outbox.wait_for_work(self.poll_interval))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({wait, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (wait, stop):
                task.cancel()
            await asyncio.gather(wait, stop, return_exceptions=True)
        if wait.done() and not wait.cancelled() and wait.exception() is not None:
            # The wake-up hint failed (the database is busy or away): poll instead
            # of spinning; the next claim reports the trouble if it persists.
            logger.debug("outbox wake-up failed: %r", wait.exception())
            await self._pause(self.poll_interval)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    # -- one round -----------------------------------------------------------------------

    async def relay_once(self) -> int:
        """Claim one batch, publish it in per-key order, record the outcome.

        Returns:
            How many rows were claimed (``0``: nothing was ready).
        """
        started = self.clock.now()
        rows = await self.outbox.claim(
            owner=self.owner, limit=self.batch_size, lease=self.lease, now=started
        )
        if not rows:
            return 0
        self.stats.batches += 1
        outcome = await self._publish(rows, deadline=started + self.lease * 0.8)
        await self._record(outcome)
        return len(rows)

    async def _publish(self, rows: Sequence[OutboxMessage], *, deadline: float) -> _Outcome:
        outcome = _Outcome()
        limit = self.transport.features.max_payload
        ready: list[OutboxMessage] = []
        for row in rows:
            # Refuse what the transport would refuse, one row at a time, so that
            # one oversized message never fails (and holds back) a whole wave.
            if len(row.message.body) > limit:
                outcome.failed.append((row, MessageTooLargeError(len(row.message.body), limit)))
            else:
                ready.append(row)
        blocked: set[str] = set()
        for wave in _waves(ready) if self.strict_order else [ready]:
            if self.clock.now() > deadline:
                # The lease is about to lapse: another relay may take these rows.
                # Publishing them now could reorder a key; give them back.
                outcome.held.extend(r.seq for r in wave)
                continue
            await self._publish_wave(wave, outcome, blocked)
        return outcome

    async def _publish_wave(
        self, wave: list[OutboxMessage], outcome: _Outcome, blocked: set[str]
    ) -> None:
        """Publish ``wave`` in one call; after a failure, sort out row by row.

        ``blocked`` holds the keys with a failed row in this batch: their later
        rows are held back (given back unpublished) to keep each key's order.
        """
        todo = [r for r in wave if r.message.key not in blocked]
        outcome.held.extend(r.seq for r in wave if r.message.key in blocked)
        if not todo:
            return
        try:
            await self.transport.publish([row.message for row in todo])
        except TransportClosedError:
            raise
        except TransportUnavailableError as exc:
            # The broker is away: each key's first row waits for its retry time.
            for row in todo:
                self._hold_or_fail(row, exc, outcome, blocked)
        except Exception as exc:
            if len(todo) == 1:
                self._hold_or_fail(todo[0], exc, outcome, blocked)
            else:
                # Find the bad message(s), one by one, in order.
                await self._publish_one_by_one(todo, outcome, blocked)
        else:
            outcome.sent.extend(r.seq for r in todo)

    async def _publish_one_by_one(
        self, rows: list[OutboxMessage], outcome: _Outcome, blocked: set[str]
    ) -> None:
        for row in rows:
            if row.message.key in blocked:
                outcome.held.append(row.seq)
                continue
            try:
                await self.transport.publish([row.message])
            except TransportClosedError:
                raise
            except Exception as exc:
                self._hold_or_fail(row, exc, outcome, blocked)
            else:
                outcome.sent.append(row.seq)

    @staticmethod
    def _hold_or_fail(
        row: OutboxMessage, error: BaseException, outcome: _Outcome, blocked: set[str]
    ) -> None:
        key = row.message.key
        if key in blocked:
            outcome.held.append(row.seq)  # an earlier row of its key failed
            return
        outcome.failed.append((row, error))
        if key is not None:
            blocked.add(key)

    async def _record(self, outcome: _Outcome) -> None:
        now = self.clock.now()
        if outcome.sent:
            await self.outbox.mark_sent(outcome.sent, now=now, delete=self.retention == 0)
            self.stats.published += len(outcome.sent)
        for row, error in outcome.failed:
            await self._failed(row, error, now)
        if outcome.held:
            await self.outbox.release(self.owner, outcome.held)
            self.stats.released += len(outcome.held)

    async def _failed(self, row: OutboxMessage, error: BaseException, now: float) -> None:
        attempts = row.attempts + 1
        reason = _reason(error)
        permanent = isinstance(error, _PERMANENT) or not self.retry.is_retryable(error)
        if permanent or not self.retry.should_retry(error, attempt=attempts, elapsed=0.0):
            logger.warning(
                "outbox row %d (message %s) parked after %d attempt(s): %s",
                row.seq,
                row.message.id,
                attempts,
                reason,
            )
            await self.outbox.park([row.seq], reason=reason, now=now)
            self.stats.parked += 1
            return
        logger.info("publishing outbox row %d failed (attempt %d): %s", row.seq, attempts, reason)
        at = now + self.retry.delay(attempts, self.rng)
        await self.outbox.retry_later(self.owner, [row.seq], at=at, reason=reason)
        self.stats.failed_publishes += 1

    async def _maybe_cleanup(self) -> None:
        if self.retention is None or self.retention == 0:
            return
        now = self.clock.now()
        if now < self._next_cleanup:
            return
        self._next_cleanup = now + self.cleanup_interval
        self.stats.cleaned += await self.outbox.cleanup(sent_before=now - self.retention)
