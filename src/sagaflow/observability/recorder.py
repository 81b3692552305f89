"""`Journaling`: writes the flow journal from a bus and an orchestrator.

One `Journaling` object serves both styles::

    journaling = Journaling(open_journal("sqlite:///flows.db"), service="payment")
    bus = EventBus(transport, middleware=[journaling], on_dead_letter=journaling.on_dead_letter)
    orchestrator = Orchestrator(store, hooks=[journaling.hooks])
    ...
    await journaling.close()   # writes what is buffered

It is a bus `Middleware` (publishes and handlings), a dead-letter callback, and,
through `Journaling.hooks`, saga hooks (saga and step lifecycle). Recording is a
list append; a `JournalWriter` writes batches in the background, and a failing
journal is logged and skipped, never raised into a flow.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextvars import ContextVar
from types import TracebackType
from typing import Any

from sagaflow.choreography.dead_letters import DeadLetter
from sagaflow.choreography.middleware import HandleContext, HandleNext, Middleware, PublishNext
from sagaflow.envelope import H_CAUSATION, H_CORRELATION, H_ID, H_TYPE, Envelope
from sagaflow.events import Event
from sagaflow.observability.journal import (
    MAX_ERROR_MESSAGE,
    EntryKind,
    FlowJournal,
    JournalEntry,
    JournalWriter,
    error_fields,
)
from sagaflow.orchestration.hooks import SagaHooks
from sagaflow.orchestration.result import SagaResult

__all__ = ["Journaling"]

# Who is publishing: the group whose handler runs, or the saga step whose action
# runs, in this task. Set around handlers and steps, read by on_publish.
_HANDLING: ContextVar[str | None] = ContextVar("sagaflow_journal_group", default=None)
_STEP: ContextVar[str | None] = ContextVar("sagaflow_journal_step", default=None)


class Journaling(Middleware):
    """Records publishes, handlings, dead letters and saga steps in a flow journal.

    Args:
        journal: Where entries go.
        service: This process's service name, recorded with each entry (default:
            the envelope's source for publishes, ``""`` otherwise).
        batch_size: See `JournalWriter`.
        interval: See `JournalWriter`.
        max_buffer: See `JournalWriter`.
    """

    def __init__(
        self,
        journal: FlowJournal,
        *,
        service: str = "",
        batch_size: int = 500,
        interval: float = 0.2,
        max_buffer: int = 100_000,
    ) -> None:
        self.journal = journal
        self.service = service
        self.writer = JournalWriter(
            journal, batch_size=batch_size, interval=interval, max_buffer=max_buffer
        )
        self.hooks: SagaHooks = _JournalHooks(self)
        """Pass to ``Orchestrator(hooks=[...])`` to journal sagas."""

    def __repr__(self) -> str:
        return f"<Journaling {self.journal!r} service={self.service!r}>"

    # -- bus -----------------------------------------------------------------------

    async def on_publish(
        self, envelopes: Sequence[Envelope[Event]], call_next: PublishNext
    ) -> None:
        """Record each envelope once the transport accepted it."""
        await call_next(envelopes)
        group = _HANDLING.get()
        step = _STEP.get()
        add = self.writer.add
        service = self.service
        for envelope in envelopes:
            add(
                JournalEntry(
                    correlation_id=envelope.correlation_id,
                    kind=EntryKind.PUBLISH,
                    at=envelope.time.timestamp(),
                    service=service or envelope.source,
                    event_id=envelope.id,
                    event_type=envelope.type,
                    causation_id=envelope.causation_id,
                    group=group,
                    step=step,
                )
            )

    async def on_handle(self, ctx: HandleContext, call_next: HandleNext) -> None:
        """Record one delivery's handling: attempts, duration and outcome."""
        at = time.time()
        started = time.perf_counter()
        token = _HANDLING.set(ctx.group)
        try:
            await call_next(ctx)
        except Exception as exc:
            self._handled(ctx, at, started, "failed", error_fields(exc))
            raise
        finally:
            _HANDLING.reset(token)
        self._handled(ctx, at, started, "duplicate" if ctx.duplicate else "acked", {})

    def _handled(
        self,
        ctx: HandleContext,
        at: float,
        started: float,
        outcome: str,
        error: dict[str, str],
    ) -> None:
        envelope = ctx.envelope
        self.writer.add(
            JournalEntry(
                correlation_id=envelope.correlation_id,
                kind=EntryKind.HANDLE,
                at=at,
                service=self.service,
                event_id=envelope.id,
                event_type=envelope.type,
                causation_id=envelope.causation_id,
                group=ctx.group,
                attempt=ctx.delivery_attempt,
                attempts=ctx.attempts,
                duration=time.perf_counter() - started,
                outcome=outcome,
                **error,
            )
        )

    def on_dead_letter(self, letter: DeadLetter) -> None:
        """Record a dead letter; pass as ``EventBus(on_dead_letter=...)``."""
        headers = letter.message.headers
        error_type = letter.error["type"] if letter.error else ""
        error_message = letter.error["message"] if letter.error else ""
        self.writer.add(
            JournalEntry(
                correlation_id=headers.get(H_CORRELATION) or letter.message.id,
                kind=EntryKind.DEAD_LETTER,
                at=letter.time,
                service=self.service,
                event_id=headers.get(H_ID) or letter.message.id,
                event_type=letter.event_type or headers.get(H_TYPE),
                causation_id=headers.get(H_CAUSATION),
                group=letter.group,
                attempt=letter.deliveries,
                attempts=letter.attempts,
                outcome="dead_lettered",
                error_type=error_type.rpartition(".")[2] or None,
                error_message=error_message[:MAX_ERROR_MESSAGE] or None,
                detail=letter.reason[:MAX_ERROR_MESSAGE],
            )
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def flush(self) -> None:
        """Write every buffered entry now."""
        await self.writer.flush()

    async def close(self, *, close_journal: bool = True) -> None:
        """Write what is buffered, stop the writer, and close the journal."""
        await self.writer.close()
        if close_journal:
            await self.journal.close()

    async def __aenter__(self) -> Journaling:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class _JournalHooks(SagaHooks):
    """Saga hooks that record into a `Journaling`'s writer."""

    def __init__(self, owner: Journaling) -> None:
        self._owner = owner
        # Start times of running attempts, per saga (dropped when the saga ends,
        # so a cancelled attempt does not leak).
        self._started: dict[str, dict[str, float]] = {}

    def _add(self, saga_id: str, kind: EntryKind, **fields: Any) -> None:
        self._owner.writer.add(
            JournalEntry(
                correlation_id=saga_id,
                kind=kind,
                at=time.time(),
                service=self._owner.service or "orchestrator",
                **fields,
            )
        )

    def _begin(self, saga_id: str, key: str) -> None:
        self._started.setdefault(saga_id, {})[key] = time.perf_counter()

    def _took(self, saga_id: str, key: str) -> float | None:
        started = self._started.get(saga_id, {}).pop(key, None)
        return None if started is None else time.perf_counter() - started

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        """Record the start (or resumption) of a saga."""
        self._add(saga_id, EntryKind.SAGA_STARTED, detail=saga_name)

    def saga_finished(self, result: SagaResult[Any]) -> None:
        """Record a saga's end and status."""
        self._started.pop(result.saga_id, None)
        error = result.error or {}
        self._add(
            result.saga_id,
            EntryKind.SAGA_FINISHED,
            detail=result.saga_name,
            outcome=result.status.value,
            step=error.get("step"),
            error_type=error.get("type"),
            error_message=(error.get("message") or "")[:MAX_ERROR_MESSAGE] or None,
        )

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        """Record an attempt's start; mark the task so its publishes name the step."""
        self._begin(saga_id, step)
        # Hooks run in the task that runs the action: its publishes see the step.
        _STEP.set(step)
        self._add(saga_id, EntryKind.STEP_STARTED, step=step, attempt=attempt)

    def step_succeeded(self, saga_id: str, step: str, attempt: int) -> None:
        """Record a completed action."""
        _STEP.set(None)
        took = self._took(saga_id, step)
        self._add(saga_id, EntryKind.STEP_SUCCEEDED, step=step, attempt=attempt, duration=took)

    def step_failed(
        self, saga_id: str, step: str, attempt: int, error: BaseException, will_retry: bool
    ) -> None:
        """Record a failed attempt."""
        _STEP.set(None)
        self._add(
            saga_id,
            EntryKind.STEP_FAILED,
            step=step,
            attempt=attempt,
            duration=self._took(saga_id, step),
            outcome="retry" if will_retry else "final",
            **error_fields(error),
        )

    def compensation_started(self, saga_id: str, step: str, attempt: int) -> None:
        """Record a compensation attempt's start."""
        self._begin(saga_id, f"undo:{step}")
        _STEP.set(f"undo:{step}")
        self._add(saga_id, EntryKind.COMPENSATION_STARTED, step=step, attempt=attempt)

    def step_compensated(self, saga_id: str, step: str, attempt: int) -> None:
        """Record a completed compensation."""
        _STEP.set(None)
        took = self._took(saga_id, f"undo:{step}")
        self._add(saga_id, EntryKind.STEP_COMPENSATED, step=step, attempt=attempt, duration=took)

    def compensation_failed(
        self, saga_id: str, step: str, attempt: int, error: BaseException, will_retry: bool
    ) -> None:
        """Record a failed compensation attempt."""
        _STEP.set(None)
        self._add(
            saga_id,
            EntryKind.COMPENSATION_FAILED,
            step=step,
            attempt=attempt,
            duration=self._took(saga_id, f"undo:{step}"),
            outcome="retry" if will_retry else "final",
            **error_fields(error),
        )
