"""Typed events and the registry that maps their wire names to classes.

An event is a frozen pydantic model with a versioned wire name, given as a class
keyword::

    class OrderPlaced(Event, type="order.placed.v1"):
        order_id: str
        total_cents: int

Declaring the class registers it in the default registry (or in the one passed as
``registry=``). A class declared without ``type=`` is *abstract*: it cannot be
published, but a handler subscribed to it receives every registered subclass.

The wire name is what travels (the CloudEvents ``type``); the Python class name
may change freely. Change the wire name (``order.placed.v2``) when the schema
changes incompatibly, and keep the old class while old messages may still arrive.
"""

from __future__ import annotations

from collections.abc import Iterator
from threading import Lock
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from sagaflow.errors import ConfigurationError, DuplicateEventTypeError, UnknownEventTypeError
from sagaflow.transports.base import validate_name

__all__ = ["Event", "EventRegistry", "default_registry"]


class EventRegistry:
    """A two-way map between wire names and event classes.

    Registering a second, different class under a name already taken raises
    `DuplicateEventTypeError`. Registering the same class again is a no-op, and so
    is re-declaring a class with the same module and qualified name (a module
    reload, a doc snippet run twice): the newer definition replaces the older.

    The default registry (`default_registry`) receives every event class declared
    with ``type=``; pass ``registry=`` in the class keywords, or call `register`,
    to use a private one (tests, plugins).

    Registration is thread-safe; lookups are plain dictionary reads.
    """

    __slots__ = ("_by_class", "_by_name", "_lock")

    def __init__(self) -> None:
        self._by_name: dict[str, type[Event]] = {}
        self._by_class: dict[type[Event], str] = {}
        self._lock = Lock()

    def register(self, cls: type[Event], type_name: str | None = None) -> type[Event]:
        """Register ``cls`` under ``type_name`` (default: its declared wire name).

        Returns:
            ``cls``, so that the method can be used as a decorator.

        Raises:
            ConfigurationError: No wire name, or an unsafe one.
            DuplicateEventTypeError: Another class already owns the name.
        """
        name = type_name if type_name is not None else cls.event_type
        if name is None:
            raise ConfigurationError(
                f"{cls.__qualname__} has no wire name; declare it with "
                f'class {cls.__name__}(Event, type="name.v1")'
            )
        validate_name("event type", name)
        with self._lock:
            current = self._by_name.get(name)
            if current is not None and current is not cls:
                if not _same_definition(current, cls):
                    raise DuplicateEventTypeError(
                        name,
                        f"event type {name!r} is already registered to "
                        f"{current.__module__}.{current.__qualname__}; "
                        f"cannot register {cls.__module__}.{cls.__qualname__}",
                    )
                del self._by_class[current]
            self._by_name[name] = cls
            self._by_class[cls] = name
        return cls

    def get(self, type_name: str) -> type[Event]:
        """Return the class registered under ``type_name``.

        Raises:
            UnknownEventTypeError: Nothing is registered under that name.
        """
        try:
            return self._by_name[type_name]
        except KeyError:
            raise UnknownEventTypeError(type_name) from None

    def type_of(self, cls: type[Event]) -> str:
        """Return the wire name of a registered class.

        Raises:
            ConfigurationError: The class is abstract or not in this registry.
        """
        try:
            return self._by_class[cls]
        except KeyError:
            raise ConfigurationError(
                f"{cls.__module__}.{cls.__qualname__} is not registered in this registry "
                "(abstract events cannot be published)"
            ) from None

    def subclasses_of(self, base: type[Event]) -> dict[str, type[Event]]:
        """Return every registered class that is ``base`` or derives from it, by wire name."""
        return {name: cls for name, cls in self._by_name.items() if issubclass(cls, base)}

    def __contains__(self, item: object) -> bool:
        return item in self._by_name or item in self._by_class

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._by_name))

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        return f"<EventRegistry {len(self._by_name)} types>"


def _same_definition(a: type[Event], b: type[Event]) -> bool:
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


default_registry = EventRegistry()
"""The registry that event classes join unless they name another one."""


class Event(BaseModel):
    """Base class of every event: an immutable pydantic model with a wire name.

    Declare concrete events with the ``type`` class keyword (a versioned, dotted
    name such as ``"order.placed.v1"``) and, optionally, ``registry`` (default:
    `default_registry`). Unknown fields are refused, so a typo in a producer
    fails loudly instead of silently dropping data.

    Example:
        >>> class OrderPlaced(Event, type="doc.order.placed.v1"):
        ...     order_id: str
        >>> OrderPlaced.event_type
        'doc.order.placed.v1'
        >>> OrderPlaced(order_id="o-1")
        OrderPlaced(order_id='o-1')
    """

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        # JSON must round-trip every value: bytes as base64 (not raw UTF-8) and
        # non-finite floats as the JSON5 constants pydantic reads back.
        ser_json_bytes="base64",
        val_json_bytes="base64",
        ser_json_inf_nan="constants",
    )

    event_type: ClassVar[str | None] = None
    """The wire name of this class, or ``None`` for an abstract event class."""

    def __init_subclass__(
        cls, *, type: str | None = None, registry: EventRegistry | None = None, **kwargs: Any
    ) -> None:
        # The keywords are consumed in __pydantic_init_subclass__, once the model
        # is complete; this override only keeps object.__init_subclass__ from
        # refusing them.
        super().__init_subclass__(**kwargs)

    @classmethod
    def __pydantic_init_subclass__(
        cls, *, type: str | None = None, registry: EventRegistry | None = None, **kwargs: Any
    ) -> None:
        """Register the finished class under its wire name."""
        super().__pydantic_init_subclass__(**kwargs)
        # Each class owns its wire name: a subclass does not inherit its parent's.
        cls.event_type = type
        if type is not None:
            (registry if registry is not None else default_registry).register(cls)
        elif registry is not None:
            raise ConfigurationError(f"{cls.__qualname__}: registry= needs type= as well")
