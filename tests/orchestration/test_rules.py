"""Rules of the Orchestrator that the other test files leave unexercised.

Step results of the wrong shape, sync compensations, hooks, definition checks,
recovery edge cases (deadlines, decided failures, steps in flight while going
backward), workers, store trouble and cancellation while compensations finish.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from types import MappingProxyType

import pytest
from pydantic import BaseModel

from sagaflow import (
    MemorySagaStore,
    Orchestrator,
    Parallel,
    RecordKind,
    RetryPolicy,
    Saga,
    SagaHooks,
    SagaStatus,
    Step,
    StepKind,
)
from sagaflow.errors import (
    ConcurrencyError,
    DefinitionMismatchError,
    FencedError,
    NonRetryableError,
    SagaAlreadyExistsError,
    StoreUnavailableError,
)
from sagaflow.testing.clock import FakeClock
from sagaflow.testing.crash import CrashingStore, SimulatedCrash

from ._support import nothing, raising, turned_back_on

NO_RETRY = RetryPolicy.no_retry()
FAST = RetryPolicy(max_attempts=3, initial_delay=0, jitter=False)
STORE_RETRY = RetryPolicy(max_attempts=3, initial_delay=0, retry_on=(StoreUnavailableError,))


class Order(BaseModel):
    order_id: str = "o"
    reserved: bool = False
    charged: bool = False
    notes: list[str] = []


class Invoice(BaseModel):
    order_id: str = "o"


def returning(value):
    async def action(ctx):
        return value

    return action


class Calls:
    """Records which actions and compensations ran, in order."""

    def __init__(self):
        self.calls: list[str] = []

    def action(self, name, updates=None):
        async def run(ctx):
            self.calls.append(name)
            return updates

        return run


def kinds(records, step=None):
    return [r.kind for r in records if step is None or r.step == step]


# -- what a step may return -------------------------------------------------------------


@pytest.mark.parametrize("step_timeout", [None, 30.0], ids=["inline", "run_step"])
@pytest.mark.parametrize(
    ("returned", "message"),
    [
        (Invoice(), "step returned a Invoice, expected Order"),
        (
            ["reserved"],
            "step returned list; return a mapping of state updates, a Order, or None",
        ),
        (42, "step returned int; return a mapping of state updates, a Order, or None"),
    ],
    ids=["other-model", "list", "int"],
)
async def test_a_step_result_of_the_wrong_type_turns_the_saga_back(returned, message, step_timeout):
    calls = Calls()
    saga = Saga(
        "s",
        state=Order,
        retry=FAST,  # a SchemaError is never retried: the action would return the same
        steps=[
            Step("a", calls.action("a", {"reserved": True}), compensate=calls.action("undo_a")),
            Step(
                "b",
                returning(returned),
                compensate=calls.action("undo_b"),
                timeout=step_timeout,
            ),
            Step("c", calls.action("c"), compensate=calls.action("undo_c")),
        ],
    )
    store = MemorySagaStore()
    result = await Orchestrator(store).run(saga, Order(), saga_id="w")
    assert result.status is SagaStatus.COMPENSATED
    assert result.error == {"type": "SchemaError", "message": message, "step": "b"}
    assert await turned_back_on(store, "w") == result.error
    # b ran (its effect may have happened), so it is undone too, before a
    assert calls.calls == ["a", "undo_b", "undo_a"]
    assert kinds(result.records, "b") == [
        RecordKind.STEP_STARTED,
        RecordKind.STEP_FAILED,
        RecordKind.COMPENSATION_STARTED,
        RecordKind.COMPENSATION_COMPLETED,
    ]
    failed = next(r for r in result.records if r.kind is RecordKind.STEP_FAILED)
    assert failed.attempt == 1
    assert failed.data == {
        "error": {"type": "SchemaError", "message": message},
        "uncertain": True,
        "final": True,
    }


async def test_a_step_may_return_any_mapping_of_updates():
    saga = Saga(
        "s",
        state=Order,
        steps=[
            Step("a", returning(MappingProxyType({"reserved": True})), compensate=nothing),
        ],
    )
    result = await Orchestrator().run(saga, Order())
    assert result.status is SagaStatus.COMPLETED
    assert result.state == Order(reserved=True)
    done = next(r for r in result.records if r.kind is RecordKind.STEP_COMPLETED)
    assert done.data == {"updates": {"reserved": True}}


@pytest.mark.parametrize("step_timeout", [None, 30.0], ids=["inline", "run_step"])
async def test_a_step_returning_an_empty_dict_changes_nothing(step_timeout):
    initial = Order(order_id="x", notes=["kept"])
    saga = Saga(
        "s",
        state=Order,
        steps=[Step("a", returning({}), compensate=nothing, timeout=step_timeout)],
    )
    result = await Orchestrator().run(saga, initial)
    assert result.status is SagaStatus.COMPLETED
    assert result.state is initial  # not even rebuilt: there was nothing to apply
    done = next(r for r in result.records if r.kind is RecordKind.STEP_COMPLETED)
    assert done.data is None  # logged exactly like a step returning None


# -- compensations ----------------------------------------------------------------------


@pytest.mark.parametrize("step_timeout", [None, 30.0], ids=["no-timeout", "with-timeout"])
async def test_a_sync_compensation_runs_off_the_event_loop(step_timeout):
    loop_thread = threading.get_ident()
    seen = []

    def release(ctx):  # a blocking client: must not run on the loop's thread
        seen.append((ctx.step, ctx.compensating, threading.get_ident()))
        return {"reserved": False}

    saga = Saga(
        "s",
        state=Order,
        retry=NO_RETRY,
        steps=[
            Step(
                "a",
                returning({"reserved": True}),
                compensate=release,
                compensation_timeout=step_timeout,
            ),
            Step("b", raising(ValueError, "no stock"), compensate=nothing),
        ],
    )
    result = await Orchestrator().run(saga, Order())
    assert result.status is SagaStatus.COMPENSATED
    assert result.compensated_steps() == ["a"]
    assert result.state.reserved is False
    [(step, compensating, thread)] = seen
    assert (step, compensating) == ("a", True)
    assert thread != loop_thread
    undone = next(r for r in result.records if r.kind is RecordKind.COMPENSATION_COMPLETED)
    assert undone.data == {"updates": {"reserved": False}}


async def test_the_compensation_failed_hook_sees_every_failed_attempt():
    events = []

    class Recorder(SagaHooks):
        def compensation_started(self, saga_id, step, attempt):
            events.append(("started", step, attempt))

        def compensation_failed(self, saga_id, step, attempt, error, will_retry):
            events.append(("failed", step, attempt, str(error), will_retry))

        def step_compensated(self, saga_id, step, attempt):
            events.append(("compensated", step, attempt))

    attempts = []

    async def refund(ctx):
        attempts.append(ctx.attempt)
        raise RuntimeError(f"refund down ({ctx.attempt})")

    saga = Saga(
        "s",
        state=Order,
        retry=NO_RETRY,
        compensation_retry=RetryPolicy(max_attempts=2, initial_delay=0),
        steps=[
            Step("a", nothing, compensate=nothing),
            Step("b", nothing, compensate=refund),
            Step("c", raising(ValueError, "no stock"), compensate=nothing),
        ],
    )
    result = await Orchestrator(hooks=[Recorder()]).run(saga, Order(), saga_id="h")
    assert result.status is SagaStatus.FAILED
    assert events == [
        ("started", "b", 1),
        ("failed", "b", 1, "refund down (1)", True),
        ("started", "b", 2),
        ("failed", "b", 2, "refund down (2)", False),
    ]
    assert result.error == {"type": "RuntimeError", "message": "refund down (2)", "step": "b"}
    failed = [r for r in result.records if r.kind is RecordKind.COMPENSATION_FAILED]
    assert [(r.attempt, r.data["final"]) for r in failed] == [(1, False), (2, True)]


@pytest.mark.parametrize("step_timeout", [None, 30.0], ids=["inline", "run_step"])
async def test_step_hooks_see_each_attempt_start_and_succeed(step_timeout):
    events = []

    class Recorder(SagaHooks):
        def step_started(self, saga_id, step, attempt):
            events.append(("started", step, attempt))

        def step_failed(self, saga_id, step, attempt, error, will_retry):
            events.append(("failed", step, attempt, will_retry))

        def step_succeeded(self, saga_id, step, attempt):
            events.append(("succeeded", step, attempt))

    async def flaky(ctx):
        if ctx.attempt == 1:
            raise RuntimeError("blip")

    saga = Saga(
        "s",
        state=Order,
        retry=FAST,
        steps=[
            Step("a", nothing, compensate=nothing, timeout=step_timeout),
            Step("b", flaky, compensate=nothing, timeout=step_timeout),
        ],
    )
    result = await Orchestrator(hooks=[Recorder()]).run(saga, Order())
    assert result.status is SagaStatus.COMPLETED
    assert events == [
        ("started", "a", 1),
        ("succeeded", "a", 1),
        ("started", "b", 1),
        ("failed", "b", 1, True),
        ("started", "b", 2),
        ("succeeded", "b", 2),
    ]


# -- results and definitions ------------------------------------------------------------


def parked_saga(version=1, name="order"):
    return Saga(
        name,
        state=Order,
        version=version,
        retry=NO_RETRY,
        compensation_retry=NO_RETRY,
        steps=[
            Step("a", nothing, compensate=raising(RuntimeError, "refund down")),
            Step("b", raising(ValueError, "no stock"), compensate=nothing),
        ],
    )


async def test_result_and_resume_refuse_a_log_of_another_definition():
    store = MemorySagaStore()
    orchestrator = Orchestrator(store)
    parked = await orchestrator.run(parked_saga(), Order(), saga_id="p")
    assert parked.status is SagaStatus.FAILED
    before = await store.load("p")
    for other, key in ((parked_saga(version=2), "order@2"), (parked_saga(name="cart"), "cart@1")):
        with pytest.raises(DefinitionMismatchError) as caught:
            await orchestrator.result(other, "p")
        error = caught.value
        assert (error.saga_id, error.expected, error.actual) == ("p", "order@1", key)
        assert str(error) == (
            f"saga 'p' was written by definition order@1, not {key}; "
            "run it with the order@1 definition"
        )
        with pytest.raises(DefinitionMismatchError, match="written by definition order@1"):
            await orchestrator.resume(other, "p")
    after = await store.load("p")
    assert after.records == before.records  # nothing resumed, nothing written
    assert after.owner is None  # and no lease taken


async def test_result_rebuilds_the_error_from_the_log():
    store = MemorySagaStore()
    orchestrator = Orchestrator(store)
    saga = parked_saga()
    compensated = Saga(
        "order",
        state=Order,
        retry=NO_RETRY,
        steps=[Step("b", raising(ValueError, "no stock"), compensate=nothing)],
    )
    ran = await orchestrator.run(compensated, Order(), saga_id="c")
    again = await orchestrator.result(compensated, "c")
    assert again.status is SagaStatus.COMPENSATED
    assert again.error == ran.error == {"type": "ValueError", "message": "no stock", "step": "b"}
    # Parked while compensating: the log holds both reasons; the latest one wins.
    ran = await orchestrator.run(saga, Order(), saga_id="p")
    again = await orchestrator.result(saga, "p")
    assert again.status is SagaStatus.FAILED
    assert again.error == ran.error
    assert again.error == {"type": "RuntimeError", "message": "refund down", "step": "a"}
    assert again.records == ran.records


async def test_run_does_not_take_a_conflict_on_another_id_for_its_own_saga():
    class Namespaced(MemorySagaStore):
        """Reports a conflict on its internal key, not on the id asked for."""

        async def create(self, saga_id, records, **kw):
            raise SagaAlreadyExistsError(f"tenant-1/{saga_id}")

    with pytest.raises(SagaAlreadyExistsError) as caught:
        await Orchestrator(Namespaced()).run(parked_saga(), Order(), saga_id="n")
    assert caught.value.saga_id == "tenant-1/n"


# -- recovery ---------------------------------------------------------------------------


class Ledger:
    """Services that log every call; ``broken`` ones raise."""

    def __init__(self):
        self.calls: list[str] = []
        self.broken: set[str] = set()

    def action(self, name):
        async def run(ctx):
            self.calls.append(name)
            if name in self.broken:
                raise RuntimeError(f"{name} is down")

        return run


async def crash_run(store, saga, *, crash_at, after, clock=None, saga_id="s1"):
    crashing = CrashingStore(store, crash_at=crash_at, after=after)
    orchestrator = Orchestrator(crashing, lease=0.0, owner="dead", clock=clock)
    with pytest.raises(SimulatedCrash):
        await orchestrator.run(saga, Order(), saga_id=saga_id)
    await orchestrator.close()


def two_steps(ledger, *, deadline=None, hang=None):
    async def b(ctx):
        ledger.calls.append("b")
        if hang is not None:
            await hang()

    return Saga(
        "order",
        state=Order,
        deadline=deadline,
        retry=NO_RETRY,
        compensation_retry=NO_RETRY,
        steps=[
            Step("a", ledger.action("a"), compensate=ledger.action("undo_a")),
            Step("b", b, compensate=ledger.action("undo_b")),
        ],
    )


async def test_recovery_tells_the_hooks_the_saga_started_again():
    events = []

    class Recorder(SagaHooks):
        def saga_started(self, saga_id, saga_name):
            events.append(("started", saga_id, saga_name))

        def saga_finished(self, result):
            events.append(("finished", result.saga_id, result.status))

    store = MemorySagaStore()
    saga = two_steps(Ledger())
    await crash_run(store, saga, crash_at=2, after=True)  # b started, never finished
    report = await Orchestrator(store, sagas=[saga], hooks=[Recorder()]).recover()
    assert [r.status for r in report.finished] == [SagaStatus.COMPLETED]
    assert events == [("started", "s1", "order"), ("finished", "s1", SagaStatus.COMPLETED)]


@pytest.mark.parametrize(
    ("down_for", "stopped", "calls"),
    [
        (60, [100], ["a", "b", "undo_b", "undo_a"]),  # b retried, cut off at t=100
        (150, [], ["a", "undo_b", "undo_a"]),  # already past: nothing more runs
    ],
)
async def test_a_recovered_saga_keeps_the_deadline_counted_from_its_start(down_for, stopped, calls):
    clock = FakeClock(auto_advance=True)
    store = MemorySagaStore(clock=clock)
    ledger = Ledger()

    stopped_at = []

    async def hang():
        try:
            await clock.sleep(10_000)
        finally:
            stopped_at.append(clock.monotonic())

    saga = two_steps(ledger, deadline=100, hang=hang)
    await crash_run(store, saga, crash_at=2, after=True, clock=clock)  # b in flight
    await clock.advance(down_for)  # the worker was down this long
    report = await Orchestrator(store, sagas=[saga], clock=clock).recover()
    [result] = report.finished
    assert result.status is SagaStatus.COMPENSATED
    assert result.error == {
        "type": "SagaDeadlineExceededError",
        "message": "the saga did not finish within its deadline of 100 s",
        "step": "",
    }
    # The deadline counts from the saga's start, not from the recovery; one
    # already past turns the saga back at once, b (outcome unknown) undone.
    assert stopped_at == [pytest.approx(t) for t in stopped]
    assert ledger.calls == calls


async def test_a_step_in_flight_at_the_crash_is_undone_even_if_its_retry_fails_cleanly():
    # b's attempt 1 was in flight when the worker died: it may have taken effect.
    # Its retry fails without effect, but that does not undo attempt 1's.
    store = MemorySagaStore()
    ledger = Ledger()

    async def declined():
        raise NonRetryableError("card declined")

    saga = two_steps(ledger, hang=declined)
    await crash_run(store, saga, crash_at=2, after=True)  # b in flight
    report = await Orchestrator(store, sagas=[saga]).recover()
    [result] = report.finished
    assert result.status is SagaStatus.COMPENSATED
    assert ledger.calls == ["a", "b", "undo_b", "undo_a"]
    assert result.compensated_steps() == ["b", "a"]


def parallel_saga(ledger, *, kind=StepKind.COMPENSATABLE):
    """A group whose branch x fails for good while y fails once and retries."""

    async def y(ctx):
        ledger.calls.append(f"y{ctx.attempt}")
        if ctx.attempt == 1:
            raise RuntimeError("y blipped")

    def branch(name, action):
        if kind is StepKind.COMPENSATABLE:
            return Step(name, action, compensate=ledger.action(f"undo_{name}"), retry=FAST)
        return Step(name, action, kind=kind, retry=FAST)

    first = (
        Step("a", ledger.action("a"), compensate=ledger.action("undo_a"))
        if kind is StepKind.COMPENSATABLE
        else Step("a", ledger.action("a"), kind=StepKind.PIVOT)
    )
    return Saga(
        "order",
        state=Order,
        compensation_retry=NO_RETRY,
        steps=[
            first,
            Parallel(
                "g",
                branch("x", raising(NonRetryableError, "card declined")),
                branch("y", y),
            ),
        ],
    )


async def crash_after_the_failure_is_logged(store, saga):
    """Crash right after y's retry wrote x's final failure, before the turn-back."""
    # Writes: 1 create (a started), 2 a completed + x, y started, 3 y's retry.
    await crash_run(store, saga, crash_at=3, after=True)
    log = await store.load("s1")
    assert log.status is SagaStatus.RUNNING
    assert kinds(log.records)[-3:] == [
        RecordKind.STEP_FAILED,
        RecordKind.STEP_FAILED,
        RecordKind.STEP_STARTED,
    ]
    assert [(r.step, r.attempt, r.data["final"]) for r in log.records[-3:-1]] == [
        ("x", 1, True),
        ("y", 1, False),
    ]


async def test_recovery_turns_back_on_a_failure_logged_before_the_crash():
    store = MemorySagaStore()
    await crash_after_the_failure_is_logged(store, parallel_saga(Ledger()))
    ledger = Ledger()
    saga = parallel_saga(ledger)
    report = await Orchestrator(store, sagas=[saga]).recover()
    [result] = report.finished
    assert result.status is SagaStatus.COMPENSATED
    # x is not tried again: its failure was final; the saga turns back on it.
    assert "x" not in ledger.calls and "y2" not in ledger.calls
    assert await turned_back_on(store, "s1") == {
        "type": "NonRetryableError",
        "message": "card declined",
        "step": "x",
    }
    assert result.error == await turned_back_on(store, "s1")
    assert "undo_a" in ledger.calls and "undo_x" not in ledger.calls
    recovered = kinds(result.records).index(RecordKind.SAGA_RECOVERED)
    assert kinds(result.records)[recovered + 1] is RecordKind.SAGA_COMPENSATING


async def test_recovery_parks_a_saga_whose_logged_failure_is_past_the_pivot():
    store = MemorySagaStore()
    await crash_after_the_failure_is_logged(store, parallel_saga(Ledger(), kind=StepKind.RETRIABLE))
    ledger = Ledger()
    saga = parallel_saga(ledger, kind=StepKind.RETRIABLE)
    report = await Orchestrator(store, sagas=[saga]).recover()
    [result] = report.finished
    assert result.status is SagaStatus.FAILED
    assert result.error == {"type": "NonRetryableError", "message": "card declined", "step": "x"}
    assert ledger.calls == []  # parked for an operator: nothing ran
    assert kinds(result.records)[-2:] == [RecordKind.SAGA_RECOVERED, RecordKind.SAGA_FAILED]


async def test_recovery_turning_back_on_a_logged_failure_undoes_branches_in_flight():
    store = MemorySagaStore()
    await crash_after_the_failure_is_logged(store, parallel_saga(Ledger()))
    ledger = Ledger()
    report = await Orchestrator(store, sagas=[parallel_saga(ledger)]).recover()
    [result] = report.finished
    assert result.status is SagaStatus.COMPENSATED
    # y's second attempt was logged as started before the crash: it may have
    # taken effect, and the saga goes backward, so it must be compensated.
    assert ledger.calls == ["undo_y", "undo_a"]
    assert result.compensated_steps() == ["y", "a"]


async def test_recovery_turning_back_undoes_a_branch_whose_uncertain_attempt_awaits_its_retry():
    # As above, but y's first attempt timed out (outcome unknown) and the crash
    # came before its retry was logged as started: y may have taken effect.
    crashed = MemorySagaStore()
    await crash_after_the_failure_is_logged(crashed, parallel_saga(Ledger()))
    records = list((await crashed.load("s1")).records)[:-1]  # drop y's retry start
    y_failed = records[-1]
    assert (y_failed.kind, y_failed.step) == (RecordKind.STEP_FAILED, "y")
    records[-1] = y_failed._replace(
        data={
            **y_failed.data,
            "error": {"type": "StepTimeoutError", "message": "slow"},
            "uncertain": True,
        }
    )
    store = MemorySagaStore()
    await store.create("s1", records, owner="dead", lease=0.0)
    ledger = Ledger()
    report = await Orchestrator(store, sagas=[parallel_saga(ledger)]).recover()
    [result] = report.finished
    assert result.status is SagaStatus.COMPENSATED
    assert ledger.calls == ["undo_y", "undo_a"]


async def test_a_saga_recovered_while_compensating_undoes_steps_in_flight():
    # The caller cancels while the write logging b's start hangs after committing;
    # then the worker dies in a's compensation. b never ran, but the log only
    # says it started: going backward, it is compensated like a completed step.
    entered = asyncio.Event()

    class HangsAfterCommit(MemorySagaStore):
        appends = 0

        async def append(self, saga_id, records, **kw):
            HangsAfterCommit.appends += 1
            version = await super().append(saga_id, records, **kw)
            if HangsAfterCommit.appends == 1:
                entered.set()
                await asyncio.Event().wait()  # until cancelled
            return version

    ledger = Ledger()
    undo_a_crashes = True

    async def undo_a(ctx):
        ledger.calls.append("undo_a")
        if undo_a_crashes:
            raise SimulatedCrash("the worker died while undoing a")

    saga = Saga(
        "order",
        state=Order,
        compensation_retry=NO_RETRY,
        steps=[
            Step("a", ledger.action("a"), compensate=undo_a),
            Step("b", ledger.action("b"), compensate=ledger.action("undo_b")),
        ],
    )
    store = HangsAfterCommit()
    first = Orchestrator(store, lease=0.0)
    task = asyncio.ensure_future(first.run(saga, Order(), saga_id="s1"))
    await entered.wait()
    task.cancel()
    with pytest.raises(SimulatedCrash):
        await task
    await first.close()
    log = await store.load("s1")
    assert log.status is SagaStatus.COMPENSATING
    assert kinds(log.records, "b") == [RecordKind.STEP_STARTED]  # b: outcome unknown
    assert ledger.calls == ["a", "undo_a"]

    undo_a_crashes = False
    report = await Orchestrator(store, sagas=[saga]).recover()
    [result] = report.finished
    assert result.status is SagaStatus.COMPENSATED
    assert ledger.calls == ["a", "undo_a", "undo_b", "undo_a"]
    assert result.compensated_steps() == ["b", "a"]
    assert (await turned_back_on(store, "s1"))["type"] == "SagaCancelledError"


async def test_recover_reports_a_saga_whose_recovery_failed_and_retries_it_later():
    class LoadFailsOnce(MemorySagaStore):
        failed = False

        async def load(self, saga_id):
            if saga_id == "s2" and not LoadFailsOnce.failed:
                LoadFailsOnce.failed = True
                raise StoreUnavailableError("connection reset")
            return await super().load(saga_id)

    store = LoadFailsOnce()
    saga = two_steps(Ledger())
    for saga_id in ("s1", "s2"):
        await crash_run(store, saga, crash_at=2, after=True, saga_id=saga_id)
    worker = Orchestrator(store, sagas=[saga], lease=0.0)
    report = await worker.recover()
    assert [r.saga_id for r in report.finished] == ["s1"]
    assert report.refused == []
    [(saga_id, error)] = report.errors
    assert saga_id == "s2"
    assert isinstance(error, StoreUnavailableError) and str(error) == "connection reset"
    assert (await store.load("s2")).status is SagaStatus.RUNNING
    report = await worker.recover()  # its lease lapsed: claimed again
    assert [(r.saga_id, r.status) for r in report.finished] == [("s2", SagaStatus.COMPLETED)]


async def test_an_operator_resume_resets_the_recovery_count():
    crashes = 3

    async def kills_its_worker(ctx):
        nonlocal crashes
        if crashes:
            crashes -= 1
            raise SimulatedCrash("this step kills its worker")

    saga = Saga("order", state=Order, steps=[Step("a", kills_its_worker, compensate=nothing)])
    store = MemorySagaStore()
    with pytest.raises(SimulatedCrash):  # crash 1: the first run
        await Orchestrator(store, lease=0.0).run(saga, Order(), saga_id="s1")
    worker = Orchestrator(store, sagas=[saga], lease=0.0, max_recoveries=1)
    with pytest.raises(SimulatedCrash):  # crash 2: the first recovery
        await worker.recover()
    [parked] = (await worker.recover()).finished  # over the limit: parked
    assert parked.status is SagaStatus.FAILED
    assert parked.error["type"] == "RecoveryLimitExceeded"
    with pytest.raises(SimulatedCrash):  # crash 3: the operator's resume
        await worker.resume(saga, "s1")
    # Counted again from the resume: one recovery is allowed, and it finishes.
    [result] = (await worker.recover()).finished
    assert result.status is SagaStatus.COMPLETED
    recovered = [r.data["count"] for r in result.records if r.kind is RecordKind.SAGA_RECOVERED]
    assert recovered == [1, 1]


async def test_a_failed_lease_renewal_is_retried_at_the_next_heartbeat(caplog):
    clock = FakeClock(auto_advance=True)
    renewed_again = asyncio.Event()

    class RenewFailsOnce(MemorySagaStore):
        renewals = 0

        async def renew(self, **kw):
            RenewFailsOnce.renewals += 1
            if RenewFailsOnce.renewals == 1:
                raise StoreUnavailableError("connection reset")
            renewed = await super().renew(**kw)
            renewed_again.set()
            return renewed

    store = RenewFailsOnce(clock=clock)

    woke_at = []

    async def long_step(ctx):
        await renewed_again.wait()
        woke_at.append(clock.monotonic())

    saga = Saga("s", state=Order, steps=[Step("a", long_step, compensate=nothing)])
    caplog.set_level(logging.WARNING, logger="sagaflow.orchestration")
    orchestrator = Orchestrator(store, clock=clock, lease=3.0)
    result = await orchestrator.run(saga, Order(), saga_id="r")
    await orchestrator.close()
    assert result.status is SagaStatus.COMPLETED
    # Heartbeats every lease / 3 = 1 s: the first renewal failed, the second held.
    assert RenewFailsOnce.renewals == 2
    assert woke_at == [pytest.approx(2.0)]
    assert [r.getMessage() for r in caplog.records] == ["lease renewal failed; retrying"]


# -- workers ----------------------------------------------------------------------------


class Finished(SagaHooks):
    def __init__(self):
        self.results = []
        self.event = asyncio.Event()

    def saga_finished(self, result):
        self.results.append(result)
        self.event.set()


async def test_a_worker_keeps_polling_while_the_store_is_unavailable(caplog):
    class ClaimFailsTwice(MemorySagaStore):
        claims = 0

        async def claim(self, **kw):
            ClaimFailsTwice.claims += 1
            if ClaimFailsTwice.claims <= 2:
                raise StoreUnavailableError("database restarting")
            return await super().claim(**kw)

    store = ClaimFailsTwice()
    saga = two_steps(Ledger())
    await crash_run(store, saga, crash_at=2, after=True)
    finished = Finished()
    worker = Orchestrator(store, sagas=[saga], hooks=[finished], owner="w")
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="sagaflow.orchestration")
    task = asyncio.ensure_future(worker.work(poll_interval=0.001, stop=stop))
    await asyncio.wait_for(finished.event.wait(), 30)
    stop.set()
    await asyncio.wait_for(task, 30)
    assert [(r.saga_id, r.status) for r in finished.results] == [("s1", SagaStatus.COMPLETED)]
    assert ClaimFailsTwice.claims >= 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings.count("worker w: store unavailable; will retry") == 2


async def test_a_worker_logs_sagas_it_could_not_recover(caplog):
    class LoadFails(MemorySagaStore):
        async def load(self, saga_id):
            if saga_id == "broken":
                raise StoreUnavailableError("disk full")
            return await super().load(saga_id)

    store = LoadFails()
    ledger = Ledger()
    await crash_run(store, two_steps(ledger), crash_at=2, after=True, saga_id="old")
    await crash_run(store, two_steps(ledger), crash_at=2, after=True, saga_id="broken")
    saga_v2 = Saga("order", state=Order, version=2, steps=[Step("a", nothing, compensate=nothing)])
    worker = Orchestrator(store, sagas=[saga_v2], owner="w")
    caplog.set_level(logging.WARNING, logger="sagaflow.orchestration")
    stop = asyncio.Event()
    task = asyncio.ensure_future(worker.work(poll_interval=0.001, stop=stop))

    def messages(level):
        return [
            r for r in caplog.records if r.levelno == level and r.getMessage().startswith("worker:")
        ]

    for _ in range(3000):
        if messages(logging.WARNING) and messages(logging.ERROR):
            break
        await asyncio.sleep(0.001)
    stop.set()
    await asyncio.wait_for(task, 30)
    refused = messages(logging.WARNING)[0].getMessage()
    assert refused.startswith("worker: saga 'old' was started by definition order@1")
    assert "registered: ['order@2']" in refused
    [failed] = messages(logging.ERROR)  # its lease is held: not claimed again so soon
    assert failed.getMessage() == "worker: recovery failed"
    assert isinstance(failed.exc_info[1], StoreUnavailableError)
    assert str(failed.exc_info[1]) == "disk full"


async def test_a_stopped_worker_finishes_the_sagas_it_is_running():
    in_step = asyncio.Event()
    release = asyncio.Event()
    ledger = Ledger()

    async def hang():  # b runs only when recovered: the crash came with its start
        in_step.set()
        await release.wait()

    store = MemorySagaStore()
    saga = two_steps(ledger, hang=hang)
    await crash_run(store, saga, crash_at=2, after=True)
    worker = Orchestrator(store, sagas=[saga])
    stop = asyncio.Event()
    task = asyncio.ensure_future(worker.work(poll_interval=0.001, stop=stop))
    await asyncio.wait_for(in_step.wait(), 30)
    stop.set()
    for _ in range(20):
        await asyncio.sleep(0.001)
    assert not task.done()  # it waits for the saga in progress
    assert (await store.load("s1")).status is SagaStatus.RUNNING
    release.set()
    await asyncio.wait_for(task, 30)
    assert (await store.load("s1")).status is SagaStatus.COMPLETED


# -- store trouble ----------------------------------------------------------------------


class Appends(MemorySagaStore):
    """A memory store that the orchestrator must await, and that counts appends."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.appends: list[list[RecordKind]] = []

    async def append(self, saga_id, records, **kw):
        self.appends.append([r.kind for r in records])
        return await super().append(saga_id, records, **kw)


