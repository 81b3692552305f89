"""OpenTelemetry spans, checked with the SDK's in-memory exporter."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from sagaflow import MemorySagaStore, Orchestrator
from sagaflow.choreography import EventBus
from sagaflow.events import Event, EventRegistry
from sagaflow.examples.ecommerce import orchestrated
from sagaflow.examples.ecommerce.model import OrderRequest
from sagaflow.examples.ecommerce.services import Failures, Services
from sagaflow.observability.otel import OpenTelemetry
from sagaflow.retry import RetryPolicy
from sagaflow.transports.memory import MemoryTransport

registry = EventRegistry()


class Asked(Event, type="test.otel.asked.v1", registry=registry):
    n: int


class Answered(Event, type="test.otel.answered.v1", registry=registry):
    n: int


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


async def test_publish_and_process_spans_cross_processes(exporter, provider):
    # Two buses on one transport stand for two processes: only the message
    # (its ce-traceparent header) carries the context from one to the other.
    transport = MemoryTransport()
    tracing_a, tracing_b = OpenTelemetry(provider), OpenTelemetry(provider)
    front = EventBus(transport, registry=registry, middleware=[tracing_a], close_transport=False)
    back = EventBus(transport, registry=registry, middleware=[tracing_b], close_transport=False)
    answers = []

    @back.handler(Asked, group="back", emits=[Answered])
    async def answer(event: Asked) -> None:
        await back.publish(Answered(n=event.n))

    @front.handler(Answered, group="front", emits=[])
    async def done(event: Answered) -> None:
        answers.append(event.n)

    async with front, back:
        await front.publish(Asked(n=1), correlation_id="flow-9")
        await back.join()
        await front.join()
    assert answers == [1]
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {
        "publish test.otel.asked.v1",
        "process test.otel.asked.v1",
        "publish test.otel.answered.v1",
        "process test.otel.answered.v1",
    }
    asked, handled = spans["publish test.otel.asked.v1"], spans["process test.otel.asked.v1"]
    answered = spans["publish test.otel.answered.v1"]
    assert asked.kind is SpanKind.PRODUCER and handled.kind is SpanKind.CONSUMER
    # One trace, parented publish -> process -> publish -> process.
    assert len({s.context.trace_id for s in spans.values()}) == 1
    assert handled.parent.span_id == asked.context.span_id
    assert answered.parent.span_id == handled.context.span_id
    assert spans["process test.otel.answered.v1"].parent.span_id == answered.context.span_id
    attributes = handled.attributes
    assert attributes["messaging.system"] == "sagaflow"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.destination.name"] == "test.otel.asked.v1"
    assert attributes["messaging.consumer.group.name"] == "back"
    assert attributes["messaging.message.conversation_id"] == "flow-9"
    assert asked.attributes["messaging.operation.type"] == "send"
    # No payload on spans: only messaging and sagaflow attributes.
    assert all(key.startswith(("messaging.", "sagaflow.")) for key in attributes)


async def test_failed_handling_is_an_error_span(exporter, provider):
    tracing = OpenTelemetry(provider)
    async with EventBus(
        registry=registry,
        middleware=[tracing],
        retry=RetryPolicy(max_attempts=2, initial_delay=0.001, max_delay=0.001),
        redelivery=RetryPolicy(max_attempts=1),
    ) as bus:

        @bus.handler(Asked, group="g", emits=[])
        async def boom(event: Asked) -> None:
            raise KeyError("missing")

        await bus.publish(Asked(n=2))
        await bus.join()
    (process,) = [s for s in exporter.get_finished_spans() if s.name.startswith("process")]
    assert process.status.status_code is StatusCode.ERROR
    assert process.attributes["error.type"] == "KeyError"
    assert process.attributes["sagaflow.handler.attempts"] == 2
    assert process.events[0].name == "exception"


async def test_saga_step_and_compensation_spans(exporter, provider):
    tracing = OpenTelemetry(provider)
    services = Services(Failures(shipping_down=True))
    async with Orchestrator(MemorySagaStore(), hooks=[tracing.hooks]) as orchestrator:
        await orchestrated.place_order(orchestrator, services, OrderRequest(order_id="o1"))
    spans = exporter.get_finished_spans()
    names = [s.name for s in spans]
    assert names == [
        "step reserve_stock",
        "step charge_payment",
        "step ship_order",
        "compensate charge_payment",
        "compensate reserve_stock",
        "saga order",
    ]
    saga = spans[-1]
    assert all(s.parent.span_id == saga.context.span_id for s in spans[:-1])
    assert saga.attributes["sagaflow.saga.status"] == "compensated"
    assert saga.status.status_code is StatusCode.ERROR
    ship = spans[2]
    assert ship.status.status_code is StatusCode.ERROR
    assert ship.attributes["error.type"] == "ShippingUnavailableError"


async def test_remote_step_commands_join_the_saga_trace(exporter, provider):
    from sagaflow.examples.ecommerce import commands
    from sagaflow.orchestration.remote import RemoteSteps

    tracing = OpenTelemetry(provider)
    services = Services()
    async with EventBus(middleware=[tracing]) as bus:
        for name in ("inventory", "payment", "shipping", "notification"):
            commands.serve_commands(bus, services, name)
        saga = commands.remote_order_saga(RemoteSteps(bus))
        async with Orchestrator(MemorySagaStore(), hooks=[tracing.hooks]) as orchestrator:
            state = orchestrated.OrderState(**OrderRequest(order_id="o2").model_dump())
            await orchestrator.run(saga, state, saga_id="o2")
    spans = exporter.get_finished_spans()
    saga_span = next(s for s in spans if s.name == "saga order")
    assert {s.context.trace_id for s in spans} == {saga_span.context.trace_id}
    step = next(s for s in spans if s.name == "step charge_payment")
    command = next(s for s in spans if s.name == "publish shop.cmd.charge-payment.v1")
    assert command.parent.span_id == step.context.span_id


def test_missing_extra_names_it(monkeypatch):
    import sys

    from sagaflow.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    monkeypatch.delitem(sys.modules, "sagaflow.observability.otel", raising=False)
    with pytest.raises(MissingDependencyError, match="otel"):
        import sagaflow.observability.otel  # noqa: F401
