import asyncio
import threading

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
from sagaflow.errors import FencedError, NonRetryableError, SchemaError, StoreError
from sagaflow.testing.clock import FakeClock

from ._support import nothing, raising, turned_back_on

FAST = RetryPolicy(max_attempts=3, initial_delay=0, jitter=False)


class Order(BaseModel):
    order_id: str
    reserved: bool = False
    charged: bool = False
    shipped: bool = False
    notes: list[str] = []


class Services:
    """Fake services that log every call and can fail on demand."""

    def __init__(self):
        self.calls: list[str] = []
        self.fail: dict[str, int] = {}  # step -> number of attempts that fail
        self.keys: list[str] = []

    def action(self, name, updates=None):
        async def run(ctx):
            self.calls.append(name)
            self.keys.append(ctx.idempotency_key)
            remaining = self.fail.get(name, 0)
            if remaining:
                self.fail[name] = remaining - 1
                raise RuntimeError(f"{name} failed")
            return updates

        run.__name__ = name
        return run


def order_saga(svc, **kw):
    return Saga(
        "order",
        state=Order,
        retry=FAST,
        compensation_retry=FAST,
        steps=[
            Step(
                "reserve",
                svc.action("reserve", {"reserved": True}),
                compensate=svc.action("release", {"reserved": False}),
            ),
            Step(
                "charge",
                svc.action("charge", {"charged": True}),
                compensate=svc.action("refund", {"charged": False}),
            ),
            Step("ship", svc.action("ship", {"shipped": True}), kind=StepKind.PIVOT),
            Step("notify", svc.action("notify"), kind=StepKind.RETRIABLE, retry=FAST),
        ],
        **kw,
    )


async def test_happy_path_completes_with_state_and_log():
    svc = Services()
    result = await Orchestrator().run(order_saga(svc), {"order_id": "o1"}, saga_id="s1")
    assert result.status is SagaStatus.COMPLETED and result.succeeded
    assert result.state == Order(order_id="o1", reserved=True, charged=True, shipped=True)
    assert svc.calls == ["reserve", "charge", "ship", "notify"]
    assert result.completed_steps() == ["reserve", "charge", "ship", "notify"]
    kinds = [r.kind for r in result.records]
    assert kinds[0] is RecordKind.SAGA_STARTED and kinds[-1] is RecordKind.SAGA_COMPLETED
    assert result.error is None
    assert svc.keys == ["s1:reserve", "s1:charge", "s1:ship", "s1:notify"]


async def test_failure_compensates_in_reverse_and_reports_error():
    svc = Services()
    svc.fail["ship"] = 99
    result = await Orchestrator().run(order_saga(svc), {"order_id": "o1"})
    assert result.status is SagaStatus.COMPENSATED
    assert svc.calls == ["reserve", "charge", "ship", "ship", "ship", "refund", "release"]
    assert result.compensated_steps() == ["charge", "reserve"]
    assert result.state.reserved is False and result.state.charged is False
    assert result.error == {"type": "RuntimeError", "message": "ship failed", "step": "ship"}
    failed = [r for r in result.records if r.kind is RecordKind.STEP_FAILED]
    assert [r.attempt for r in failed] == [1, 2, 3]
    assert failed[-1].data["final"] is True and failed[0].data["final"] is False


async def test_retries_recover_transient_failures():
    svc = Services()
    svc.fail["charge"] = 2
    result = await Orchestrator().run(order_saga(svc), {"order_id": "o1"})
    assert result.status is SagaStatus.COMPLETED
    assert svc.calls.count("charge") == 3


@pytest.mark.parametrize("step_timeout", [None, 30.0])
async def test_each_attempts_error_stands_alone(step_timeout):
    # Steps without a timeout have their first attempt run by the stage loop and
    # later ones by the retry loop; either way an attempt's error is not chained
    # to the one before it.
    errors = []

    class Failures(SagaHooks):
        def step_failed(self, saga_id, step, attempt, error, will_retry):
            errors.append(error)

    async def charge(ctx):
        raise RuntimeError(f"attempt {ctx.attempt}")

    saga = Saga(
        "s",
        state=Order,
        steps=[Step("charge", charge, kind=StepKind.PIVOT, retry=FAST, timeout=step_timeout)],
    )
    result = await Orchestrator(hooks=[Failures()]).run(saga, {"order_id": "x"})
    assert result.status is SagaStatus.COMPENSATED
    assert [str(e) for e in errors] == ["attempt 1", "attempt 2", "attempt 3"]
    assert all(e.__context__ is None and e.__cause__ is None for e in errors)