async def test_a_store_unavailable_beyond_store_retry_fails_the_run():
    class Down(Appends):
        async def append(self, saga_id, records, **kw):
            self.appends.append([r.kind for r in records])
            raise StoreUnavailableError("database down")

    ledger = Ledger()
    store = Down()
    orchestrator = Orchestrator(store, store_retry=STORE_RETRY)
    with pytest.raises(StoreUnavailableError, match="database down"):
        await orchestrator.run(two_steps(ledger), Order(), saga_id="d")
    assert ledger.calls == ["a"]  # b's start could not be logged, so b never ran
    assert kinds((await store.load("d")).records) == [
        RecordKind.SAGA_STARTED,
        RecordKind.STEP_STARTED,
    ]


async def test_store_retry_max_attempts_counts_the_first_attempt():
    clock = FakeClock(auto_advance=True)

    class Down(Appends):
        async def append(self, saga_id, records, **kw):
            self.appends.append(clock.monotonic())
            raise StoreUnavailableError("database down")

    store = Down(clock=clock)
    policy = RetryPolicy(
        max_attempts=3, initial_delay=1, backoff=2, jitter=False, retry_on=(StoreUnavailableError,)
    )
    orchestrator = Orchestrator(store, store_retry=policy, clock=clock)
    with pytest.raises(StoreUnavailableError):
        await orchestrator.run(two_steps(Ledger()), Order(), saga_id="d")
    # RetryPolicy.max_attempts is the total including the first; initial_delay
    # is the wait before the second attempt.
    assert store.appends == [0, 1, 3]


