"""OpenTelemetry spans for sagas, steps, compensations, publishes and handlings (extra ``otel``).

`OpenTelemetry` is a bus `Middleware` and, through `OpenTelemetry.hooks`, saga
hooks::

    tracing = OpenTelemetry()              # the global tracer provider, or pass one
    bus = EventBus(transport, middleware=[tracing])
    orchestrator = Orchestrator(store, hooks=[tracing.hooks])

Spans follow the OpenTelemetry messaging semantic conventions:

* ``publish <event type>`` (kind PRODUCER) per published event, with
  ``messaging.system=sagaflow``, ``messaging.operation.type=send``,
  ``messaging.operation.name=publish``, ``messaging.destination.name``,
  ``messaging.message.id`` and ``messaging.message.conversation_id`` (the
  correlation id). Its context is written to the envelope's ``traceparent``,
  which travels in the ``ce-traceparent`` header to other processes.
* ``process <event type>`` (kind CONSUMER) per delivery, a child of the
  publisher's span (read back from ``traceparent``), with
  ``messaging.consumer.group.name``, the delivery count and handler attempts.
  Events published by the handler are children of it.
* ``saga <name>``, ``step <name>`` and ``compensate <name>`` (kind INTERNAL),
  with ``sagaflow.saga.id``; a step's span is current while its action runs,
  so the commands of remote steps continue the saga's trace.

No payload is put on spans.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

from sagaflow._optional import require
from sagaflow.choreography.middleware import HandleContext, HandleNext, Middleware, PublishNext
from sagaflow.envelope import Envelope
from sagaflow.events import Event
from sagaflow.orchestration.hooks import SagaHooks
from sagaflow.orchestration.result import SagaResult

trace = require("opentelemetry.trace", "otel")
context_api = require("opentelemetry.context", "otel")
_propagation = require("opentelemetry.trace.propagation.tracecontext", "otel")

__all__ = ["OpenTelemetry"]

SYSTEM = "sagaflow"
_PROPAGATOR = _propagation.TraceContextTextMapPropagator()


def _parent(traceparent: str | None) -> Any:
    if not traceparent:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


def _traceparent(span: Any) -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return carrier.get("traceparent")


def _fail(span: Any, error: BaseException) -> None:
    span.record_exception(error, attributes={"exception.escaped": True})
    span.set_attribute("error.type", type(error).__name__)
    span.set_status(trace.Status(trace.StatusCode.ERROR, type(error).__name__))


class OpenTelemetry(Middleware):
    """Creates OpenTelemetry spans for a bus (as middleware) and sagas (``.hooks``).

    Args:
        tracer_provider: Where spans go (default: the global provider).
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        self.tracer = trace.get_tracer("sagaflow", tracer_provider=tracer_provider)
        self.hooks: SagaHooks = _TracingHooks(self.tracer)
        """Pass to ``Orchestrator(hooks=[...])`` for saga, step and compensation spans."""

    async def on_publish(
        self, envelopes: Sequence[Envelope[Event]], call_next: PublishNext
    ) -> None:
        """Start a PRODUCER span per envelope and carry its context in ``traceparent``."""
        spans = []
        traced = []
        for envelope in envelopes:
            span = self.tracer.start_span(
                f"publish {envelope.type}",
                kind=trace.SpanKind.PRODUCER,
                attributes={
                    "messaging.system": SYSTEM,
                    "messaging.operation.type": "send",
                    "messaging.operation.name": "publish",
                    "messaging.destination.name": envelope.type,
                    "messaging.message.id": envelope.id,
                    "messaging.message.conversation_id": envelope.correlation_id,
                },
            )
            spans.append(span)
            traced.append(dataclasses.replace(envelope, traceparent=_traceparent(span)))
        try:
            await call_next(traced)
        except Exception as exc:
            for span in spans:
                _fail(span, exc)
            raise
        finally:
            for span in spans:
                span.end()

    async def on_handle(self, ctx: HandleContext, call_next: HandleNext) -> None:
        """Run the handling inside a CONSUMER span, child of the publisher's span."""
        envelope = ctx.envelope
        with self.tracer.start_as_current_span(
            f"process {envelope.type}",
            context=_parent(envelope.traceparent),
            kind=trace.SpanKind.CONSUMER,
            record_exception=False,
            set_status_on_exception=False,
            attributes={
                "messaging.system": SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": envelope.type,
                "messaging.consumer.group.name": ctx.group,
                "messaging.message.id": envelope.id,
                "messaging.message.conversation_id": envelope.correlation_id,
                "messaging.message.delivery_count": ctx.delivery_attempt,
            },
        ) as span:
            try:
                await call_next(ctx)
            except Exception as exc:
                span.set_attribute("sagaflow.handler.attempts", ctx.attempts)
                _fail(span, exc)
                raise
            span.set_attribute("sagaflow.handler.attempts", ctx.attempts)
            if ctx.duplicate:
                span.set_attribute("sagaflow.duplicate", True)