async def test_the_retry_deadline_counts_from_the_first_attempt():
    clock = FakeClock(auto_advance=True)
    attempts = []

    async def charge(ctx):
        attempts.append(ctx.attempt)
        await clock.sleep(10)
        raise RuntimeError("slow and failing")

    policy = RetryPolicy(max_attempts=10, initial_delay=0, jitter=False, deadline=25)
    saga = Saga("s", state=Order, steps=[Step("charge", charge, kind=StepKind.PIVOT, retry=policy)])
    result = await Orchestrator(clock=clock).run(saga, {"order_id": "x"})
    assert result.status is SagaStatus.COMPENSATED
    # 10 s per attempt: the third ends at 30 s, past the 25 s deadline counted
    # from the first attempt's start (not from the second's).
    assert attempts == [1, 2, 3]


async def test_non_retryable_error_fails_at_once():
    calls = []

    async def charge(ctx):
        calls.append(ctx.attempt)
        raise NonRetryableError("card declined")

    async def noop(ctx):
        return None

    saga = Saga("s", state=Order, steps=[Step("charge", charge, compensate=noop, retry=FAST)])
    result = await Orchestrator().run(saga, {"order_id": "x"})
    assert calls == [1]
    assert result.status is SagaStatus.COMPENSATED
    assert result.compensated_steps() == []  # the failed step itself had no effect


async def test_compensation_failure_parks_the_saga_as_failed():
    svc = Services()
    svc.fail["ship"] = 99
    svc.fail["refund"] = 99
    result = await Orchestrator().run(order_saga(svc), {"order_id": "o1"})
    assert result.status is SagaStatus.FAILED
    assert result.error["step"] == "charge"
    assert "release" not in svc.calls  # parked before going further back
    assert result.records[-1].kind is RecordKind.SAGA_FAILED


async def test_failure_after_the_pivot_parks_without_compensating():
    svc = Services()
    svc.fail["notify"] = 99
    result = await Orchestrator().run(order_saga(svc), {"order_id": "o1"})
    assert result.status is SagaStatus.FAILED
    assert result.compensated_steps() == []
    assert result.error["step"] == "notify"


async def test_step_timeout_counts_as_uncertain_and_is_compensated():
    clock = FakeClock(auto_advance=True)
    undone = []

    async def slow(ctx):
        await clock.sleep(60)

    async def undo(ctx):
        undone.append(ctx.step)

    saga = Saga(
        "s",
        state=Order,
        steps=[
            Step("slow", slow, compensate=undo, timeout=1, retry=RetryPolicy.no_retry()),
        ],
    )
    result = await Orchestrator(clock=clock).run(saga, {"order_id": "x"})
    assert result.status is SagaStatus.COMPENSATED
    assert result.error["type"] == "StepTimeoutError"
    assert undone == ["slow"]
    failed = next(r for r in result.records if r.kind is RecordKind.STEP_FAILED)
    assert failed.data["uncertain"] is True


async def test_saga_deadline_turns_back():
    clock = FakeClock(auto_advance=True)
    undone = []

    async def undo(ctx):
        undone.append(ctx.step)

    async def hang(ctx):
        await clock.sleep(10_000)

    saga = Saga(
        "s",
        state=Order,
        deadline=30,
        steps=[Step("a", nothing, compensate=undo), Step("b", hang, compensate=undo)],
    )
    result = await Orchestrator(clock=clock).run(saga, {"order_id": "x"})
    assert result.status is SagaStatus.COMPENSATED
    assert result.error["type"] == "SagaDeadlineExceededError"
    assert undone == ["b", "a"]  # b's outcome is unknown, so it is undone too
    assert clock.monotonic() == pytest.approx(30)


async def test_cancellation_runs_compensations_shielded():
    started = asyncio.Event()
    undone = []

    async def undo(ctx):
        await asyncio.sleep(0.01)  # compensations keep running despite the cancel
        undone.append(ctx.step)

    async def hang(ctx):
        started.set()
        await asyncio.sleep(3600)

    store = MemorySagaStore()
    saga = Saga(
        "s",
        state=Order,
        steps=[Step("a", nothing, compensate=undo), Step("b", hang, compensate=undo)],
    )
    task = asyncio.ensure_future(Orchestrator(store).run(saga, {"order_id": "x"}, saga_id="c1"))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert undone == ["b", "a"]
    assert (await turned_back_on(store, "c1"))["type"] == "SagaCancelledError"