async def test_a_writer_fenced_out_during_a_store_outage_stops_at_once():
    class LeaseLostInOutage(Appends):
        async def append(self, saga_id, records, **kw):
            self.appends.append([r.kind for r in records])
            if len(self.appends) == 1:
                # The store was unreachable long enough for another worker to take over.
                await self.acquire(saga_id, owner="thief", lease=60)
                raise StoreUnavailableError("connection reset")
            return await MemorySagaStore.append(self, saga_id, records, **kw)

    ledger = Ledger()
    store = LeaseLostInOutage()
    orchestrator = Orchestrator(store, lease=0.0, store_retry=STORE_RETRY)
    with pytest.raises(FencedError) as caught:
        await orchestrator.run(two_steps(ledger), Order(), saga_id="f")
    assert (caught.value.fencing_token, caught.value.current_token) == (1, 2)
    assert len(store.appends) == 2  # retried once, then not again: fenced is final
    assert ledger.calls == ["a"]
    log = await store.load("f")
    assert log.owner == "thief"
    assert kinds(log.records) == [RecordKind.SAGA_STARTED, RecordKind.STEP_STARTED]


@pytest.mark.parametrize("reported_as", ["conflict", "unavailable"])
async def test_a_write_racing_a_foreign_record_raises_concurrency_error(reported_as):
    from sagaflow.orchestration.records import SagaRecord

    class Interleaved(Appends):
        """Lets someone else append with the same lease just before our first append."""

        async def append(self, saga_id, records, **kw):
            self.appends.append([r.kind for r in records])
            if len(self.appends) == 1:
                foreign = SagaRecord(RecordKind.STEP_STARTED, "a", 9, 0.0)
                await MemorySagaStore.append(self, saga_id, [foreign], **kw)
                if reported_as == "unavailable":
                    raise StoreUnavailableError("reply lost")
            return await MemorySagaStore.append(self, saga_id, records, **kw)

    ledger = Ledger()
    store = Interleaved()
    orchestrator = Orchestrator(store, store_retry=STORE_RETRY)
    with pytest.raises(ConcurrencyError) as caught:
        await orchestrator.run(two_steps(ledger), Order(), saga_id="r")
    assert type(caught.value) is ConcurrencyError  # not fenced: the same lease wrote
    assert (caught.value.expected_version, caught.value.actual_version) == (2, 3)
    assert ledger.calls == ["a"]
    stored = (await store.load("r")).records
    assert [(r.kind, r.step, r.attempt) for r in stored[2:]] == [
        (RecordKind.STEP_STARTED, "a", 9)  # ours were not written over or after it
    ]