class _TracingHooks(SagaHooks):
    """Saga, step and compensation spans; a step's span is current while it runs."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer
        self._sagas: dict[str, Any] = {}
        self._steps: dict[str, dict[str, tuple[Any, Any]]] = {}  # saga -> attempt -> (span, token)

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        """Open the saga's span."""
        self._sagas[saga_id] = self.tracer.start_span(
            f"saga {saga_name}",
            attributes={"sagaflow.saga.id": saga_id, "sagaflow.saga.name": saga_name},
        )

    def saga_finished(self, result: SagaResult[Any]) -> None:
        """Close the saga's span with its outcome."""
        # Attempts cut short (a cancelled task) end with the saga.
        for span, _ in self._steps.pop(result.saga_id, {}).values():
            span.end()
        span = self._sagas.pop(result.saga_id, None)
        if span is None:
            return
        span.set_attribute("sagaflow.saga.status", result.status.value)
        if result.error:
            span.set_attribute("error.type", result.error.get("type", ""))
            span.set_status(trace.Status(trace.StatusCode.ERROR, result.status.value))
        span.end()

    def _open(self, saga_id: str, key: str, name: str, attempt: int) -> None:
        parent = self._sagas.get(saga_id)
        span = self.tracer.start_span(
            name,
            context=trace.set_span_in_context(parent) if parent is not None else None,
            attributes={"sagaflow.saga.id": saga_id, "sagaflow.step.attempt": attempt},
        )
        # Hooks run in the task that runs the action: make the span current there
        # so that what the action publishes (remote steps' commands) joins the trace.
        token = context_api.attach(trace.set_span_in_context(span))
        self._steps.setdefault(saga_id, {})[key] = (span, token)

    def _close(self, saga_id: str, key: str, error: BaseException | None = None) -> None:
        opened = self._steps.get(saga_id, {}).pop(key, None)
        if opened is None:
            return
        span, token = opened
        # Detaching from another context (a cancelled task) only logs: ignore it.
        with contextlib.suppress(Exception):
            context_api.detach(token)
        if error is not None:
            _fail(span, error)
        span.end()

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        """Open a step attempt's span."""
        self._open(saga_id, step, f"step {step}", attempt)

    def step_succeeded(self, saga_id: str, step: str, attempt: int) -> None:
        """Close it."""
        self._close(saga_id, step)

    def step_failed(
        self, saga_id: str, step: str, attempt: int, error: BaseException, will_retry: bool
    ) -> None:
        """Close it with the error."""
        self._close(saga_id, step, error)

    def compensation_started(self, saga_id: str, step: str, attempt: int) -> None:
        """Open a compensation attempt's span."""
        self._open(saga_id, f"undo:{step}", f"compensate {step}", attempt)

    def step_compensated(self, saga_id: str, step: str, attempt: int) -> None:
        """Close it."""
        self._close(saga_id, f"undo:{step}")

    def compensation_failed(
        self, saga_id: str, step: str, attempt: int, error: BaseException, will_retry: bool
    ) -> None:
        """Close it with the error."""
        self._close(saga_id, f"undo:{step}", error)