async def test_cancelling_again_while_compensations_suspend_does_not_stop_them():
    in_undo = asyncio.Event()
    undone = []

    async def undo(ctx):
        in_undo.set()
        await asyncio.sleep(0.01)  # suspended here when the cancels arrive
        await asyncio.sleep(0.01)
        undone.append(ctx.step)

    store = MemorySagaStore()
    saga = Saga(
        "s",
        state=Order,
        steps=[
            Step("a", nothing, compensate=undo),
            Step("b", nothing, compensate=undo),
            Step("c", raising(ValueError, "card declined"), compensate=undo),
        ],
        retry=RetryPolicy.no_retry(),
    )
    task = asyncio.ensure_future(Orchestrator(store).run(saga, {"order_id": "x"}, saga_id="c2"))
    await in_undo.wait()
    task.cancel()
    await asyncio.sleep(0)
    task.cancel()  # a second cancel, during the same compensation
    with pytest.raises(asyncio.CancelledError):
        await task
    assert undone == ["b", "a"]
    assert (await turned_back_on(store, "c2"))["message"] == "card declined"


async def test_a_compensation_that_times_out_is_retried_by_its_own_task():
    attempts = []

    async def undo_hangs_once(ctx):
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await asyncio.sleep(3600)  # cut off by compensation_timeout

    saga = Saga(
        "s",
        state=Order,
        steps=[
            Step(
                "a",
                nothing,
                compensate=undo_hangs_once,
                compensation_timeout=0.02,
                compensation_retry=RetryPolicy(max_attempts=2, initial_delay=0),
            ),
            Step("b", raising(ValueError, "card declined"), compensate=undo_hangs_once),
        ],
        retry=RetryPolicy.no_retry(),
    )
    result = await Orchestrator().run(saga, {"order_id": "x"})
    assert result.status is SagaStatus.COMPENSATED
    assert attempts == [1, 2]
    failed = [r for r in result.records if r.kind is RecordKind.COMPENSATION_FAILED]
    assert [r.data["error"] for r in failed] == [
        {
            "type": "StepTimeoutError",
            "message": "compensation of step 'a' attempt 1 exceeded 0.02 s",
        }
    ]
    # The timeout cancelled the compensations' task, never the caller's.
    assert asyncio.current_task().cancelling() == 0


async def test_a_compensation_failing_after_it_suspended_parks_the_saga():
    async def undo_later_fails(ctx):
        await asyncio.sleep(0)
        raise RuntimeError("refund service down")

    saga = Saga(
        "s",
        state=Order,
        steps=[
            Step("a", nothing, compensate=undo_later_fails),
            Step("b", raising(ValueError, "no stock"), compensate=undo_later_fails),
        ],
        retry=RetryPolicy.no_retry(),
        compensation_retry=RetryPolicy.no_retry(),
    )
    result = await Orchestrator().run(saga, {"order_id": "x"})
    assert result.status is SagaStatus.FAILED
    assert result.error == {
        "type": "RuntimeError",
        "message": "refund service down",
        "step": "a",
    }


async def test_a_timeout_inside_a_compensation_stays_inside_it():
    # asyncio.timeout binds to the task current when it is entered: compensations
    # must run in the task that also continues them, or the timeout would cancel
    # the saga's caller instead of the compensation.
    attempts = []

    async def slow_undo(ctx):
        attempts.append(ctx.attempt)
        async with asyncio.timeout(0.02):
            await asyncio.sleep(0 if ctx.attempt > 1 else 5)

    saga = Saga(
        "s",
        state=Order,
        steps=[
            Step("a", nothing, compensate=slow_undo),
            Step("b", raising(ValueError, "no stock"), compensate=slow_undo),
        ],
        retry=RetryPolicy.no_retry(),
        compensation_retry=RetryPolicy(max_attempts=2, initial_delay=0),
    )
    result = await asyncio.wait_for(Orchestrator().run(saga, {"order_id": "x"}), 5)
    assert result.status is SagaStatus.COMPENSATED
    assert attempts == [1, 2]
    failed = [r for r in result.records if r.kind is RecordKind.COMPENSATION_FAILED]
    assert [r.data["error"]["type"] for r in failed] == ["TimeoutError"]


