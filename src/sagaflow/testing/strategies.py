"""Hypothesis strategies for sagaflow flows (needs ``hypothesis``, in the ``test`` extra).

* `failure_schedules(saga)`: which attempts of which steps and compensations fail,
  time out or hang; apply one with `FailureSchedule.apply`.
* `events(EventClass)` and `registered_events(registry)`: valid instances.
* `envelopes(...)`: valid envelopes around generated events.
* `hostile_messages(serializer, topic)`: messages a consumer must dead-letter
  without crashing: malformed JSON, wrong types, oversized, bad signature,
  unknown type, missing headers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from hypothesis import strategies as st

from sagaflow.clock import Clock
from sagaflow.envelope import Envelope
from sagaflow.events import Event, EventRegistry, default_registry
from sagaflow.orchestration.definition import Saga, StepKind
from sagaflow.serialization import JsonSerializer
from sagaflow.testing.faults import Fault, FaultKind, inject_faults
from sagaflow.transports.base import Message

__all__ = [
    "FailureSchedule",
    "envelopes",
    "events",
    "failure_schedules",
    "hostile_messages",
    "registered_events",
]

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class FailureSchedule:
    """Faults for a saga's actions and compensations, by step name."""

    steps: dict[str, Fault] = field(default_factory=dict)
    compensations: dict[str, Fault] = field(default_factory=dict)

    def apply(self, saga: Saga[Any], *, clock: Clock | None = None) -> Saga[Any]:
        """Return ``saga`` with these faults injected (see `inject_faults`)."""
        return inject_faults(saga, steps=self.steps, compensations=self.compensations, clock=clock)

    def describe(self) -> str:
        """One line per faulty attempt, for test failure messages."""
        lines = []
        for label, faults in (("step", self.steps), ("compensation", self.compensations)):
            for name, fault in faults.items():
                for attempt, kind in sorted(fault.attempts.items()):
                    lines.append(f"{label} {name} attempt {attempt}: {kind.value}")
        return "\n".join(lines) or "no faults"


def _fault(kinds: Sequence[FaultKind], max_attempt: int) -> st.SearchStrategy[Fault]:
    return st.dictionaries(
        st.integers(1, max_attempt), st.sampled_from(list(kinds)), max_size=max_attempt
    ).map(lambda attempts: Fault(attempts=attempts))


@st.composite
def failure_schedules(
    draw: st.DrawFn,
    saga: Saga[Any],
    *,
    kinds: Sequence[FaultKind] = (FaultKind.RAISE, FaultKind.TIMEOUT),
    compensation_kinds: Sequence[FaultKind] = (FaultKind.RAISE,),
    max_attempt: int = 3,
) -> FailureSchedule:
    """Any schedule of faults for ``saga``'s steps and compensations.

    Pivot steps only get RAISE faults: a pivot whose outcome is unknown cannot be
    undone, by definition, so TIMEOUT there tests nothing a saga can promise.

    Args:
        draw: Supplied by hypothesis.
        saga: The definition whose steps may fail.
        kinds: Fault kinds for actions (TIMEOUT needs a step ``timeout``).
        compensation_kinds: Fault kinds for compensations.
        max_attempt: Highest attempt number that may fault.
    """
    steps: dict[str, Fault] = {}
    compensations: dict[str, Fault] = {}
    for step in saga.steps():
        step_kinds = [FaultKind.RAISE] if step.kind is StepKind.PIVOT else list(kinds)
        if step.timeout is None:
            step_kinds = [k for k in step_kinds if k is not FaultKind.TIMEOUT] or [FaultKind.RAISE]
        fault = draw(_fault(step_kinds, max_attempt))
        if fault.attempts:
            steps[step.name] = fault
        if step.compensate is not None and compensation_kinds:
            comp = draw(_fault(compensation_kinds, max_attempt))
            if comp.attempts:
                compensations[step.name] = comp
    return FailureSchedule(steps, compensations)


def events(event_type: type[E], **overrides: st.SearchStrategy[Any]) -> st.SearchStrategy[E]:
    """Valid instances of ``event_type``; pass strategies to pin some fields."""
    return st.builds(event_type, **overrides)


def registered_events(registry: EventRegistry | None = None) -> st.SearchStrategy[Event]:
    """Instances of any concrete event class registered in ``registry``."""
    registry = registry if registry is not None else default_registry
    classes = [registry.get(name) for name in sorted(registry)]
    if not classes:
        raise ValueError("the registry has no event classes")
    return st.one_of([events(cls) for cls in classes])


_IDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=24)


@st.composite
def envelopes(
    draw: st.DrawFn,
    event_strategy: st.SearchStrategy[Event],
    *,
    registry: EventRegistry | None = None,
) -> Envelope[Event]:
    """Valid envelopes around events drawn from ``event_strategy``."""
    registry = registry if registry is not None else default_registry
    event = draw(event_strategy)
    event_id = draw(_IDS)
    return Envelope.wrap(
        event,
        id=event_id,
        type=registry.type_of(type(event)),
        source=draw(st.sampled_from(["/orders", "/inventory", "svc"])),
        time=datetime(2026, 1, 1, tzinfo=UTC),
        correlation_id=draw(st.one_of(st.just(event_id), _IDS)),
        causation_id=draw(st.one_of(st.none(), _IDS)),
        subject=draw(st.one_of(st.none(), _IDS)),
        partition_key=draw(st.one_of(st.none(), _IDS)),
    )


@st.composite
def hostile_messages(
    draw: st.DrawFn,
    serializer: JsonSerializer,
    topic: str,
    event_strategy: st.SearchStrategy[Event] | None = None,
) -> tuple[str, Message]:
    """Messages a consumer must dead-letter, with a label saying what is wrong.

    Each message breaks only the rule its label names: with a signing
    serializer, the others are signed again (so the signature does not give
    them away), a ``bad-signature`` body is still valid JSON, and an
    ``oversized`` body is a valid one padded past ``max_size``.

    Returns:
        ``(kind, message)`` where kind is one of ``malformed-json``, ``wrong-types``,
        ``oversized``, ``bad-signature``, ``unknown-type``, ``missing-headers``.
    """
    registry = serializer.registry
    strategy = event_strategy if event_strategy is not None else registered_events(registry)
    envelope = draw(envelopes(strategy, registry=registry))
    good = serializer.encode(envelope, topic=topic)
    headers = dict(good.headers)
    kinds = ["malformed-json", "wrong-types", "oversized", "unknown-type", "missing-headers"]
    if serializer.signer is not None:
        kinds.append("bad-signature")
    kind = draw(st.sampled_from(kinds))
    body = bytes(good.body)
    if kind == "malformed-json":
        body = draw(st.sampled_from([b"{", b"not json", b"\xff\xfe", b"[1, 2", b""]))
    elif kind == "wrong-types":
        body = json.dumps(draw(st.sampled_from([[], 42, "text", None, {"unexpected": 1}]))).encode()
    elif kind == "oversized":
        body = body + b" " * (serializer.max_size + 1 - len(body))
    elif kind == "unknown-type":
        headers = {k: ("no.such.event.v9" if k == "ce-type" else v) for k, v in headers.items()}
    elif kind == "missing-headers":
        headers = {k: v for k, v in headers.items() if k not in ("ce-type", "ce-id")}
    elif kind == "bad-signature":
        body = body + b" "  # trailing whitespace: still valid JSON
    if serializer.signer is not None and kind != "bad-signature":
        headers.update(serializer.signer.sign(headers, body))
    return kind, Message(id=good.id, topic=topic, body=body, headers=headers, key=good.key)