async def test_a_saga_whose_lease_was_not_renewed_stops_before_its_next_step():
    lost = asyncio.Event()

    class Renewals(MemorySagaStore):
        async def renew(self, **kw):
            renewed = await super().renew(**kw)
            if not renewed:
                lost.set()
            return renewed

    store = Renewals()
    ran = []

    async def taken_over(ctx):
        ran.append(ctx.step)
        await store.acquire(ctx.saga_id, owner="thief", lease=60)
        await lost.wait()  # the heartbeat found the lease gone

    async def after(ctx):
        ran.append(ctx.step)

    saga = Saga(
        "s",
        state=Order,
        steps=[Step("a", taken_over, compensate=nothing), Step("b", after, compensate=nothing)],
    )
    orchestrator = Orchestrator(store, owner="me", lease=0.0)
    with pytest.raises(FencedError):
        await orchestrator.run(saga, Order(), saga_id="l")
    await orchestrator.close()
    assert ran == ["a"]  # b's start could not be logged, so b never ran
    log = await store.load("l")
    assert log.owner == "thief"
    assert kinds(log.records) == [RecordKind.SAGA_STARTED, RecordKind.STEP_STARTED]


async def test_concurrent_retries_in_a_parallel_group_never_send_an_empty_write():
    class Yielding(Appends):
        async def append(self, saga_id, records, **kw):
            self.appends.append([r.kind for r in records])
            await asyncio.sleep(0)  # a network round trip: other branches run meanwhile
            return await MemorySagaStore.append(self, saga_id, records, **kw)

    retrying: list[str] = []
    all_retrying = asyncio.Event()

    async def blips(ctx):
        if ctx.attempt == 1:
            raise RuntimeError("blip")
        # Hold every retry until all three have started: the branches' STARTED
        # records queue behind one another's writes, and the last one to get the
        # write lock finds its record already written by the one before.
        retrying.append(ctx.step)
        if len(retrying) == 3:
            all_retrying.set()
        await all_retrying.wait()

    saga = Saga(
        "p",
        state=Order,
        retry=FAST,
        steps=[Parallel("g", *(Step(n, blips, compensate=nothing) for n in ("x", "y", "z")))],
    )
    store = Yielding()
    result = await Orchestrator(store).run(saga, Order(), saga_id="e")
    assert result.status is SagaStatus.COMPLETED
    assert all(store.appends), "an empty write was sent to the store"
    assert (await store.load("e")).records == result.records
    started = [(r.step, r.attempt) for r in result.records if r.kind is RecordKind.STEP_STARTED]
    assert sorted(started) == [(n, a) for n in ("x", "y", "z") for a in (1, 2)]