async def test_parallel_failure_cancels_siblings_and_compensates_done_and_unknown():
    gate = asyncio.Event()
    undone = []

    async def ok(ctx):
        return {"notes": [*ctx.state.notes, ctx.step]}

    async def hang(ctx):
        gate.set()
        await asyncio.sleep(3600)

    async def fail(ctx):
        await gate.wait()
        raise RuntimeError("no")

    async def undo(ctx):
        undone.append(ctx.step)

    saga = Saga(
        "p",
        state=Order,
        retry=RetryPolicy.no_retry(),
        steps=[
            Step("first", ok, compensate=undo),
            Parallel(
                "group",
                Step("b_ok", ok, compensate=undo),
                Step("b_hang", hang, compensate=undo),
                Step("b_fail", fail, compensate=undo),
            ),
            Step("never", ok, compensate=undo),
        ],
    )
    result = await Orchestrator().run(saga, {"order_id": "x"})
    assert result.status is SagaStatus.COMPENSATED
    assert result.error["step"] == "b_fail"
    assert "b_fail" not in undone  # failed cleanly: nothing to undo
    assert set(undone) == {"first", "b_ok", "b_hang"}
    assert undone[-1] == "first"
    assert "never" not in result.completed_steps()


async def test_parallel_branches_run_concurrently_and_merge_updates():
    running = 0
    peak = 0

    def branch(field):
        async def run(ctx):
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            return {field: True}

        return run

    async def undo(ctx):
        return None

    saga = Saga(
        "p",
        state=Order,
        steps=[
            Parallel(
                "g",
                Step("r", branch("reserved"), compensate=undo),
                Step("c", branch("charged"), compensate=undo),
            )
        ],
    )
    result = await Orchestrator().run(saga, {"order_id": "x"})
    assert result.status is SagaStatus.COMPLETED
    assert peak == 2
    assert result.state.reserved and result.state.charged


async def test_sync_actions_run_off_the_event_loop():
    loop_thread = threading.get_ident()
    seen = []

    def blocking(ctx):
        seen.append(threading.get_ident())
        return {"reserved": True}

    def undo(ctx):
        return None

    saga = Saga("s", state=Order, steps=[Step("a", blocking, compensate=undo)])
    result = await Orchestrator().run(saga, {"order_id": "x"})
    assert result.state.reserved
    assert seen and seen[0] != loop_thread


def test_run_sync_without_a_loop():
    svc = Services()
    result = Orchestrator().run_sync(order_saga(svc), {"order_id": "o1"})
    assert result.status is SagaStatus.COMPLETED


async def test_invalid_input_and_invalid_updates():
    svc = Services()
    with pytest.raises(SchemaError, match="invalid input"):
        await Orchestrator().run(order_saga(svc), {"order": 1})

    async def bad(ctx):
        return {"reserved": "not a bool at all"}

    async def unknown_field(ctx):
        return {"nope": 1}

    async def undo(ctx):
        return None

    for action in (bad, unknown_field):
        saga = Saga("s", state=Order, steps=[Step("a", action, compensate=undo)])
        result = await Orchestrator().run(saga, {"order_id": "x"})
        assert result.status is SagaStatus.COMPENSATED
        assert result.error["type"] == "SchemaError"
        # a step whose returned data is bad did run: its effect is undone
        assert result.compensated_steps() == ["a"]


async def test_whole_state_can_be_returned():
    async def replace(ctx):
        return ctx.state.model_copy(update={"shipped": True})

    async def undo(ctx):
        return None

    saga = Saga("s", state=Order, steps=[Step("a", replace, compensate=undo)])
    result = await Orchestrator().run(saga, {"order_id": "x"})
    assert result.state.shipped


async def test_same_saga_id_is_not_started_twice():
    svc = Services()
    orch = Orchestrator()
    first = await orch.run(order_saga(svc), {"order_id": "o1"}, saga_id="dup")
    second = await orch.run(order_saga(svc), {"order_id": "other"}, saga_id="dup")
    assert svc.calls.count("reserve") == 1
    assert second.status is first.status and second.state == first.state
    assert second.records == first.records


