"""Crash-point exploration: kill a saga at every log write and check recovery.

The orchestrator writes the log before and after every side effect, so the log
writes are exactly the points where a process death changes what recovery sees.
`explore_crash_points` runs a saga once per such point, "crashes" it there (the
write is lost, or made and then the process dies), recovers with a fresh
orchestrator on the same store, and checks that every run converges to
COMPLETED, COMPENSATED or parked FAILED, and that no step marked
``idempotent=False`` ran twice.

Example:
    >>> report = await explore_crash_points(order_saga, {"order_id": "o1"})  # doctest: +SKIP
    >>> report.assert_ok()  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import inspect
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from sagaflow.errors import SagaNotFoundError
from sagaflow.orchestration.context import StepContext
from sagaflow.orchestration.definition import Saga, Step, StepResult
from sagaflow.orchestration.orchestrator import Orchestrator
from sagaflow.orchestration.records import Claim, SagaLog, SagaRecord, SagaStatus, SagaSummary
from sagaflow.orchestration.store import SagaStore
from sagaflow.stores.memory import MemorySagaStore

__all__ = [
    "CrashOutcome",
    "CrashReport",
    "CrashingStore",
    "SimulatedCrash",
    "explore_crash_points",
]


class SimulatedCrash(BaseException):
    """Raised to simulate the process dying. A `BaseException`: nothing catches it."""


class CrashingStore:
    """A `SagaStore` wrapper that "kills the process" at its n-th write.

    Args:
        inner: The real store.
        crash_at: 1-based number of the write (create or append) to crash at; 0 never.
        after: Crash after the write is durable (else before it is made).
    """

    def __init__(self, inner: SagaStore, *, crash_at: int = 0, after: bool = False) -> None:
        self.inner = inner
        self.crash_at = crash_at
        self.after = after
        self.writes: list[list[SagaRecord]] = []
        self.crashed = False

    def _count(self, records: Sequence[SagaRecord]) -> bool:
        if self.crashed:  # the process is dead: no other task of it writes anything
            raise SimulatedCrash("the process already crashed")
        self.writes.append(list(records))
        hit = len(self.writes) == self.crash_at
        if hit and not self.after:
            self.crashed = True
            raise SimulatedCrash(f"crash before write {self.crash_at}")
        return hit

    def _maybe_crash_after(self, hit: bool) -> None:
        if hit:
            self.crashed = True
            raise SimulatedCrash(f"crash after write {self.crash_at}")

    async def create(
        self, saga_id: str, records: Sequence[SagaRecord], *, owner: str, lease: float
    ) -> Claim:
        """Delegate, crashing if this is the chosen write."""
        hit = self._count(records)
        claim = await self.inner.create(saga_id, records, owner=owner, lease=lease)
        self._maybe_crash_after(hit)
        return claim

    async def append(
        self,
        saga_id: str,
        records: Sequence[SagaRecord],
        *,
        expected_version: int,
        fencing_token: int,
    ) -> int:
        """Delegate, crashing if this is the chosen write."""
        hit = self._count(records)
        version = await self.inner.append(
            saga_id, records, expected_version=expected_version, fencing_token=fencing_token
        )
        self._maybe_crash_after(hit)
        return version

    async def load(self, saga_id: str) -> SagaLog:
        """Delegate."""
        return await self.inner.load(saga_id)

    async def claim(self, *, owner: str, lease: float, limit: int) -> Sequence[Claim]:
        """Delegate."""
        return await self.inner.claim(owner=owner, lease=lease, limit=limit)

    async def acquire(self, saga_id: str, *, owner: str, lease: float) -> Claim:
        """Delegate."""
        return await self.inner.acquire(saga_id, owner=owner, lease=lease)

    async def renew(self, *, owner: str, claims: Sequence[Claim], lease: float) -> Sequence[Claim]:
        """Delegate."""
        return await self.inner.renew(owner=owner, claims=claims, lease=lease)

    async def release(self, saga_id: str, *, fencing_token: int) -> None:
        """Delegate."""
        await self.inner.release(saga_id, fencing_token=fencing_token)

    async def list_sagas(
        self, *, status: SagaStatus | None = None, limit: int = 100
    ) -> Sequence[SagaSummary]:
        """Delegate."""
        return await self.inner.list_sagas(status=status, limit=limit)

    async def close(self) -> None:
        """Close nothing: the inner store outlives the simulated process."""


@dataclass(frozen=True, slots=True)
class CrashOutcome:
    """The result of one crash point.

    Attributes:
        point: Reproducible id, e.g. ``"before-write-3"``; pass it to `only`.
        description: The records of the write at that point (what was, or was not,
            made durable).
        status: Final status after recovery (``None`` if recovery did not finish).
        runs: How many times each step's action ran, across crash and recovery.
        problems: What went wrong; empty when the point passed.
    """

    point: str
    description: str
    status: SagaStatus | None
    runs: Mapping[str, int]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """Whether the run converged and no non-idempotent step ran twice."""
        return not self.problems


@dataclass
class CrashReport:
    """Every crash point's outcome, in order."""

    saga: str
    outcomes: list[CrashOutcome] = field(default_factory=list)

    @property
    def failures(self) -> list[CrashOutcome]:
        """The points that did not pass."""
        return [o for o in self.outcomes if not o.ok]

    def assert_ok(self) -> None:
        """Raise `AssertionError` listing every failing point."""
        if self.failures:
            raise AssertionError(
                "crash points failed:\n" + "\n".join(_describe(o) for o in self.failures)
            )

    def render(self) -> str:
        """A table of every point: id, outcome, the write it hit."""
        lines = [f"crash-point exploration of saga {self.saga!r}: {len(self.outcomes)} points"]
        for o in self.outcomes:
            verdict = "ok " if o.ok else "FAIL"
            status = o.status.value if o.status else "unfinished"
            lines.append(f"  {verdict} {o.point:<18} -> {status:<11} at [{o.description}]")
            lines.extend(f"       {problem}" for problem in o.problems)
        return "\n".join(lines)