# -- cancellation -----------------------------------------------------------------------


@pytest.mark.parametrize("turned_back_by", ["failure", "cancel"])
async def test_a_cancel_arriving_as_compensations_finish_still_cancels_the_caller(
    turned_back_by,
):
    started = asyncio.Event()
    in_undo = asyncio.Event()
    finish: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    undone = []

    async def b(ctx):
        started.set()
        if turned_back_by == "failure":
            raise ValueError("no stock")
        await asyncio.Event().wait()

    async def undo_b(ctx):
        undone.append(ctx.step)

    async def undo_a(ctx):  # the last compensation suspends
        in_undo.set()
        await finish
        undone.append(ctx.step)

    store = MemorySagaStore()
    saga = Saga(
        "s",
        state=Order,
        retry=NO_RETRY,
        steps=[Step("a", nothing, compensate=undo_a), Step("b", b, compensate=undo_b)],
    )
    task = asyncio.ensure_future(Orchestrator(store).run(saga, Order(), saga_id="c"))
    await started.wait()
    if turned_back_by == "cancel":
        task.cancel()  # a first cancel turns the saga back
    await in_undo.wait()
    # In one step: the last compensation can finish, and the caller cancels (again).
    # The compensations win the race, and the caller still sees its cancellation.
    finish.set_result(None)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    if turned_back_by == "cancel":
        assert undone == ["b", "a"]  # b was cut off mid-flight: undone too
        assert (await turned_back_on(store, "c"))["type"] == "SagaCancelledError"
    else:
        assert undone == ["a"]  # b failed cleanly: nothing to undo
        assert (await turned_back_on(store, "c"))["message"] == "no stock"


async def test_a_retry_predicate_that_raises_turns_the_saga_back_instead_of_losing_it():
    def broken(error):
        raise KeyError("bug in the predicate")

    ledger = Ledger()
    saga = Saga(
        "order",
        state=Order,
        steps=[
            Step("a", ledger.action("a"), compensate=ledger.action("undo_a")),
            Step(
                "b",
                raising(ConnectionError, "reset"),
                compensate=ledger.action("undo_b"),
                retry=RetryPolicy(max_attempts=5, initial_delay=0, retry_if=broken),
            ),
        ],
    )
    store = MemorySagaStore()
    result = await Orchestrator(store).run(saga, Order(), saga_id="p1")
    assert result.status is SagaStatus.COMPENSATED
    assert ledger.calls == ["a", "undo_a"]
    assert (await store.load("p1")).status is SagaStatus.COMPENSATED
    assert result.error == {"type": "ConnectionError", "message": "reset", "step": "b"}