async def test_hooks_see_the_lifecycle_and_cannot_break_it():
    events = []

    class Recorder(SagaHooks):
        def saga_started(self, saga_id, saga_name):
            events.append(("saga_started", saga_name))

        def step_started(self, saga_id, step, attempt):
            events.append(("started", step, attempt))

        def step_failed(self, saga_id, step, attempt, error, will_retry):
            events.append(("failed", step, attempt, will_retry))

        def step_compensated(self, saga_id, step, attempt):
            events.append(("compensated", step))

        def saga_finished(self, result):
            events.append(("finished", result.status))

    class Broken(SagaHooks):
        def step_started(self, saga_id, step, attempt):
            raise RuntimeError("hook bug")

    svc = Services()
    svc.fail["charge"] = 99
    result = await Orchestrator(hooks=[Broken(), Recorder()]).run(
        order_saga(svc), {"order_id": "o"}
    )
    assert result.status is SagaStatus.COMPENSATED
    assert events[0] == ("saga_started", "order")
    assert ("failed", "charge", 3, False) in events
    assert ("compensated", "reserve") in events
    assert events[-1] == ("finished", SagaStatus.COMPENSATED)


async def test_backoff_waits_on_the_injected_clock():
    clock = FakeClock(auto_advance=True)
    svc = Services()
    svc.fail["reserve"] = 2
    saga = Saga(
        "s",
        state=Order,
        steps=[
            Step(
                "reserve",
                svc.action("reserve"),
                compensate=svc.action("release"),
                retry=RetryPolicy(
                    max_attempts=3, initial_delay=100, backoff=2, max_delay=1000, jitter=False
                ),
            )
        ],
    )
    result = await Orchestrator(clock=clock).run(saga, {"order_id": "x"})
    assert result.status is SagaStatus.COMPLETED
    assert clock.monotonic() == pytest.approx(300)


async def test_store_writes_are_batched_and_written_before_effects():
    writes = []

    class Spy(MemorySagaStore):
        async def create(self, saga_id, records, **kw):
            writes.append([r.kind for r in records])
            return await super().create(saga_id, records, **kw)

        async def append(self, saga_id, records, **kw):
            writes.append([r.kind for r in records])
            return await super().append(saga_id, records, **kw)

    store = Spy()

    async def checked(ctx):
        log = await store.load(ctx.saga_id)
        assert log.records[-1].kind is RecordKind.STEP_STARTED and log.records[-1].step == ctx.step
        return

    async def undo(ctx):
        return None

    saga = Saga("s", state=Order, steps=[Step(n, checked, compensate=undo) for n in "abcd"])
    result = await Orchestrator(store).run(saga, {"order_id": "x"})
    assert result.status is SagaStatus.COMPLETED
    assert len(writes) == 5  # one write per step boundary
    assert writes[0] == [RecordKind.SAGA_STARTED, RecordKind.STEP_STARTED]
    assert writes[1] == [RecordKind.STEP_COMPLETED, RecordKind.STEP_STARTED]
    assert writes[-1] == [RecordKind.STEP_COMPLETED, RecordKind.SAGA_COMPLETED]


class AwaitedStore(MemorySagaStore):
    """A memory store the orchestrator must await: its writes are overridden."""

    async def create(self, saga_id, records, **kw):
        return await super().create(saga_id, records, **kw)

    async def append(self, saga_id, records, **kw):
        return await super().append(saga_id, records, **kw)


def shape(records):
    return [(r.kind, r.step, r.attempt, r.data) for r in records]


@pytest.mark.parametrize("failing", [{}, {"charge": 1}, {"ship": 5}, {"ship": 5, "refund": 1}])
async def test_direct_memory_writes_log_what_awaited_writes_log(failing):
    # The plain MemorySagaStore is written without awaiting a coroutine; a subclass
    # that overrides its writes is awaited. Both must produce the same log.
    logs = []
    for store in (MemorySagaStore(), AwaitedStore()):
        svc = Services()
        svc.fail = dict(failing)
        result = await Orchestrator(store, seed=1).run(
            order_saga(svc), {"order_id": "x"}, saga_id="d"
        )
        assert shape((await store.load("d")).records) == shape(result.records)
        logs.append((result.status, shape(result.records), svc.calls))
    assert logs[0] == logs[1]


async def test_a_store_closed_mid_saga_fails_the_run_with_store_error():
    store = MemorySagaStore()

    async def close_store(ctx):
        await store.close()

    ran = []

    async def after(ctx):
        ran.append(ctx.step)

    saga = Saga(
        "s",
        state=Order,
        steps=[
            Step("a", close_store, kind=StepKind.PIVOT),
            Step("b", after, kind=StepKind.RETRIABLE),
        ],
    )
    with pytest.raises(StoreError, match="closed"):
        await Orchestrator(store).run(saga, {"order_id": "x"})
    assert ran == []  # b's start could not be logged, so b never ran


