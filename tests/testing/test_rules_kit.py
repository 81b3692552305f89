"""The testing kit catches what it claims to catch.

Assertion helpers must FAIL on logs and flows that break their rule; fault
injectors must misbehave exactly as documented; FakeClock must fire timers in
order, at their own due time.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from pydantic import BaseModel

from sagaflow import MemorySagaStore, Orchestrator, RetryPolicy, Saga, SagaStatus, Step
from sagaflow.events import Event, EventRegistry
from sagaflow.observability import EntryKind, FlowTrace, JournalEntry
from sagaflow.orchestration.records import RecordKind, SagaLog, SagaRecord
from sagaflow.testing import (
    FakeClock,
    Fault,
    FaultyTransport,
    InjectedFault,
    assert_compensated_in_reverse,
    assert_saga,
    faulty,
    inject_faults,
)
from sagaflow.testing.flow import check_flow
from sagaflow.transports.base import Message
from sagaflow.transports.memory import MemoryTransport


class State(BaseModel):
    n: int = 0


async def act(ctx: object) -> None:
    return None


def log(*records: SagaRecord, status: SagaStatus = SagaStatus.COMPENSATED) -> SagaLog:
    return SagaLog("s", tuple(records), status)


def rec(kind: RecordKind, step: str | None = None, **data: object) -> SagaRecord:
    return SagaRecord(kind, step, 1 if step else 0, 0.0, data or None)


DONE, UNDONE = RecordKind.STEP_COMPLETED, RecordKind.COMPENSATION_COMPLETED


# -- assert_saga ------------------------------------------------------------------------------


def test_assert_saga_fails_on_wrong_completed_steps_with_the_timeline():
    saga = log(rec(DONE, "a"), rec(DONE, "b"), status=SagaStatus.COMPLETED)
    assert_saga(saga, completed=["a", "b"])
    with pytest.raises(AssertionError, match=r"completed steps are \['a', 'b'\], expected") as info:
        assert_saga(saga, completed=["b", "a"])  # the order matters
    assert "saga s: COMPLETED" in str(info.value)


def test_assert_saga_fails_when_an_error_is_expected_but_none_was_recorded():
    saga = log(rec(DONE, "a"), status=SagaStatus.COMPLETED)
    with pytest.raises(AssertionError, match="the saga recorded no error"):
        assert_saga(saga, error_type="InjectedFault")
    with pytest.raises(AssertionError, match="the saga recorded no error"):
        assert_saga(saga, error_step="a")


def test_assert_saga_reads_the_error_that_parked_the_saga_from_a_log():
    saga = log(
        rec(DONE, "a"),
        rec(RecordKind.SAGA_COMPENSATING, error={"type": "Boom", "message": "", "step": "b"}),
        rec(RecordKind.SAGA_FAILED, error={"type": "RefundError", "message": "", "step": "a"}),
        status=SagaStatus.FAILED,
    )
    assert_saga(saga, error_type="RefundError", error_step="a")  # the last error: what parked it
    with pytest.raises(AssertionError, match="error type is 'RefundError', expected 'Boom'"):
        assert_saga(saga, error_type="Boom")
    with pytest.raises(AssertionError, match="error step is 'a', expected 'b'"):
        assert_saga(saga, error_type="RefundError", error_step="b")


# -- assert_compensated_in_reverse ------------------------------------------------------------


def test_reverse_order_passes_and_ignores_steps_never_compensated():
    assert_compensated_in_reverse(
        log(rec(DONE, "a"), rec(DONE, "pivot"), rec(DONE, "b"), rec(UNDONE, "b"), rec(UNDONE, "a"))
    )


def test_a_step_compensated_twice_fails():
    bad = log(rec(DONE, "a"), rec(UNDONE, "a"), rec(UNDONE, "a"))
    with pytest.raises(AssertionError, match=r"a step was compensated twice: \['a', 'a'\]"):
        assert_compensated_in_reverse(bad)


def test_compensations_in_completion_order_fail():
    bad = log(rec(DONE, "a"), rec(DONE, "b"), rec(UNDONE, "a"), rec(UNDONE, "b"))
    with pytest.raises(AssertionError, match=r"expected reverse completion order \['b', 'a'\]"):
        assert_compensated_in_reverse(bad)


def test_compensating_a_step_that_never_completed_fails_unless_its_outcome_was_unknown():
    failed_cleanly = log(
        rec(DONE, "a"),
        rec(RecordKind.STEP_FAILED, "b", uncertain=False, final=True),
        rec(UNDONE, "b"),
        rec(UNDONE, "a"),
    )
    with pytest.raises(AssertionError, match="compensations ran as"):
        assert_compensated_in_reverse(failed_cleanly)
    timed_out = log(
        rec(DONE, "a"),
        rec(RecordKind.STEP_FAILED, "b", uncertain=True, final=True),
        rec(UNDONE, "b"),
        rec(UNDONE, "a"),
    )
    assert_compensated_in_reverse(timed_out)


# -- check_flow -------------------------------------------------------------------------------

flow_registry = EventRegistry()


class Placed(Event, type="test.kit.placed.v1", registry=flow_registry):
    pass


def flow() -> FlowTrace:
    def e(kind: EntryKind, at: float, **fields: object) -> JournalEntry:
        return JournalEntry(correlation_id="f", kind=kind, at=at, **fields)  # type: ignore[arg-type]

    return FlowTrace.build(
        [
            e(EntryKind.PUBLISH, 1.0, event_id="p", event_type="test.kit.placed.v1"),
            e(
                EntryKind.HANDLE,
                1.1,
                event_id="p",
                event_type="test.kit.placed.v1",
                group="ok",
                attempt=1,
                attempts=1,
                outcome="acked",
            ),
            e(
                EntryKind.HANDLE,
                1.2,
                event_id="p",
                event_type="test.kit.placed.v1",
                group="broken",
                attempt=1,
                attempts=1,
                outcome="failed",
                error_type="Boom",
            ),
            e(EntryKind.DEAD_LETTER, 1.3, event_id="p", event_type="test.kit.placed.v1", group="x"),
            e(EntryKind.PUBLISH, 2.0, event_id="r", event_type="t.reply", causation_id="p"),
            e(EntryKind.STEP_COMPENSATED, 3.0, step="charge"),
            e(EntryKind.SAGA_FINISHED, 4.0, detail="order", outcome="compensated"),
        ]
    )


def test_check_flow_passes_on_what_happened():
    check_flow(
        flow(),
        [Placed, "t.reply"],
        exact=True,
        outcome="compensated",
        compensated=["charge"],
        handled_by={Placed: ["ok"]},
        dead_letters=1,
    )


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"chain": [Placed], "exact": True}, "causal order ['test.kit.placed.v1', 't.reply']"),
        ({"chain": ["t.reply", Placed]}, "no causal chain t.reply -> test.kit.placed.v1"),
        ({"compensated": ["charge", "reserve"]}, "compensated ['charge'] != expected"),
        ({"outcome": "completed"}, "saga outcome 'compensated' != expected 'completed'"),
        # A failed handling is not "handled by".
        (
            {"handled_by": {Placed: ["ok", "broken"]}},
            "not handled by ['broken'] (handled by ['ok'])",
        ),
        ({"dead_letters": 0}, "1 dead letter(s), expected 0"),
    ],
)
def test_check_flow_fails_with_the_trace_on_each_mismatch(options, problem):
    with pytest.raises(AssertionError) as info:
        check_flow(flow(), **options)
    message = str(info.value)
    assert message.startswith("flow f: ") and problem in message
    assert "causal tree" in message  # the rendered trace comes with it


def test_check_flow_of_an_unknown_flow_fails():
    with pytest.raises(AssertionError, match="the journal has no entry for this flow"):
        check_flow(FlowTrace.build([], "nope"))


# -- FakeClock --------------------------------------------------------------------------------


async def test_fake_clock_fires_timers_in_order_each_at_its_own_time():
    clock = FakeClock(start=1000.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.monotonic()))

    tasks = [
        asyncio.create_task(sleeper(name, seconds))
        for name, seconds in (("c", 3), ("a", 1), ("b", 2), ("a2", 1), ("late", 10))
    ]
    await asyncio.sleep(0)
    assert clock.pending_timers == 5
    await clock.advance(5)
    assert woke == [("a", 1.0), ("a2", 1.0), ("b", 2.0), ("c", 3.0)]
    assert clock.monotonic() == 5.0 and clock.now() == 1005.0
    assert clock.pending_timers == 1
    tasks[-1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert clock.pending_timers == 0  # a cancelled sleep no longer waits


async def test_fake_clock_fires_timers_set_on_the_way():
    clock = FakeClock()
    woke: list[float] = []

    async def twice() -> None:
        await clock.sleep(1)
        woke.append(clock.monotonic())
        await clock.sleep(1)  # due at 2, inside the same advance
        woke.append(clock.monotonic())

    task = asyncio.create_task(twice())
    await asyncio.sleep(0)
    await clock.advance(3)
    await task
    assert woke == [1.0, 2.0]


async def test_fake_clock_cannot_go_backwards():
    clock = FakeClock()
    with pytest.raises(ValueError, match="backwards"):
        await clock.advance(-1)
    assert clock.monotonic() == 0.0


async def test_fake_clock_timeout_fires_at_virtual_time_only():
    clock = FakeClock()

    async def guarded(seconds: float | None, work: float) -> str:
        async with clock.timeout(seconds):
            await clock.sleep(work)
        return "done"

    slow = asyncio.create_task(guarded(5, 10))
    fast = asyncio.create_task(guarded(5, 1))
    unlimited = asyncio.create_task(guarded(None, 100))
    await asyncio.sleep(0)
    await clock.advance(4.9)
    assert not slow.done()
    await clock.advance(0.1)
    with pytest.raises(TimeoutError):
        await slow
    assert await fast == "done"
    await clock.advance(100)
    assert await unlimited == "done"  # no timeout: only its own sleep counted
    assert clock.pending_timers == 0


async def test_auto_advance_stops_when_the_only_timer_is_cancelled():
    clock = FakeClock(auto_advance=True)
    task = asyncio.create_task(clock.sleep(3600))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):
        await asyncio.sleep(0)
    assert clock.monotonic() == 0.0  # nothing waited: time did not jump
    await clock.sleep(2)  # a new timer starts a new driver
    assert clock.monotonic() == 2.0


# -- faults -----------------------------------------------------------------------------------


def counting_saga(runs: list[int], **step_options: object) -> Saga[State]:
    async def action(ctx: object) -> None:
        runs.append(1)

    return Saga(
        "hang",
        state=State,
        retry=RetryPolicy(max_attempts=2, initial_delay=0),
        steps=[Step("work", action, compensate=act, **step_options)],  # type: ignore[arg-type]
    )


async def test_hang_strikes_before_the_effect_and_timeout_after_it():
    for fault, effects in ((Fault.hang_on(1), 1), (Fault.timeout_on(1), 2)):
        runs: list[int] = []
        clock = FakeClock(auto_advance=True)
        saga = inject_faults(counting_saga(runs, timeout=5), steps={"work": fault}, clock=clock)
        result = await Orchestrator(MemorySagaStore(), clock=clock).run(saga, State())
        assert result.status is SagaStatus.COMPLETED, fault
        # HANG: attempt 1 never reached the action; TIMEOUT: it ran, then never answered.
        assert len(runs) == effects, fault
        assert [
            r.data["error"]["type"] for r in result.records if r.kind is RecordKind.STEP_FAILED
        ] == ["StepTimeoutError"]


async def test_faults_wrap_sync_actions_and_still_run_them_off_the_loop():
    threads: list[str] = []

    def action(ctx: object) -> None:
        threads.append(threading.current_thread().name)

    saga = Saga(
        "sync",
        state=State,
        retry=RetryPolicy(max_attempts=2, initial_delay=0),
        steps=[Step("work", action, compensate=act)],
    )
    result = await Orchestrator(MemorySagaStore()).run(
        inject_faults(saga, steps={"work": Fault.raise_on(1)}), State()
    )
    assert result.status is SagaStatus.COMPLETED
    assert len(threads) == 1 and threads[0] != threading.current_thread().name
    errors = [r.data["error"]["type"] for r in result.records if r.kind is RecordKind.STEP_FAILED]
    assert errors == ["InjectedFault"]


async def test_faulty_handler_timeout_takes_effect_then_never_returns():
    clock = FakeClock()
    handled: list[str] = []

    async def handler(event: str) -> None:
        handled.append(event)

    wrapped = faulty(handler, Fault.timeout_on(1), clock=clock)
    event = "order-1"
    call = asyncio.create_task(wrapped(event))
    for _ in range(5):
        await asyncio.sleep(0)
    assert handled == ["order-1"] and not call.done()
    assert clock.pending_timers == 1
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    await wrapped(event)  # outside a bus, attempts are counted per event object
    assert handled == ["order-1", "order-1"]


async def test_faulty_handler_raise_on_counts_attempts_per_event_outside_a_bus():
    async def handler(event: object) -> str:
        return "ok"

    wrapped = faulty(handler, Fault.raise_on(1, error=KeyError("k")))
    first, second = object(), object()
    for event in (first, second):
        with pytest.raises(KeyError):
            await wrapped(event)
        assert await wrapped(event) == "ok"


def test_faulty_transport_is_unordered_only_when_it_reorders_or_delays():
    inner = MemoryTransport()
    assert inner.features.ordered
    assert FaultyTransport(inner, duplicate=0.5, drop_before_ack=0.5).features.ordered
    assert not FaultyTransport(inner, reorder=0.1).features.ordered
    assert not FaultyTransport(inner, delay=0.1).features.ordered
    assert FaultyTransport(inner, reorder=0.1).features.max_payload == inner.features.max_payload


async def test_faulty_transport_delivers_a_held_message_when_the_stream_ends():
    inner = MemoryTransport()
    transport = FaultyTransport(inner, seed=1, reorder=1.0, delay_seconds=3600)
    await transport.declare("t", group="g")
    await transport.publish([Message(id="m1", topic="t", body=b"{}", headers={})])
    received: list[str] = []

    async def consume() -> None:
        async for delivery in transport.subscribe("t", group="g"):
            received.append(delivery.message.id)
            await delivery.ack()

    consumer = asyncio.create_task(consume())
    for _ in range(20):
        await asyncio.sleep(0)
    assert received == [] and transport.counts["reordered"] == 1  # held for the next one
    await transport.close()  # closes the inner transport: the stream ends
    await asyncio.wait_for(consumer, 5)
    assert received == ["m1"]  # held, never lost


# -- strategies -------------------------------------------------------------------------------


async def test_a_failure_schedule_applies_its_faults():
    from sagaflow.testing.strategies import FailureSchedule

    schedule = FailureSchedule(
        steps={"b": Fault.raise_on(1)}, compensations={"a": Fault.raise_on(1)}
    )
    saga = Saga(
        "sched",
        state=State,
        retry=RetryPolicy.no_retry(),
        compensation_retry=RetryPolicy(max_attempts=2, initial_delay=0),
        steps=[Step("a", act, compensate=act), Step("b", act, compensate=act)],
    )
    result = await Orchestrator(MemorySagaStore()).run(schedule.apply(saga), State())
    assert_saga(result, status=SagaStatus.COMPENSATED, completed=["a"], compensated=["a"])
    failed = [(r.kind, r.step) for r in result.records if r.kind.value.endswith("failed")]
    assert failed == [(RecordKind.STEP_FAILED, "b"), (RecordKind.COMPENSATION_FAILED, "a")]
    assert schedule.describe() == "step b attempt 1: raise\ncompensation a attempt 1: raise"


def test_registered_events_of_an_empty_registry_is_an_error():
    from sagaflow.testing.strategies import registered_events

    with pytest.raises(ValueError, match="no event classes"):
        registered_events(EventRegistry())


def test_injected_fault_names_where_and_which_attempt():
    error = Fault.raise_on(2).exception("charge", 2)
    assert isinstance(error, InjectedFault)
    assert str(error) == "injected fault in charge (attempt 2)"


# -- hostile messages: each breaks only the rule it is labelled with ---------------------------

hostile_registry = EventRegistry()


class Paid(Event, type="test.kit.paid.v1", registry=hostile_registry):
    order_id: str
    cents: int


def _serializers():
    from sagaflow import JsonSerializer
    from sagaflow.serialization import HmacSigner

    signer = HmacSigner({"k1": b"0123456789abcdef0123"})
    return (
        JsonSerializer(hostile_registry, max_size=2048, signer=signer),
        JsonSerializer(hostile_registry, max_size=2048),
        JsonSerializer(hostile_registry, max_size=10**7, signer=signer),
    )


SIGNED, UNSIGNED, NO_SIZE_LIMIT = _serializers()


def test_hostile_messages_are_each_caught_for_their_own_reason():
    from hypothesis import given, settings

    from sagaflow.errors import MessageTooLargeError, SerializationError, SignatureError
    from sagaflow.testing.strategies import events, hostile_messages

    seen: set[str] = set()

    @settings(max_examples=150, deadline=None, database=None)
    @given(hostile_messages(SIGNED, "t", events(Paid)))
    def check(hostile: tuple[str, Message]) -> None:
        kind, message = hostile
        seen.add(kind)
        with pytest.raises(SerializationError):
            SIGNED.decode(message)
        if kind == "bad-signature":
            with pytest.raises(SignatureError):
                SIGNED.decode(message)
            # Nothing else is wrong: a serializer that skipped the check would accept it.
            assert isinstance(UNSIGNED.decode(message).event, Paid)
            return
        # The signature is valid: a serializer must reject it for what the label says.
        assert SIGNED.signer is not None
        SIGNED.signer.verify(message.headers, message.body)
        if kind == "oversized":
            with pytest.raises(MessageTooLargeError):
                SIGNED.decode(message)
            assert isinstance(NO_SIZE_LIMIT.decode(message).event, Paid)
        else:
            with pytest.raises(SerializationError):
                NO_SIZE_LIMIT.decode(message)

    check()
    assert seen == {
        "malformed-json",
        "wrong-types",
        "oversized",
        "unknown-type",
        "missing-headers",
        "bad-signature",
    }