def _describe(outcome: CrashOutcome) -> str:
    return f"{outcome.point} ({outcome.description}): " + "; ".join(outcome.problems)


StoreFactory = Callable[[], SagaStore | Awaitable[SagaStore]]


async def explore_crash_points(
    saga: Saga[Any],
    input: BaseModel | Mapping[str, Any],
    *,
    store_factory: StoreFactory | None = None,
    only: Sequence[str] | None = None,
    saga_id: str = "crash-test",
    orchestrator_options: Mapping[str, Any] | None = None,
) -> CrashReport:
    """Crash ``saga`` at every log write, recover it, and report each outcome.

    Args:
        saga: The definition under test; its steps' ``idempotent`` flags are checked.
        input: The initial state.
        store_factory: Makes an empty store for each point (sync or async); the
            default is a `MemorySagaStore`. Use a real store to test it too.
        only: Run just these point ids (to reproduce one failure).
        saga_id: The instance id used in every run.
        orchestrator_options: Extra keyword arguments for both orchestrators
            (a ``clock``, for example).

    Returns:
        The report; call `CrashReport.assert_ok` in a test.
    """
    options = dict(orchestrator_options or {})
    writes = await _count_writes(saga, input, store_factory, saga_id, options)
    report = CrashReport(saga.key)
    for number, records in enumerate(writes, start=1):
        for after in (False, True):
            point = f"{'after' if after else 'before'}-write-{number}"
            if only is not None and point not in only:
                continue
            description = ", ".join(
                f"{r.kind.value}{':' + r.step if r.step else ''}" for r in records
            )
            outcome = await _run_point(
                saga, input, store_factory, saga_id, options, number, after, point, description
            )
            report.outcomes.append(outcome)
    return report


async def _make_store(factory: StoreFactory | None) -> SagaStore:
    if factory is None:
        return MemorySagaStore()
    store = factory()
    if inspect.isawaitable(store):
        store = await store
    return store


async def _count_writes(
    saga: Saga[Any],
    input: BaseModel | Mapping[str, Any],
    factory: StoreFactory | None,
    saga_id: str,
    options: dict[str, Any],
) -> list[list[SagaRecord]]:
    store = CrashingStore(await _make_store(factory))
    try:
        async with Orchestrator(store, **options) as orchestrator:
            await orchestrator.run(_instrumented(saga, Counter()), input, saga_id=saga_id)
    finally:
        await store.inner.close()
    return store.writes


async def _run_point(
    saga: Saga[Any],
    input: BaseModel | Mapping[str, Any],
    factory: StoreFactory | None,
    saga_id: str,
    options: dict[str, Any],
    number: int,
    after: bool,
    point: str,
    description: str,
) -> CrashOutcome:
    runs: Counter[str] = Counter()
    instrumented = _instrumented(saga, runs)
    inner = await _make_store(factory)
    problems: list[str] = []
    status: SagaStatus | None = None
    try:
        crashing = CrashingStore(inner, crash_at=number, after=after)
        first = Orchestrator(crashing, lease=0.0, owner="crashed-worker", **options)
        try:
            await first.run(instrumented, input, saga_id=saga_id)
        except SimulatedCrash:
            pass
        finally:
            await first.close()
        if not crashing.crashed:
            problems.append("the crash point was never reached (the saga is not deterministic?)")
        second = Orchestrator(inner, sagas=[instrumented], owner="recovering-worker", **options)
        async with second:
            report = await second.recover(limit=10)
        problems.extend(f"recovery error: {error!r}" for _, error in report.errors)
        try:
            log = await inner.load(saga_id)
        except SagaNotFoundError:
            # Crashed before the saga was recorded: no step may have run, and the
            # caller, seeing its request fail, starts the saga again.
            if any(runs.values()):
                problems.append(f"steps ran but the saga was never recorded: {dict(runs)}")
            async with Orchestrator(inner, **options) as retry:
                await retry.run(instrumented, input, saga_id=saga_id)
            log = await inner.load(saga_id)
        status = log.status
        if not status.is_terminal:
            problems.append(f"did not converge: status {status.value} after recovery")
        for step in saga.steps():
            if not step.idempotent and runs[step.name] > 1:
                problems.append(f"non-idempotent step {step.name!r} ran {runs[step.name]} times")
    finally:
        await inner.close()
    return CrashOutcome(point, description, status, dict(runs), tuple(problems))


def _instrumented(saga: Saga[Any], runs: Counter[str]) -> Saga[Any]:
    """Copy ``saga`` with every action wrapped to count its runs."""

    def wrap(step: Step) -> Step:
        action = step.action
        name = step.name
        if step.action_is_async:

            async def counted_async(ctx: StepContext[Any]) -> StepResult:
                runs[name] += 1
                result: StepResult = await action(ctx)  # type: ignore[misc]
                return result

            return dataclasses.replace(step, action=counted_async)

        def counted(ctx: StepContext[Any]) -> StepResult:
            runs[name] += 1
            return action(ctx)  # type: ignore[return-value]

        return dataclasses.replace(step, action=counted)

    return saga.map_steps(wrap)
