"""OpenTelemetry rules no other test exercised: roots, publish errors, duplicates, odd hooks."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from sagaflow import SagaStatus
from sagaflow.choreography import EventBus
from sagaflow.events import Event, EventRegistry
from sagaflow.observability.otel import OpenTelemetry
from sagaflow.orchestration.result import SagaResult
from sagaflow.transports.memory import MemoryTransport

registry = EventRegistry()


class Rang(Event, type="test.otel-rules.rang.v1", registry=registry):
    n: int


class State(BaseModel):
    pass


@pytest.fixture
def exporter():
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return OpenTelemetry(provider)


def result(saga_id: str, status: SagaStatus, error: dict[str, str] | None = None) -> SagaResult:
    return SagaResult(saga_id, "order", status, State(), (), error)


async def test_an_event_from_an_untraced_publisher_starts_a_new_trace(exporter, tracing):
    transport = MemoryTransport()
    plain = EventBus(transport, registry=registry, close_transport=False)
    traced = EventBus(transport, registry=registry, middleware=[tracing], close_transport=False)
    seen = []

    @traced.handler(Rang, group="g", emits=[])
    async def handle(event: Rang) -> None:
        seen.append(event.n)

    async with plain, traced:
        await traced.start()
        await plain.publish(Rang(n=1))  # no traceparent on the envelope
        await traced.join()
    assert seen == [1]
    (process,) = exporter.get_finished_spans()
    assert process.name == "process test.otel-rules.rang.v1"
    assert process.kind is SpanKind.CONSUMER
    assert process.parent is None


async def test_a_failed_publish_ends_its_span_as_an_error(exporter, tracing):
    class Refusing(MemoryTransport):
        async def publish(self, messages):  # type: ignore[no-untyped-def]
            raise ConnectionError("broker down")

    bus = EventBus(Refusing(), registry=registry, middleware=[tracing])
    with pytest.raises(Exception, match="broker down") as raised:
        await bus.publish(Rang(n=1))
    (span,) = exporter.get_finished_spans()
    assert span.name == "publish test.otel-rules.rang.v1" and span.kind is SpanKind.PRODUCER
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == type(raised.value).__name__
    assert [e.name for e in span.events] == ["exception"]
    await bus.stop()


async def test_a_duplicate_delivery_is_marked(exporter, tracing):
    async with EventBus(registry=registry, middleware=[tracing]) as bus:
        calls = []

        @bus.handler(Rang, group="g", emits=[])
        async def handle(event: Rang) -> None:
            calls.append(event.n)

        await bus.start()
        await bus.publish(Rang(n=1), id="same")
        await bus.join()
        await bus.publish(Rang(n=1), id="same")
        await bus.join()
    assert calls == [1]
    processes = [s for s in exporter.get_finished_spans() if s.name.startswith("process")]
    assert [s.attributes.get("sagaflow.duplicate") for s in processes] == [None, True]
    assert all(s.status.status_code is not StatusCode.ERROR for s in processes)


def test_saga_end_closes_attempts_cut_short(exporter, tracing):
    hooks = tracing.hooks
    hooks.saga_started("s1", "order")
    hooks.step_started("s1", "reserve", 1)
    hooks.compensation_started("s1", "charge", 1)
    # No step_succeeded: the attempt was cancelled with the saga.
    hooks.saga_finished(result("s1", SagaStatus.FAILED, {"type": "Cancelled", "message": ""}))
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"step reserve", "compensate charge", "saga order"}
    saga = spans["saga order"]
    assert saga.status.status_code is StatusCode.ERROR
    assert saga.attributes["error.type"] == "Cancelled"
    assert spans["step reserve"].parent.span_id == saga.context.span_id


def test_hooks_for_unknown_sagas_and_attempts_do_nothing(exporter, tracing):
    hooks = tracing.hooks
    hooks.saga_finished(result("never-started", SagaStatus.COMPLETED))
    hooks.step_succeeded("never-started", "a", 1)
    hooks.step_compensated("never-started", "a", 1)
    assert exporter.get_finished_spans() == ()


def test_a_failed_compensation_attempt_is_an_error_span(exporter, tracing):
    hooks = tracing.hooks
    hooks.saga_started("s1", "order")
    hooks.compensation_started("s1", "charge", 1)
    hooks.compensation_failed("s1", "charge", 1, ValueError("refund refused"), True)
    hooks.compensation_started("s1", "charge", 2)
    hooks.step_compensated("s1", "charge", 2)
    hooks.saga_finished(result("s1", SagaStatus.COMPENSATED, {"type": "X", "message": ""}))
    spans = exporter.get_finished_spans()
    first, second = [s for s in spans if s.name == "compensate charge"]
    assert first.status.status_code is StatusCode.ERROR
    assert first.attributes["error.type"] == "ValueError"
    assert first.attributes["sagaflow.step.attempt"] == 1
    assert second.status.status_code is StatusCode.UNSET
    assert second.attributes["sagaflow.step.attempt"] == 2