async def test_a_fenced_writer_stops():
    store = MemorySagaStore()
    gate = asyncio.Event()

    async def first(ctx):
        await store.acquire(ctx.saga_id, owner="thief", lease=60)  # another worker takes over
        return

    async def second(ctx):
        gate.set()

    async def undo(ctx):
        return None

    saga = Saga(
        "s",
        state=Order,
        steps=[Step("a", first, compensate=undo), Step("b", second, compensate=undo)],
    )
    with pytest.raises(FencedError):
        await Orchestrator(store, owner="me", lease=0.0).run(saga, {"order_id": "x"}, saga_id="f")
    assert not gate.is_set()  # the step after the lost lease never ran


async def test_logged_updates_are_json_values_honouring_custom_serializers():
    import datetime as dt

    from pydantic import field_serializer

    class Plain(BaseModel):
        at: dt.datetime | None = None
        tags: tuple[str, ...] = ()

    class Custom(BaseModel):
        cents: int = 0

        @field_serializer("cents")
        def as_text(self, value: int) -> str:
            return f"{value / 100:.2f}"

    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    async def set_plain(ctx):
        return {"at": when, "tags": ("a", "b")}

    async def set_custom(ctx):
        return {"cents": 1234}

    async def undo(ctx):
        return None

    for model, action, expected in (
        (Plain, set_plain, {"at": "2026-01-02T03:04:05Z", "tags": ["a", "b"]}),
        (Custom, set_custom, {"cents": "12.34"}),
    ):
        saga = Saga("s", state=model, steps=[Step("a", action, compensate=undo)])
        store = MemorySagaStore()
        result = await Orchestrator(store).run(saga, {}, saga_id="j")
        done = next(r for r in result.records if r.kind is RecordKind.STEP_COMPLETED)
        assert done.data["updates"] == expected
        stored = next(
            r for r in (await store.load("j")).records if r.kind is RecordKind.STEP_COMPLETED
        )
        assert stored.data == done.data


async def test_a_write_that_committed_before_its_reply_was_lost_is_recognised():
    from sagaflow.errors import StoreUnavailableError

    class Flaky(MemorySagaStore):
        """Commits the 2nd append, then reports the connection lost."""

        appends = 0

        async def append(self, saga_id, records, **kw):
            Flaky.appends += 1
            version = await super().append(saga_id, records, **kw)
            if Flaky.appends == 2:
                raise StoreUnavailableError("connection lost after commit")
            return version

    async def act(ctx):
        return None

    store = Flaky()
    saga = Saga("s", state=Order, steps=[Step(n, act, compensate=act) for n in "abc"])
    orchestrator = Orchestrator(store, store_retry=RetryPolicy(max_attempts=3, initial_delay=0))
    result = await orchestrator.run(saga, {"order_id": "x"}, saga_id="amb")
    assert result.status is SagaStatus.COMPLETED
    log = await store.load("amb")
    assert log.records == result.records  # nothing written twice, nothing missing


@pytest.mark.parametrize("committed", [True, False])
async def test_cancellation_during_a_store_write_loses_and_duplicates_nothing(committed):
    entered = asyncio.Event()

    class Slow(MemorySagaStore):
        """The 2nd append hangs (after or before committing) until cancelled."""

        appends = 0

        async def append(self, saga_id, records, **kw):
            Slow.appends += 1
            if Slow.appends != 2:
                return await super().append(saga_id, records, **kw)
            if committed:
                await super().append(saga_id, records, **kw)
            entered.set()
            await asyncio.sleep(3600)
            raise AssertionError("unreachable")

    undone = []

    async def act(ctx):
        return None

    async def undo(ctx):
        undone.append(ctx.step)

    store = Slow()
    saga = Saga("s", state=Order, steps=[Step(n, act, compensate=undo) for n in "abc"])
    task = asyncio.ensure_future(Orchestrator(store).run(saga, {"order_id": "x"}, saga_id="cw"))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    log = await store.load("cw")
    assert log.status is SagaStatus.COMPENSATED
    keys = [(r.kind, r.step, r.attempt) for r in log.records]
    assert len(keys) == len(set(keys)), "a record was written twice"
    assert (RecordKind.STEP_COMPLETED, "a", 1) in keys  # nothing lost
    assert undone[-1] == "a"
