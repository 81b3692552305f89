"""Rules of the orchestration's smaller parts: definitions, records, rendering, remote steps."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from pydantic import BaseModel

from sagaflow import (
    MemorySagaStore,
    Orchestrator,
    Parallel,
    RecordKind,
    RetryPolicy,
    Saga,
    SagaStatus,
    Step,
    StepKind,
)
from sagaflow.choreography import EventBus
from sagaflow.errors import ConfigurationError
from sagaflow.events import Event, EventRegistry
from sagaflow.orchestration import records as records_module
from sagaflow.orchestration.records import ErrorInfo, SagaLog, SagaRecord
from sagaflow.orchestration.remote import (
    MemoryReplyCache,
    RemoteSteps,
    command_handler,
)
from sagaflow.orchestration.render import render_timeline
from sagaflow.testing.clock import FakeClock

from ._support import nothing


class Order(BaseModel):
    order_id: str = "o"
    reservation_id: str | None = None


# -- definitions ------------------------------------------------------------------------


def test_a_compensation_must_be_callable():
    with pytest.raises(ConfigurationError, match=r"^step 'a': compensate must be callable$"):
        Step("a", nothing, compensate="refund")  # type: ignore[arg-type]


def test_parallel_branches_must_be_steps():
    branch = Step("a", nothing, compensate=nothing)
    with pytest.raises(
        ConfigurationError, match=r"^parallel group 'g': branches must be Step, got str$"
    ):
        Parallel("g", branch, "b")  # type: ignore[arg-type]


def test_a_saga_repr_names_it_with_version_and_step_count():
    saga = Saga(
        "order",
        state=Order,
        version=2,
        steps=[
            Step("a", nothing, compensate=nothing),
            Parallel(
                "g", Step("b", nothing, compensate=nothing), Step("c", nothing, compensate=nothing)
            ),
            Step("d", nothing, kind=StepKind.PIVOT),
        ],
    )
    assert repr(saga) == "Saga('order', version=2, steps=4)"  # branches count one each


# -- records ----------------------------------------------------------------------------


def test_error_info_as_dict():
    assert ErrorInfo("ValueError", "no stock").as_dict() == {
        "type": "ValueError",
        "message": "no stock",
    }


def test_records_round_trip_through_json_dicts():
    records = [
        SagaRecord(RecordKind.SAGA_STARTED, None, 0, 1.5, {"saga": "s", "version": 1}),
        SagaRecord(RecordKind.STEP_STARTED, "a", 2, 2.25),
    ]
    raw = [r.to_json_dict() for r in records]
    assert raw == [
        {
            "kind": "saga_started",
            "step": None,
            "attempt": 0,
            "at": 1.5,
            "data": {"saga": "s", "version": 1},
        },
        {"kind": "step_started", "step": "a", "attempt": 2, "at": 2.25, "data": None},
    ]
    assert [SagaRecord.from_json_dict(r) for r in raw] == records
    back = SagaRecord.from_json_dict(raw[1])
    assert back.kind is RecordKind.STEP_STARTED  # the enum, not the string
    # Only the kind is required; numbers are coerced.
    assert SagaRecord.from_json_dict({"kind": "saga_completed", "attempt": "3", "at": 7}) == (
        SagaRecord(RecordKind.SAGA_COMPLETED, None, 3, 7.0, None)
    )


@pytest.mark.parametrize(
    "records",
    [(), (SagaRecord(RecordKind.SAGA_STARTED),)],
    ids=["no-records", "no-start-data"],
)
def test_a_log_without_start_data_has_no_definition(records):
    log = SagaLog("s1", records, SagaStatus.RUNNING)
    assert (log.saga_name, log.definition_version) == ("", 0)


async def test_the_turn_back_record_holds_the_error():
    # RecordKind documents each record's data; the turn-back's key is "error".
    saga = Saga(
        "s",
        state=Order,
        retry=RetryPolicy.no_retry(),
        steps=[Step("a", nothing, compensate=nothing), Step("b", _fails, compensate=nothing)],
    )
    result = await Orchestrator().run(saga, Order())
    [turn] = [r for r in result.records if r.kind is RecordKind.SAGA_COMPENSATING]
    assert turn.data == {"error": {"type": "ValueError", "message": "no stock", "step": "b"}}
    documented = inspect.getsource(records_module).split('SAGA_COMPENSATING = "saga_compensating"')
    assert documented[1].lstrip().startswith('"""The saga turned back; data: ``{"error": ErrorInfo')


async def _fails(ctx):
    raise ValueError("no stock")


# -- rendering --------------------------------------------------------------------------

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def test_render_timeline_of_an_empty_log_is_its_header():
    assert render_timeline("s1", SagaStatus.RUNNING, []) == "saga s1: RUNNING"
    assert render_timeline("s1", SagaStatus.RUNNING, [], saga_name="order") == (
        "saga order s1: RUNNING"
    )


def test_render_timeline_shows_errors_and_operator_actions_but_no_state():
    error = {"type": "ValueError", "message": "no stock"}
    records = [
        SagaRecord(RecordKind.SAGA_STARTED, None, 0, T0, {"state": {"email": "a@example.com"}}),
        SagaRecord(RecordKind.STEP_STARTED, "a", 1, T0 + 0.0012),
        SagaRecord(RecordKind.STEP_COMPLETED, "a", 1, T0 + 0.002, {"updates": {"card": "4242"}}),
        SagaRecord(RecordKind.STEP_FAILED, "b", 1, T0 + 0.010, {"error": error, "uncertain": True}),
        SagaRecord(RecordKind.STEP_FAILED, "b", 2, T0 + 0.020, {"error": error}),
        SagaRecord(RecordKind.SAGA_COMPENSATING, None, 0, T0 + 0.021, {"error": error}),
        SagaRecord(RecordKind.COMPENSATION_FAILED, "a", 1, T0 + 0.5, {"error": {}}),
        SagaRecord(RecordKind.SAGA_FAILED, None, 0, T0 + 0.6, None),
        SagaRecord(RecordKind.COMPENSATION_SKIPPED, "a", 0, T0 + 60, {"reason": "ticket 42"}),
        SagaRecord(RecordKind.SAGA_RESUMED, None, 0, T0 + 60, {"phase": "x", "by": "ops"}),
        SagaRecord(RecordKind.SAGA_RECOVERED, None, 0, T0 + 61, {"owner": "w2", "count": 1}),
        SagaRecord(RecordKind.SAGA_RECOVERED, None, 0, T0 + 62, None),
        SagaRecord(RecordKind.SAGA_COMPENSATED, None, 0, T0 + 123.4567),
    ]
    text = render_timeline("s1", SagaStatus.COMPENSATED, records, saga_name="order")
    assert text.splitlines() == [
        "saga order s1: COMPENSATED (started 2023-11-14T22:13:20.000+00:00)",
        "  +      0.0 ms  saga started",
        "  +      1.2 ms  step started a (attempt 1)",
        "  +      2.0 ms  step completed a (attempt 1)",
        "  +     10.0 ms  step failed b (attempt 1): ValueError: no stock (outcome unknown)",
        "  +     20.0 ms  step failed b (attempt 2): ValueError: no stock",
        "  +     21.0 ms  saga compensating: ValueError: no stock",
        "  +    500.0 ms  compensation failed a (attempt 1): ?: ",
        "  +    600.0 ms  saga failed: ?: ",
        "  +  60000.0 ms  compensation skipped a: ticket 42",
        "  +  60000.0 ms  saga resumed by ops",
        "  +  61000.0 ms  saga recovered by w2",
        "  +  62000.0 ms  saga recovered",
        "  + 123456.7 ms  saga compensated",
    ]
    assert "example.com" not in text and "4242" not in text  # state and results stay out


async def test_render_timeline_of_a_real_run():
    clock = FakeClock(start=T0)
    saga = Saga(
        "order",
        state=Order,
        retry=RetryPolicy.no_retry(),
        steps=[Step("a", nothing, compensate=nothing), Step("b", _fails, compensate=nothing)],
    )
    store = MemorySagaStore(clock=clock)
    result = await Orchestrator(store, clock=clock).run(saga, Order(), saga_id="s1")
    log = await store.load("s1")
    text = render_timeline(log.saga_id, log.status, log.records, saga_name=log.saga_name)
    assert text.splitlines() == [
        "saga order s1: COMPENSATED (started 2023-11-14T22:13:20.000+00:00)",
        "  +      0.0 ms  saga started",
        "  +      0.0 ms  step started a (attempt 1)",
        "  +      0.0 ms  step completed a (attempt 1)",
        "  +      0.0 ms  step started b (attempt 1)",
        "  +      0.0 ms  step failed b (attempt 1): ValueError: no stock",
        "  +      0.0 ms  saga compensating: ValueError: no stock",
        "  +      0.0 ms  compensation started a (attempt 1)",
        "  +      0.0 ms  compensation completed a (attempt 1)",
        "  +      0.0 ms  saga compensated",
    ]
    assert result.records == log.records


# -- remote steps -----------------------------------------------------------------------

registry = EventRegistry()


class Reserve(Event, type="test.rules.reserve.v1", registry=registry):
    order_id: str


class Reserved(Event, type="test.rules.reserved.v1", registry=registry):
    order_id: str
    reservation_id: str


class NoStock(Event, type="test.rules.nostock.v1", registry=registry):
    order_id: str
    sku: str


def memory_buses():
    from sagaflow.transports.memory import MemoryTransport

    transport = MemoryTransport()

    def make(**kw):
        return EventBus(transport, registry=registry, close_transport=False, **kw)

    return make


def reserve_saga(remote: RemoteSteps, *, failure=()):
    return Saga(
        "remote",
        state=Order,
        retry=RetryPolicy.no_retry(),
        steps=[
            Step(
                "reserve",
                remote.call(
                    lambda ctx: Reserve(order_id=ctx.state.order_id),
                    success=Reserved,
                    failure=failure,
                    updates=lambda reply: {"reservation_id": reply.reservation_id},
                ),
                kind=StepKind.PIVOT,
                timeout=30,
            )
        ],
    )


def test_reply_types_are_subscribed_once_and_must_be_events():
    bus = memory_buses()()
    remote = RemoteSteps(bus, group="replies")
    for _ in range(2):
        remote.call(lambda ctx: Reserve(order_id="o"), success=Reserved, failure=NoStock)
    subscribed = [(s.event_type, s.group) for s in bus.subscriptions]
    assert subscribed == [(Reserved, "replies"), (NoStock, "replies")]
    for bad in (dict, Reserved(order_id="o", reservation_id="r")):
        with pytest.raises(ConfigurationError, match="reply types must be Event classes, got"):
            remote.call(lambda ctx: Reserve(order_id="o"), success=Reserved, failure=bad)  # type: ignore[arg-type]


async def test_replies_not_caused_by_a_waiting_command_are_ignored():
    make = memory_buses()
    got_command = asyncio.Event()
    go = asyncio.Event()
    async with make() as service_bus, make() as orchestrator_bus:

        @command_handler(service_bus, Reserve, group="warehouse")
        async def reserve(command: Reserve) -> Event:
            got_command.set()
            await go.wait()
            return Reserved(order_id=command.order_id, reservation_id="real")

        await service_bus.start()
        remote = RemoteSteps(orchestrator_bus)
        saga = reserve_saga(remote)
        await orchestrator_bus.start()
        run = asyncio.ensure_future(Orchestrator().run(saga, Order(order_id="o1")))
        await asyncio.wait_for(got_command.wait(), 30)
        # Replies published outside any handler (no causation id) or caused by
        # some other event must not complete the waiting step.
        await service_bus.publish(Reserved(order_id="o1", reservation_id="stray"))
        await service_bus.publish(
            Reserved(order_id="o1", reservation_id="other"), causation_id="someone-else"
        )
        await orchestrator_bus.join()
        assert not run.done()
        go.set()
        result = await asyncio.wait_for(run, 30)
    assert result.status is SagaStatus.COMPLETED
    assert result.state.reservation_id == "real"


async def test_a_failure_reply_without_a_reason_is_described_by_its_fields():
    make = memory_buses()
    async with make() as service_bus, make() as orchestrator_bus:

        @command_handler(service_bus, Reserve, group="warehouse")
        async def reserve(command: Reserve) -> Event:
            return NoStock(order_id=command.order_id, sku="sku-9")

        await service_bus.start()
        saga = reserve_saga(RemoteSteps(orchestrator_bus), failure=NoStock)
        await orchestrator_bus.start()
        result = await Orchestrator().run(saga, Order(order_id="o1"))
    assert result.status is SagaStatus.COMPENSATED
    assert result.error == {
        "type": "RemoteStepRejected",
        "message": "NoStock: {'order_id': 'o1', 'sku': 'sku-9'}",
        "step": "reserve",
    }


async def test_the_reply_cache_keeps_the_most_recent_keys():
    cache = MemoryReplyCache(capacity=2)
    replies = {key: Reserved(order_id=key, reservation_id=key) for key in "abc"}
    await cache.put("a", replies["a"])
    await cache.put("b", replies["b"])
    await cache.put("a", replies["a"])  # used again: now the most recent
    await cache.put("c", replies["c"])
    assert await cache.get("b") is None  # the oldest went
    assert await cache.get("a") is replies["a"]
    assert await cache.get("c") is replies["c"]


async def test_a_command_handler_must_return_a_reply_event():
    make = memory_buses()
    letters = []
    dead = asyncio.Event()

    def on_dead_letter(letter):
        letters.append(letter)
        dead.set()

    cache = MemoryReplyCache()
    policy = RetryPolicy.no_retry()
    async with make(on_dead_letter=on_dead_letter, retry=policy, redelivery=policy) as bus:

        @command_handler(bus, Reserve, group="warehouse", cache=cache)
        async def reserve(command: Reserve) -> Event:
            return {"reservation_id": "r"}  # type: ignore[return-value]

        await bus.start()
        await bus.publish(Reserve(order_id="o1"), headers={"idempotency-key": "s1:reserve"})
        await asyncio.wait_for(dead.wait(), 30)
    [letter] = letters
    assert letter.group == "warehouse"
    assert letter.error is not None
    assert letter.error["type"] == "sagaflow.errors.ConfigurationError"
    assert letter.error["message"] == (
        "command handler reserve must return a reply Event, got dict"
    )
    assert await cache.get("s1:reserve") is None  # nothing cached for a repeat
