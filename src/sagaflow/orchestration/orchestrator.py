"""The `Orchestrator`: runs saga instances, writing the log before every effect.

For each instance it writes ``STEP_STARTED`` to the store *before* calling an
action and ``STEP_COMPLETED`` / ``STEP_FAILED`` after; a completion is sent
together with the next ``STARTED`` record (or the final record), so a 4-step saga
costs five store writes. If a step fails beyond its retry policy, it runs the
compensations of every completed (or possibly completed) compensatable step in
reverse order of completion. Cancellation of the calling task runs compensations
too, shielded from the cancellation itself.

The common step (an async action without a timeout) has its first attempt run
inline by the stage loop, and writes to a plain `MemorySagaStore` are made
without awaiting a coroutine; everything else (retries, timeouts, sync actions,
parallel groups, any other store, any refused write) takes the general path.
The property tests draw both kinds of step.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python

from sagaflow._eager import start_eagerly
from sagaflow.clock import Clock, SystemClock
from sagaflow.errors import (
    ConcurrencyError,
    DefinitionMismatchError,
    FencedError,
    SagaAlreadyExistsError,
    SagaCancelledError,
    SagaDeadlineExceededError,
    SagaflowError,
    SchemaError,
    StepTimeoutError,
    StoreUnavailableError,
)
from sagaflow.orchestration.context import StepContext
from sagaflow.orchestration.definition import Saga, Step, StepKind, StepResult, _Plan
from sagaflow.orchestration.hooks import HookDispatcher, SagaHooks, fire
from sagaflow.orchestration.operator import resume_parked
from sagaflow.orchestration.records import (
    Claim,
    JsonRecords,
    RecordKind,
    SagaLog,
    SagaRecord,
    SagaStatus,
    error_info,
)
from sagaflow.orchestration.result import SagaResult
from sagaflow.orchestration.store import SagaStore
from sagaflow.retry import RetryPolicy

if TYPE_CHECKING:
    from sagaflow.stores.memory import MemorySagaStore

__all__ = ["Orchestrator", "RecoveryReport"]

S = TypeVar("S", bound=BaseModel)
T = TypeVar("T")

_log = logging.getLogger("sagaflow.orchestration")

DEFAULT_STORE_RETRY = RetryPolicy(
    max_attempts=6, initial_delay=0.05, max_delay=2.0, retry_on=(StoreUnavailableError,)
)

# SagaRecord's generated __new__ is a Python function; the tuple's is not.
_new_record = tuple.__new__
_STARTED = RecordKind.STEP_STARTED
_COMPLETED = RecordKind.STEP_COMPLETED
_FAILED = RecordKind.STEP_FAILED


class Orchestrator:
    """Runs saga instances against a `SagaStore`.

    One orchestrator can run many sagas concurrently; it is safe to share between
    tasks of one event loop.

    Args:
        store: Where saga logs are written; defaults to a new `MemorySagaStore`.
        hooks: Lifecycle callbacks (tracing, metrics, journals).
        clock: Time source for timeouts, deadlines, backoff and leases.
        owner: This worker's id in leases; defaults to a random one.
        lease: Seconds a saga stays leased to this worker without a heartbeat.
        store_retry: How a write is retried when the store is unavailable (its
            ``max_attempts`` counts the first try). The write that creates a saga
            is not retried: if the store is down then, `run` raises
            `StoreUnavailableError` before any step has run, and can simply be
            called again.
        seed: Seed for retry jitter, for reproducible runs.
        sagas: Definitions this worker can recover (see `register`).
        max_recoveries: Takeovers of one saga after which recovery parks it as
            FAILED instead of trying again (a saga that crashes its worker every
            time must not loop forever).
    """

    def __init__(
        self,
        store: SagaStore | None = None,
        *,
        hooks: Sequence[SagaHooks] = (),
        clock: Clock | None = None,
        owner: str | None = None,
        lease: float = 30.0,
        store_retry: RetryPolicy = DEFAULT_STORE_RETRY,
        seed: int | None = None,
        sagas: Sequence[Saga[Any]] = (),
        max_recoveries: int = 5,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        # Records are stamped often: skip the method call for the real clock.
        real = type(self.clock) is SystemClock
        self._now = time.time if real else self.clock.now
        self._monotonic = time.monotonic if real else self.clock.monotonic
        if store is None:
            # Imported here: the stores package imports orchestration modules.
            from sagaflow.stores.memory import MemorySagaStore

            store = MemorySagaStore(clock=self.clock)
        self.store: SagaStore = store
        self._direct = _direct_store(store)
        self.hooks = HookDispatcher(hooks)
        self.owner = owner or f"orchestrator-{uuid.uuid4().hex[:12]}"
        self.lease = lease
        self.store_retry = store_retry
        self.rng = random.Random(seed)
        self._id_prefix = uuid.uuid4().hex[:16]
        self._ids = itertools.count(1)
        self._active: dict[str, _Execution[Any]] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._definitions: dict[tuple[str, int], Saga[Any]] = {}
        self.max_recoveries = max_recoveries
        self.register(*sagas)

    # -- public API ------------------------------------------------------------------

    async def run(
        self,
        saga: Saga[S],
        input: S | Mapping[str, Any],
        *,
        saga_id: str | None = None,
        deadline: float | None = None,
    ) -> SagaResult[S]:
        """Run one instance of ``saga`` to its end and return the result.

        Args:
            saga: The definition.
            input: The initial state (a model instance, or data that validates into one).
            saga_id: The instance id; generated if omitted. If an instance with this
                id exists already it is not started again: its current result is
                returned instead.
            deadline: Seconds the forward path may take (overrides the saga's own).

        Returns:
            The result: COMPLETED, COMPENSATED or FAILED (parked), with the state and log.

        Raises:
            SchemaError: ``input`` does not validate against the saga's state model.
            FencedError: Another worker took the saga over while it ran here.
            StoreError: The store failed beyond ``store_retry``.
            asyncio.CancelledError: The caller cancelled; compensations ran first.
        """
        state = _validate_input(saga, input)
        saga_id = saga_id or f"{self._id_prefix}-{next(self._ids)}"
        execution = _Execution(self, saga, saga_id, state)
        execution.start()
        try:
            return await execution.run(saga.deadline if deadline is None else deadline)
        except SagaAlreadyExistsError as exc:
            if exc.saga_id != saga_id or execution.version:
                raise
            return await self.result(saga, saga_id)

    def run_sync(
        self,
        saga: Saga[S],
        input: S | Mapping[str, Any],
        *,
        saga_id: str | None = None,
        deadline: float | None = None,
    ) -> SagaResult[S]:
        """Run a saga from synchronous code (no event loop running in this thread).

        Same arguments and result as `run`.
        """
        return asyncio.run(self.run(saga, input, saga_id=saga_id, deadline=deadline))

    async def result(self, saga: Saga[S], saga_id: str) -> SagaResult[S]:
        """Return the current result of an instance, rebuilt from its log.

        Raises:
            SagaNotFoundError: No such instance.
            DefinitionMismatchError: The instance belongs to another saga definition.
        """
        log = await self.store.load(saga_id)
        check_definition(saga, log)
        return result_from_log(saga, log)

    def register(self, *sagas: Saga[Any]) -> None:
        """Make definitions known for recovery, keyed by name and version.

        Register every version that may still have instances running, so that
        old instances finish on the definition that started them.
        """
        for saga in sagas:
            self._definitions[(saga.name, saga.version)] = saga

    async def recover(self, *, limit: int = 100) -> RecoveryReport:
        """Take over unfinished sagas whose owner stopped, and drive each to its end.

        Claims up to ``limit`` sagas whose lease lapsed (see `SagaStore.claim`) and
        runs them concurrently. A step whose outcome is unknown is run again with its
        idempotency key; a saga that was compensating goes on compensating.

        Returns:
            What was finished, refused (no matching registered definition: the
            lease is released for a worker that has it) or failed (store errors).
        """
        claims = await self.store.claim(owner=self.owner, lease=self.lease, limit=limit)
        outcomes = await asyncio.gather(
            *(self._recover_claim(claim) for claim in claims), return_exceptions=True
        )
        report = RecoveryReport()
        for claim, outcome in zip(claims, outcomes, strict=True):
            if isinstance(outcome, DefinitionMismatchError):
                report.refused.append((claim.saga_id, outcome))
            elif isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):  # cancellation, exit: not ours to keep
                    raise outcome
                report.errors.append((claim.saga_id, outcome))
            else:
                report.finished.append(outcome)
        return report

    async def work(
        self,
        *,
        poll_interval: float = 1.0,
        concurrency: int = 64,
        stop: asyncio.Event | None = None,
    ) -> None:
        """Recover sagas continuously until ``stop`` is set (worker mode).

        Several workers may share one store: each claims different sagas, and a
        worker whose lease lapsed is fenced out by the store.

        Args:
            poll_interval: Seconds between claims when there was nothing to do.
            concurrency: Most sagas driven at once by this worker.
            stop: Set it to stop claiming; sagas in progress are finished first.
        """
        stop = stop or asyncio.Event()
        running: set[asyncio.Task[Any]] = set()
        while not stop.is_set():
            claimed = 0
            free = concurrency - len(running)
            if free > 0:
                try:
                    claims = await self.store.claim(owner=self.owner, lease=self.lease, limit=free)
                except StoreUnavailableError:
                    _log.warning("worker %s: store unavailable; will retry", self.owner)
                    claims = []
                claimed = len(claims)
                for claim in claims:
                    task = asyncio.ensure_future(self._recover_claim(claim))
                    running.add(task)
                    task.add_done_callback(_worker_task_done(running))
            if claimed == 0 or claimed == free:
                await _wait_or_stop(self.clock, poll_interval, stop)
        if running:
            await asyncio.gather(*running, return_exceptions=True)

    async def resume(
        self, saga: Saga[S], saga_id: str, *, skip_reason: str | None = None
    ) -> SagaResult[S]:
        """Resume a parked (FAILED) saga now, in this process, and return its result.

        The failed compensation, or the failed step after the pivot, is tried again.
        With ``skip_reason`` the failed compensation is skipped instead (the reason
        is recorded) and compensation goes on with the earlier steps.

        Raises:
            SagaStateError: The saga is not parked.
            DefinitionMismatchError: ``saga`` is not the definition that started it.
        """
        log = await self.store.load(saga_id)
        check_definition(saga, log)
        claim, log = await resume_parked(
            self.store,
            saga_id,
            owner=self.owner,
            lease=self.lease,
            skip_reason=skip_reason,
            release=False,
            clock=self.clock,
        )
        return await self._continue(saga, log, claim, recovered=False)

    async def skip(self, saga: Saga[S], saga_id: str, *, reason: str) -> SagaResult[S]:
        """Skip a parked saga's failed compensation (recording ``reason``) and go on."""
        return await self.resume(saga, saga_id, skip_reason=reason)

    async def _recover_claim(self, claim: Claim) -> SagaResult[Any]:
        log = await self.store.load(claim.saga_id)
        saga = self._definitions.get((log.saga_name, log.definition_version))
        if saga is None:
            await self.store.release(claim.saga_id, fencing_token=claim.fencing_token)
            known = sorted(f"{name}@{version}" for name, version in self._definitions)
            found = f"{log.saga_name}@{log.definition_version}"
            raise DefinitionMismatchError(
                f"saga {claim.saga_id!r} was started by definition {found}, which this "
                f"worker does not have (registered: {known or 'none'}); register it",
                saga_id=claim.saga_id,
                expected=found,
                actual=", ".join(known),
            )
        return await self._continue(saga, log, claim, recovered=True)

    async def _continue(
        self, saga: Saga[S], log: SagaLog, claim: Claim, *, recovered: bool
    ) -> SagaResult[S]:
        execution, backward = _Execution.from_log(self, saga, log, claim)
        if recovered:
            count = _recoveries_since_resume(log) + 1
            if count > self.max_recoveries:
                error = {
                    "type": "RecoveryLimitExceeded",
                    "message": f"recovered {count - 1} times without finishing; parked",
                    "step": "",
                }
                return execution.finish(await execution.park(error))
            execution.record(RecordKind.SAGA_RECOVERED, data={"owner": self.owner, "count": count})
        hooks = self.hooks
        if hooks.saga_started:
            fire(hooks.saga_started, execution.saga_id, saga.name)
        # The deadline counts from the saga's start or latest resume (see
        # forward()), so the time this saga spent without a worker counts too.
        return await execution.run(saga.deadline, backward=backward)

    async def close(self) -> None:
        """Stop the lease heartbeat. Sagas still running keep running; idempotent."""
        task, self._heartbeat = self._heartbeat, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> Orchestrator:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- internals used by executions ------------------------------------------------

    async def _write(
        self,
        saga_id: str,
        records: list[SagaRecord],
        version: int,
        token: int,
        *,
        failed: StoreUnavailableError,
        started: float,
    ) -> int:
        """Retry a store write whose first attempt failed as unavailable, per ``store_retry``.

        ``failed`` is the first attempt's error and ``started`` the monotonic time
        it began: that attempt counts towards the policy's attempts and time limit.
        """
        policy = self.store_retry
        attempt = 1
        error = failed
        while True:
            elapsed = self.clock.monotonic() - started
            if not policy.should_retry(error, attempt=attempt, elapsed=elapsed):
                raise error
            _log.warning("saga %s: store unavailable, retrying write", saga_id)
            await self.clock.sleep(policy.delay(attempt, self.rng))
            attempt += 1
            try:
                return await self.store.append(
                    saga_id, records, expected_version=version, fencing_token=token
                )
            except FencedError:
                raise
            except ConcurrencyError:
                # An earlier attempt may have committed before its reply was lost.
                return await self._already_written(saga_id, records, version)
            except StoreUnavailableError as exc:
                error = exc

    async def _already_written(self, saga_id: str, records: list[SagaRecord], version: int) -> int:
        """Return the new version if ``records`` were appended at ``version``; else raise."""
        log = await self.store.load(saga_id)
        stored = log.records[version : version + len(records)]
        if len(stored) == len(records) and all(
            (a.kind, a.step, a.attempt, a.at) == (b.kind, b.step, b.attempt, b.at)
            for a, b in zip(stored, records, strict=True)
        ):
            return version + len(records)
        raise ConcurrencyError(saga_id, expected_version=version, actual_version=log.version)

    def _activate(self, execution: _Execution[Any]) -> None:
        self._active[execution.saga_id] = execution
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(
                self._renew_leases(), name=f"sagaflow-heartbeat-{self.owner}"
            )

    async def _renew_leases(self) -> None:
        """Renew the leases of running sagas every third of the lease, while any run."""
        while self._active:
            await self.clock.sleep(self.lease / 3)
            executions = list(self._active.values())
            claims = [e.claim for e in executions if e.claim is not None]
            if not claims:
                continue
            try:
                renewed = await self.store.renew(owner=self.owner, claims=claims, lease=self.lease)
            except Exception:  # keep heartbeating; a failed renew is retried next tick
                _log.warning("lease renewal failed; retrying", exc_info=True)
                continue
            kept = {claim.saga_id: claim for claim in renewed}
            for execution in executions:
                execution.claim = kept.get(execution.saga_id)


def _direct_store(store: SagaStore) -> MemorySagaStore | None:
    """Return ``store`` if its writes can be made without a coroutine, else None.

    That is a `MemorySagaStore` whose ``create`` and ``append`` are its own: a
    subclass that overrides them (to spy, fail or delay) is always awaited.
    Skipping two coroutines per write is about a tenth of an in-memory saga.
    """
    from sagaflow.stores.memory import MemorySagaStore

    kind = type(store)
    if (
        isinstance(store, MemorySagaStore)
        and kind.create is MemorySagaStore.create
        and kind.append is MemorySagaStore.append
    ):
        return store
    return None


def _validate_input(saga: Saga[S], input: S | Mapping[str, Any]) -> S:
    if isinstance(input, saga.state_type):
        return input
    try:
        return saga.state_type.model_validate(input)
    except ValidationError as exc:
        raise SchemaError(f"saga {saga.name!r}: invalid input: {exc}") from exc


def check_definition(saga: Saga[Any], log: SagaLog) -> None:
    """Refuse a log written by another saga name or definition version."""
    if log.saga_name == saga.name and log.definition_version == saga.version:
        return
    found = f"{log.saga_name}@{log.definition_version}"
    raise DefinitionMismatchError(
        f"saga {log.saga_id!r} was written by definition {found}, not {saga.key}; "
        f"run it with the {found} definition",
        saga_id=log.saga_id,
        expected=found,
        actual=saga.key,
    )


def apply_result(state: S, result: StepResult) -> tuple[S, Any]:
    """Apply a step's return value to ``state``; return the new state and what to log.

    Raises:
        SchemaError: The result is of the wrong type, names unknown fields, or the
            updated state does not validate.
    """
    if result is None:
        return state, None
    if type(result) is not dict:  # the usual case is a dict of updates
        return _apply_other(state, result)
    if not result:
        return state, None
    model = type(state)
    shape = _SHAPES.get(model) or _shape_of(model)
    if not shape.fields.issuperset(result):
        unknown = next(key for key in result if key not in shape.fields)
        raise SchemaError(f"step updated unknown state field {unknown!r} of {model.__name__}")
    try:
        new_state: S = shape.validate({**state.__dict__, **result})
    except ValidationError as exc:
        raise SchemaError(f"state is invalid after the step's updates: {exc}") from exc
    # Log the validated values in JSON form, exactly as every store will return them.
    if shape.plain:
        values = new_state.__dict__
        return new_state, {
            key: value if type(value := values[key]) in _JSON_SCALARS else to_jsonable_python(value)
            for key in result
        }
    return new_state, new_state.model_dump(mode="json", include=set(result))


def _apply_other(state: S, result: StepResult) -> tuple[S, Any]:
    """`apply_result` for a result that is not a plain dict: a model or another mapping."""
    model = type(state)
    if isinstance(result, BaseModel):
        if not isinstance(result, model):
            raise SchemaError(f"step returned a {type(result).__name__}, expected {model.__name__}")
        return result, result.model_dump(mode="json")
    if not isinstance(result, Mapping):
        raise SchemaError(
            f"step returned {type(result).__name__}; return a mapping of state updates, "
            f"a {model.__name__}, or None"
        )
    return apply_result(state, dict(result))


_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


class _Shape(NamedTuple):
    """What `apply_result` needs of a state model, looked up once per model."""

    fields: frozenset[str]
    validate: Callable[[Any], Any]  # model_validate's validator, without its wrapper
    plain: bool  # field values serialize alone: the model has no serializers of its own


_SHAPES: dict[type[BaseModel], _Shape] = {}


def _shape_of(model: type[BaseModel]) -> _Shape:
    # Nested models are serialized by their own serializers through
    # to_jsonable_python, which honours them; only this model's hooks need the full dump.
    decorators = model.__pydantic_decorators__
    shape = _Shape(
        fields=frozenset(model.__pydantic_fields__),
        validate=model.__pydantic_validator__.validate_python,
        plain=not (decorators.field_serializers or decorators.model_serializers),
    )
    _SHAPES[model] = shape
    return shape


def replay_state(saga: Saga[S], records: Sequence[SagaRecord]) -> S:
    """Rebuild a saga's state from its initial state and every logged update."""
    initial = records[0].data or {}
    state = saga.state_type.model_validate(initial.get("state", {}))
    for record in records:
        if record.kind in (RecordKind.STEP_COMPLETED, RecordKind.COMPENSATION_COMPLETED):
            updates = (record.data or {}).get("updates")
            if isinstance(updates, BaseModel):
                state = saga.state_type.model_validate(updates)
            elif updates:
                merged = dict(state)
                merged.update(updates)
                state = saga.state_type.model_validate(merged)
    return state


def result_from_log(saga: Saga[S], log: SagaLog) -> SagaResult[S]:
    """Build a `SagaResult` from a stored log."""
    error: Mapping[str, str] | None = None
    for record in log.records:
        if record.kind in (RecordKind.SAGA_COMPENSATING, RecordKind.SAGA_FAILED) and record.data:
            error = record.data.get("error")
    return SagaResult(
        saga_id=log.saga_id,
        saga_name=log.saga_name,
        status=log.status,
        state=replay_state(saga, log.records),
        records=log.records,
        error=error,
    )


@dataclass
class RecoveryReport:
    """What `Orchestrator.recover` did.

    Attributes:
        finished: Results of the sagas driven to an end (or parked).
        refused: Sagas left for another worker: no registered definition matches.
        errors: Sagas whose recovery stopped on an error (e.g. the store went away);
            their lease lapses and they are claimed again later.
    """

    finished: list[SagaResult[Any]] = field(default_factory=list)
    refused: list[tuple[str, DefinitionMismatchError]] = field(default_factory=list)
    errors: list[tuple[str, BaseException]] = field(default_factory=list)


def _recoveries_since_resume(log: SagaLog) -> int:
    count = 0
    for record in log.records:
        if record.kind is RecordKind.SAGA_RECOVERED:
            count += 1
        elif record.kind is RecordKind.SAGA_RESUMED:
            count = 0
    return count


def _worker_task_done(running: set[asyncio.Task[Any]]) -> Any:
    def done(task: asyncio.Task[Any]) -> None:
        running.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            if isinstance(error, DefinitionMismatchError):
                _log.warning("worker: %s", error)
            else:
                _log.error("worker: recovery failed", exc_info=error)

    return done


async def _wait_or_stop(clock: Clock, seconds: float, stop: asyncio.Event) -> None:
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        stopper.cancel()


class _StepOutcome:
    """How one step's run ended (internal)."""

    __slots__ = ("error", "uncertain")

    def __init__(self, error: BaseException | None, uncertain: bool) -> None:
        self.error = error
        self.uncertain = uncertain


_OK = _StepOutcome(None, False)


class _Execution(Generic[S]):
    """One saga instance being driven forward or backward by an orchestrator."""

    __slots__ = (
        "attempts",
        "claim",
        "compensated",
        "decided",
        "direct",
        "done",
        "error",
        "lock",
        "log",
        "now",
        "orch",
        "past_pivot",
        "pending",
        "saga",
        "saga_id",
        "stage",
        "state",
        "store",
        "undo",
        "version",
    )

    def __init__(self, orch: Orchestrator, saga: Saga[S], saga_id: str, state: S) -> None:
        self.orch = orch
        self.store = orch.store
        self.direct = orch._direct
        self.now = orch._now
        self.saga = saga
        self.saga_id = saga_id
        self.state = state
        self.claim: Claim | None = None
        self.version = 0
        self.log: list[SagaRecord] = []
        self.pending = JsonRecords()  # every record's data is built as JSON values here
        self.lock: asyncio.Lock | None = None
        self.stage = 0
        self.undo: dict[str, None] = {}  # compensatable steps to undo, in completion order
        self.done: set[str] = set()  # steps whose action completed
        self.compensated: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.past_pivot = False
        self.error: dict[str, str] | None = None
        self.decided: dict[str, str] | None = None  # a failure logged before a crash

    @classmethod
    def from_log(
        cls, orch: Orchestrator, saga: Saga[S], log: SagaLog, claim: Claim
    ) -> tuple[_Execution[S], bool]:
        """Rebuild an execution from a stored log; return it and whether it goes backward.

        A step started but never finished, or whose last attempt failed with an
        unknown outcome and was to be retried, may have taken effect: going
        forward it is run again (next attempt, same idempotency key), and if the
        saga turns back, now or later, it is compensated like a completed step.
        """
        execution = cls(orch, saga, log.saga_id, replay_state(saga, log.records))
        execution.claim = claim
        execution.version = log.version
        execution.log = list(log.records)
        in_flight: dict[str, None] = {}
        for record in log.records:
            execution._replay(record, in_flight)
        backward = log.status is SagaStatus.COMPENSATING
        # Whatever later attempts do, one that may have taken effect is on record:
        # if the saga turns back (now, or after a retry fails), the step is undone.
        for name in in_flight:
            if saga.plan(name).step.kind is StepKind.COMPENSATABLE:
                execution.undo.setdefault(name, None)
        stages = saga.stages
        while execution.stage < len(stages) and all(
            step.name in execution.done for step in stages[execution.stage]
        ):
            execution.stage += 1
        return execution, backward

    def _replay(self, record: SagaRecord, in_flight: dict[str, None]) -> None:
        kind, name, data = record.kind, record.step, record.data or {}
        if kind is RecordKind.STEP_STARTED and name:
            self.attempts[name] = max(self.attempts.get(name, 0), record.attempt)
            in_flight[name] = None
        elif kind is RecordKind.STEP_COMPLETED and name:
            in_flight.pop(name, None)
            self._finish_step(self.saga.plan(name).step, completed=True, uncertain=False)
        elif kind is RecordKind.STEP_FAILED and name:
            if data.get("final") or not data.get("uncertain"):
                # A retry pending after an attempt of unknown outcome stays "in
                # flight": going backward, the step is undone.
                in_flight.pop(name, None)
            if data.get("final"):
                uncertain = bool(data.get("uncertain"))
                self._finish_step(self.saga.plan(name).step, completed=False, uncertain=uncertain)
                cancelled = (data.get("error") or {}).get("type") == "CancelledError"
                if self.decided is None and not cancelled:
                    self.decided = {**data.get("error", {}), "step": name}
        elif kind is RecordKind.COMPENSATION_STARTED and name:
            key = f"{name}:compensate"
            self.attempts[key] = max(self.attempts.get(key, 0), record.attempt)
        elif kind in (RecordKind.COMPENSATION_COMPLETED, RecordKind.COMPENSATION_SKIPPED) and name:
            self.compensated.add(name)
        elif kind in (RecordKind.SAGA_COMPENSATING, RecordKind.SAGA_FAILED):
            self.error = data.get("error")
            self.decided = None
        elif kind is RecordKind.SAGA_RESUMED:
            self.decided = None

    # -- log writing -----------------------------------------------------------------

    def record(
        self,
        kind: RecordKind,
        step: str | None = None,
        attempt: int = 0,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        record = _new_record(SagaRecord, (kind, step, attempt, self.now(), data))
        self.pending.append(record)
        self.log.append(record)

    def flush(self) -> Awaitable[None]:
        """Make every pending record durable (in one store write)."""
        # A plain function returning the coroutine: one frame less on the hot path.
        return self._write() if self.lock is None else self._locked_write()

    def write_now(self) -> bool:
        """Write the pending records without suspending, if the store can; True if done.

        Hot paths call ``if not self.write_now(): await self.flush()``. Any error
        (a conflict, fencing, a closed store) is left to `flush`, which retries,
        reconciles or raises it: the direct write changes nothing when it fails.
        """
        store = self.direct
        if store is None or self.lock is not None:
            return False
        records = self.pending
        if not records:
            return True
        claim = self.claim
        if claim is not None:
            try:
                self.version = store._append_now(
                    self.saga_id, records, self.version, claim.fencing_token
                )
            except SagaflowError:
                return False
            records.clear()  # the memory store copied them
            return True
        if self.version:  # created before, then the lease was lost: flush raises
            return False
        orch = self.orch
        try:
            created = store._create_now(self.saga_id, records, owner=orch.owner, lease=orch.lease)
        except SagaflowError:
            return False
        self._created(created, len(records))
        records.clear()
        return True

    async def _locked_write(self) -> None:
        assert self.lock is not None
        async with self.lock:
            await self._write()

    async def _write(self) -> None:
        if not self.pending:
            return
        if self.claim is None:
            await self._create()
            return
        records, self.pending = self.pending, JsonRecords()
        token = self.claim.fencing_token
        started = self.orch._monotonic()
        try:
            self.version = await self.store.append(
                self.saga_id, records, expected_version=self.version, fencing_token=token
            )
        except StoreUnavailableError as exc:
            # Rare path: hand the write to the retrying loop.
            self.version = await self.orch._write(
                self.saga_id, records, self.version, token, failed=exc, started=started
            )
        except asyncio.CancelledError:
            # The write may or may not have happened: keep the records; the next
            # write finds out (see the ConcurrencyError branch) and sends the rest.
            self.pending[:0] = records
            raise
        except FencedError:
            raise
        except ConcurrencyError:
            rest = await self._unwritten(records)
            if rest:
                self.version = await self.store.append(
                    self.saga_id, rest, expected_version=self.version, fencing_token=token
                )

    async def _unwritten(self, records: JsonRecords) -> JsonRecords:
        """After a version conflict: which of ``records`` an interrupted write did not store.

        Raises:
            ConcurrencyError: Someone else wrote to the saga.
        """
        log = await self.store.load(self.saga_id)
        stored = log.records[self.version :]
        mine = [(r.kind, r.step, r.attempt, r.at) for r in records[: len(stored)]]
        if len(stored) > len(records) or mine != [
            (r.kind, r.step, r.attempt, r.at) for r in stored
        ]:
            raise ConcurrencyError(
                self.saga_id, expected_version=self.version, actual_version=log.version
            )
        self.version = log.version
        return JsonRecords(records[len(stored) :])

    def start(self) -> None:
        """Record the saga's start; it is created in the store with the first step's start."""
        self.record(
            RecordKind.SAGA_STARTED,
            data={
                "saga": self.saga.name,
                "version": self.saga.version,
                # model_dump(mode="json") without its keyword plumbing
                "state": self.state.__pydantic_serializer__.to_python(self.state, mode="json"),
            },
        )

    async def _create(self) -> None:
        if self.version:  # created before, then the lease was lost
            raise FencedError(self.saga_id, fencing_token=-1, current_token=-1)
        records, self.pending = self.pending, JsonRecords()
        claim = await self.store.create(
            self.saga_id, records, owner=self.orch.owner, lease=self.orch.lease
        )
        self._created(claim, len(records))

    def _created(self, claim: Claim, count: int) -> None:
        """Note that the store created the saga with its first ``count`` records."""
        self.claim = claim
        self.version = count
        hooks = self.orch.hooks
        if hooks.saga_started:
            fire(hooks.saga_started, self.saga_id, self.saga.name)

    # -- the run ---------------------------------------------------------------------

    async def run(self, deadline: float | None, *, backward: bool = False) -> SagaResult[S]:
        """Drive the saga to its end: forward, or (when resumed so) backward."""
        orch = self.orch
        orch._activate(self)
        try:
            if backward:
                status = await _shielded(self.undo_all())
            elif self.decided is not None:
                status = await _shielded(self.turn_back(self.decided))
            else:
                status = await self._forward_then_finish(deadline)
        finally:
            orch._active.pop(self.saga_id, None)
        return self.finish(status)

    def finish(self, status: SagaStatus) -> SagaResult[S]:
        """Build the result and tell the hooks."""
        result = SagaResult(
            saga_id=self.saga_id,
            saga_name=self.saga.name,
            status=status,
            state=self.state,
            records=tuple(self.log),
            error=self.error,
        )
        hooks = self.orch.hooks
        if hooks.saga_finished:
            fire(hooks.saga_finished, result)
        return result

    async def _forward_then_finish(self, deadline: float | None) -> SagaStatus:
        try:
            # Without a deadline, forward() would only call _stages(): skip its frame.
            failure = await (self._stages() if deadline is None else self.forward(deadline))
        except asyncio.CancelledError:
            cancelled = SagaCancelledError("the saga was cancelled", saga_id=self.saga_id)
            await _shielded(self.turn_back(_error_data(cancelled, None)))
            raise
        if failure is not None:
            status: SagaStatus = await _shielded(self.turn_back(_error_data(*failure)))
            return status
        self.record(RecordKind.SAGA_COMPLETED)
        if not self.write_now():
            await self.flush()
        return SagaStatus.COMPLETED

    async def forward(self, deadline: float | None) -> tuple[BaseException, str | None] | None:
        """Run the remaining stages; return (error, failed step) or None if all completed.

        ``deadline`` counts from the saga's start record, or from an operator's
        latest resume: a saga recovered after its worker stopped has only what
        is left of it, and none at all turns back at once, without running
        anything more; a parked saga an operator resumes gets the whole
        deadline again.
        """
        if deadline is None:
            return await self._stages()
        origin = next(
            (r.at for r in reversed(self.log) if r.kind is RecordKind.SAGA_RESUMED),
            self.log[0].at,
        )
        left = deadline - (self.orch.clock.now() - origin)
        try:
            if left <= 0:
                raise TimeoutError
            async with self.orch.clock.timeout(left):
                return await self._stages()
        except TimeoutError:
            error = SagaDeadlineExceededError(
                f"the saga did not finish within its deadline of {deadline} s",
                saga_id=self.saga_id,
            )
            return error, None

    async def _stages(self) -> tuple[BaseException, str | None] | None:
        saga = self.saga
        stages = saga.stages
        hooks = self.orch.hooks
        while self.stage < len(stages):
            stage = stages[self.stage]
            if len(stage) > 1:
                failure = await self.run_parallel(stage)
                if failure is not None:
                    return failure
            elif (step := stage[0]).timeout is None and step.action_is_async:
                # The usual step's first attempt runs here rather than in run_step:
                # a coroutine less per step on the hottest path of the library.
                # A failed first attempt is logged here and retried by run_step.
                name = step.name
                attempt = self.attempts.get(name, 0) + 1
                self.attempts[name] = attempt
                first_start = self.orch._monotonic()
                record = _new_record(SagaRecord, (_STARTED, name, attempt, self.now(), None))
                self.pending.append(record)
                self.log.append(record)
                if not self.write_now():
                    await self.flush()
                if hooks.step_started:
                    fire(hooks.step_started, self.saga_id, name, attempt)
                context = StepContext(self.saga_id, saga.name, name, attempt, self.state)
                try:
                    # action_is_async was checked above; mypy cannot narrow the union.
                    result = await step.action(context)  # type: ignore[misc]
                    self.state, updates = apply_result(self.state, result)
                except asyncio.CancelledError:
                    self._attempt_cancelled(step, attempt)
                    raise
                except Exception as exc:
                    uncertain = isinstance(exc, StepTimeoutError | SchemaError)
                    policy = saga.plan(name).retry
                    if not self._attempt_failed(step, policy, exc, attempt, uncertain, first_start):
                        # Returned straight from here: this frame is in the error's
                        # traceback, so a local naming the error would make a cycle.
                        return exc, name
                else:
                    self._step_completed(step, attempt, updates)
                    self.stage += 1
                    continue
                # Retried after the except block, so that the errors of later
                # attempts are not chained to this one.
                orch = self.orch
                await orch.clock.sleep(policy.delay(attempt, orch.rng))
                outcome = await self.run_step(
                    step, saga.plan(name), first_start=first_start, uncertain=uncertain
                )
                if outcome.error is not None:
                    return outcome.error, name
            else:
                outcome = await self.run_step(step, saga.plan(step.name))
                if outcome.error is not None:
                    return outcome.error, step.name
            self.stage += 1
        return None

    async def run_parallel(self, stage: tuple[Step, ...]) -> tuple[BaseException, str] | None:
        """Run branches concurrently; on the first failure cancel the rest."""
        if self.lock is None:
            self.lock = asyncio.Lock()
        snapshot = self.state
        branches = [step for step in stage if step.name not in self.done]
        # One write logs every branch as started before any of them runs.
        for step in branches:
            attempt = self.attempts.get(step.name, 0) + 1
            self.attempts[step.name] = attempt
            self.record(_STARTED, step.name, attempt)
        await self.flush()
        tasks = {
            asyncio.ensure_future(
                self.run_step(step, self.saga.plan(step.name), snapshot, logged=True)
            ): step
            for step in branches
        }
        failure: tuple[BaseException, str] | None = None
        try:
            pending = set(tasks)
            while pending and failure is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    outcome = task.result()
                    if outcome.error is not None and failure is None:
                        failure = (outcome.error, tasks[task].name)
        finally:
            # Reached on failure and on cancellation of the saga: stop the other branches
            # and wait for them, so each records whether its outcome is known.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return failure

    async def run_step(
        self,
        step: Step,
        plan: _Plan,
        snapshot: S | None = None,
        *,
        logged: bool = False,
        first_start: float | None = None,
        uncertain: bool = False,
    ) -> _StepOutcome:
        """Run a step's action under its retry policy; return its outcome.

        ``logged`` means the first attempt's STARTED record is already durable.
        ``first_start`` and ``uncertain`` carry over from attempts that ran
        elsewhere (`_stages` runs first attempts itself).
        """
        orch = self.orch
        hooks = orch.hooks
        clock = orch.clock
        policy = plan.retry
        name = step.name
        attempt = self.attempts.get(name, 0) + (0 if logged else 1)
        if first_start is None:
            first_start = orch._monotonic()
        log, now = self.log, self.now
        while True:
            if not logged:
                self.attempts[name] = attempt
                # record() inlined: this is the hottest loop of the library.
                record = _new_record(SagaRecord, (_STARTED, name, attempt, now(), None))
                self.pending.append(record)
                log.append(record)
                if not self.write_now():
                    await self.flush()
            logged = False
            if hooks.step_started:
                fire(hooks.step_started, self.saga_id, name, attempt)
            context = StepContext(
                self.saga_id,
                self.saga.name,
                name,
                attempt,
                snapshot if snapshot is not None else self.state,
            )
            try:
                if step.timeout is None:
                    result = await _call(step.action, step.action_is_async, context)
                else:
                    try:
                        async with clock.timeout(step.timeout):
                            result = await _call(step.action, step.action_is_async, context)
                    except TimeoutError:
                        raise StepTimeoutError(
                            f"step {name!r} attempt {attempt} exceeded {step.timeout} s",
                            saga_id=self.saga_id,
                            step=name,
                            attempt=attempt,
                        ) from None
                self.state, updates = apply_result(self.state, result)
            except asyncio.CancelledError:
                self._attempt_cancelled(step, attempt)
                raise
            except Exception as exc:
                uncertain = uncertain or isinstance(exc, StepTimeoutError | SchemaError)
                if not self._attempt_failed(step, policy, exc, attempt, uncertain, first_start):
                    return _StepOutcome(exc, uncertain)
                await clock.sleep(policy.delay(attempt, orch.rng))
                attempt += 1
                continue
            self._step_completed(step, attempt, updates)
            return _OK

    def _step_completed(self, step: Step, attempt: int, updates: Any) -> None:
        """Log an attempt that completed (sent with the next write) and tell the hooks."""
        name = step.name
        data = {"updates": updates} if updates else None
        record = _new_record(SagaRecord, (_COMPLETED, name, attempt, self.now(), data))
        self.pending.append(record)
        self.log.append(record)
        self._finish_step(step, completed=True, uncertain=False)
        hooks = self.orch.hooks
        if hooks.step_succeeded:
            fire(hooks.step_succeeded, self.saga_id, name, attempt)

    def _attempt_failed(
        self,
        step: Step,
        policy: RetryPolicy,
        error: Exception,
        attempt: int,
        uncertain: bool,
        first_start: float,
    ) -> bool:
        """Log a failed attempt and tell the hooks; return whether to try again.

        A final failure also notes the step as finished (to undo if ``uncertain``).
        A state that does not validate is never retried: the action would return
        the same.
        """
        orch = self.orch
        name = step.name
        elapsed = orch._monotonic() - first_start
        retry = not isinstance(error, SchemaError) and policy.should_retry(
            error, attempt=attempt, elapsed=elapsed
        )
        self.record(
            _FAILED,
            name,
            attempt,
            {"error": error_info(error), "uncertain": uncertain, "final": not retry},
        )
        if orch.hooks.step_failed:
            fire(orch.hooks.step_failed, self.saga_id, name, attempt, error, retry)
        if not retry:
            self._finish_step(step, completed=False, uncertain=uncertain)
        return retry

    def _attempt_cancelled(self, step: Step, attempt: int) -> None:
        """Log an attempt cancelled mid-flight: its effect may have happened, so undo it later."""
        self.record(
            _FAILED, step.name, attempt, {"error": _CANCELLED, "uncertain": True, "final": True}
        )
        self._finish_step(step, completed=False, uncertain=True)

    def _finish_step(self, step: Step, *, completed: bool, uncertain: bool) -> None:
        """Note a finished step: it must be undone if it completed or may have.

        A pivot whose outcome is unknown does not count as passed: the saga turns
        back, which is why a pivot should be idempotent and generously retried.
        """
        if completed:
            self.done.add(step.name)
            if step.kind is StepKind.PIVOT:
                self.past_pivot = True
        if (completed or uncertain) and step.kind is StepKind.COMPENSATABLE:
            self.undo.setdefault(step.name, None)

    # -- turning back ----------------------------------------------------------------

    async def turn_back(self, error: dict[str, str]) -> SagaStatus:
        """Compensate everything done (or park the saga past the pivot)."""
        self.error = error
        if self.past_pivot:
            return await self.park(error)
        self.record(RecordKind.SAGA_COMPENSATING, data={"error": dict(error)})
        return await self.undo_all()

    async def undo_all(self) -> SagaStatus:
        """Run the outstanding compensations, newest first, then finish."""
        for name in reversed(list(self.undo)):
            if name in self.compensated:
                continue
            failure = await self.compensate(self.saga.plan(name))
            if failure is not None:
                return await self.park({**error_info(failure), "step": name})
        self.record(RecordKind.SAGA_COMPENSATED)
        if not self.write_now():
            await self.flush()
        return SagaStatus.COMPENSATED

    async def park(self, error: dict[str, str]) -> SagaStatus:
        """Park the saga as FAILED for an operator, and free it for them."""
        self.error = error
        self.record(RecordKind.SAGA_FAILED, data={"error": dict(error)})
        await self.flush()
        if self.claim is not None:  # parking is rare: the extra write is cheap here
            await self.store.release(self.saga_id, fencing_token=self.claim.fencing_token)
        return SagaStatus.FAILED

    async def compensate(self, plan: _Plan) -> BaseException | None:
        """Run one compensation under its retry policy; return the final error, if any."""
        step = plan.step
        assert step.compensate is not None  # guaranteed by Step for compensatable steps
        orch = self.orch
        hooks = orch.hooks
        clock = orch.clock
        policy = plan.compensation_retry
        key = f"{step.name}:compensate"
        attempt = self.attempts.get(key, 0) + 1
        first_start = orch._monotonic()
        while True:
            self.attempts[key] = attempt
            self.record(RecordKind.COMPENSATION_STARTED, step.name, attempt)
            if not self.write_now():
                await self.flush()
            if hooks.compensation_started:
                fire(hooks.compensation_started, self.saga_id, step.name, attempt)
            context = StepContext(
                self.saga_id, self.saga.name, step.name, attempt, self.state, compensating=True
            )
            try:
                if step.compensation_timeout is not None:
                    result = await self._compensate_within_timeout(step, context)
                elif step.compensate_is_async:  # the usual case: one coroutine less
                    result = await step.compensate(context)  # type: ignore[misc]
                else:
                    result = await _call(step.compensate, False, context)
                self.state, updates = apply_result(self.state, result)
            except Exception as exc:
                elapsed = orch._monotonic() - first_start
                retry = policy.should_retry(exc, attempt=attempt, elapsed=elapsed)
                self.record(
                    RecordKind.COMPENSATION_FAILED,
                    step.name,
                    attempt,
                    {"error": error_info(exc), "final": not retry},
                )
                if hooks.compensation_failed:
                    fire(hooks.compensation_failed, self.saga_id, step.name, attempt, exc, retry)
                if not retry:
                    return exc
                await clock.sleep(policy.delay(attempt, orch.rng))
                attempt += 1
                continue
            self.record(
                RecordKind.COMPENSATION_COMPLETED,
                step.name,
                attempt,
                {"updates": updates} if updates else None,
            )
            self.compensated.add(step.name)
            if hooks.step_compensated:
                fire(hooks.step_compensated, self.saga_id, step.name, attempt)
            return None

    async def _compensate_within_timeout(self, step: Step, context: StepContext[S]) -> StepResult:
        """Run one attempt of a compensation that has a timeout of its own.

        Raises:
            StepTimeoutError: The attempt exceeded ``step.compensation_timeout``.
        """
        assert step.compensate is not None
        assert step.compensation_timeout is not None
        try:
            async with self.orch.clock.timeout(step.compensation_timeout):
                return await _call(step.compensate, step.compensate_is_async, context)
        except TimeoutError:
            raise StepTimeoutError(
                f"compensation of step {step.name!r} attempt {context.attempt} exceeded "
                f"{step.compensation_timeout} s",
                saga_id=self.saga_id,
                step=step.name,
                attempt=context.attempt,
            ) from None


_CANCELLED = {"type": "CancelledError", "message": "the attempt was cancelled"}


def _error_data(error: BaseException, step: str | None) -> dict[str, str]:
    return {**error_info(error), "step": step or ""}


async def _call(fn: Any, is_async: bool, context: StepContext[Any]) -> StepResult:
    if is_async:
        result: StepResult = await fn(context)
        return result
    return await asyncio.to_thread(fn, context)


async def _shielded(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion even if the calling task is cancelled meanwhile.

    Compensations must finish: a second cancellation while they run is absorbed
    and re-raised once they are done. They run in a task of their own, which is
    what shields them; the task starts eagerly (see `start_eagerly`), so
    compensations that finish without suspending (in-memory stores, quick
    services) cost no trip through the event loop.
    """
    task = start_eagerly(coro)
    if task.done():
        return task.result()
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result
