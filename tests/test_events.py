from __future__ import annotations

import pytest
from pydantic import ValidationError

from sagaflow.errors import (
    ConfigurationError,
    DuplicateEventTypeError,
    UnknownEventTypeError,
)
from sagaflow.events import Event, EventRegistry, default_registry


def test_event_class_keyword_registers_in_default_registry() -> None:
    class Placed(Event, type="test.events.placed.v1"):
        order_id: str

    assert Placed.event_type == "test.events.placed.v1"
    assert default_registry.get("test.events.placed.v1") is Placed
    assert default_registry.type_of(Placed) == "test.events.placed.v1"


def test_events_are_frozen_and_refuse_unknown_fields() -> None:
    registry = EventRegistry()

    class Paid(Event, type="paid.v1", registry=registry):
        amount: int

    paid = Paid(amount=3)
    with pytest.raises(ValidationError):
        paid.amount = 4  # type: ignore[misc]
    with pytest.raises(ValidationError):
        Paid(amount=3, extra=1)  # type: ignore[call-arg]


def test_private_registry_is_isolated() -> None:
    registry = EventRegistry()

    class Private(Event, type="test.events.private.v1", registry=registry):
        pass

    assert registry.get("test.events.private.v1") is Private
    assert "test.events.private.v1" not in default_registry
    assert Private in registry
    assert len(registry) == 1
    assert list(registry) == ["test.events.private.v1"]


def _make(registry: EventRegistry, name: str) -> type[Event]:
    # Same module and qualname on every call: a re-definition, not a conflict.
    class Again(Event, type=name, registry=registry):
        pass

    return Again


def test_duplicate_wire_name_is_refused() -> None:
    registry = EventRegistry()

    class One(Event, type="dup.v1", registry=registry):
        pass

    with pytest.raises(DuplicateEventTypeError) as info:

        class Two(Event, type="dup.v1", registry=registry):
            pass

    assert info.value.type_name == "dup.v1"
    assert "One" in str(info.value)
    assert registry.get("dup.v1") is One


def test_redefinition_of_same_class_replaces_it() -> None:
    registry = EventRegistry()
    first = _make(registry, "again.v1")
    second = _make(registry, "again.v1")
    assert first is not second
    assert registry.get("again.v1") is second
    assert registry.register(second) is second  # idempotent
    with pytest.raises(ConfigurationError):
        registry.type_of(first)


def test_abstract_events_and_subclasses() -> None:
    registry = EventRegistry()

    class OrderEvent(Event):
        order_id: str

    class Placed(OrderEvent, type="o.placed.v1", registry=registry):
        pass

    class Cancelled(OrderEvent, type="o.cancelled.v1", registry=registry):
        reason: str

    assert OrderEvent.event_type is None
    assert registry.subclasses_of(OrderEvent) == {
        "o.placed.v1": Placed,
        "o.cancelled.v1": Cancelled,
    }
    with pytest.raises(ConfigurationError):
        registry.type_of(OrderEvent)
    with pytest.raises(ConfigurationError):
        registry.register(OrderEvent)


def test_subclass_does_not_inherit_wire_name() -> None:
    registry = EventRegistry()

    class Base(Event, type="base.v1", registry=registry):
        pass

    class Child(Base):
        pass

    assert Child.event_type is None
    assert Base.event_type == "base.v1"


def test_unknown_type_and_bad_names() -> None:
    registry = EventRegistry()
    with pytest.raises(UnknownEventTypeError) as info:
        registry.get("nope.v1")
    assert info.value.type_name == "nope.v1"
    with pytest.raises(ConfigurationError):

        class Bad(Event, type="has space", registry=registry):
            pass

    with pytest.raises(ConfigurationError):

        class NoType(Event, registry=registry):
            pass


def test_register_under_explicit_name() -> None:
    registry = EventRegistry()

    class Legacy(Event):
        pass

    registry.register(Legacy, "legacy.v1")
    assert registry.get("legacy.v1") is Legacy
    assert repr(registry) == "<EventRegistry 1 types>"
