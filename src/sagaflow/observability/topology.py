"""The choreography topology: which group handles which event, and what it emits.

Built from the subscriptions of one or more buses (`Topology.from_bus`) and the
events each handler declares with ``emits=`` (see `EventBus.subscribe`).
`Topology.check` reports two kinds of broken wiring that no test of a single
handler catches:

* **unconsumed events**: a handler emits an event type that no group handles
  (the flow silently ends there);
* **unemitted events**: a handler waits for an event type that no handler emits
  and that is not an *entry point* (published from outside any handler, like
  ``OrderPlaced`` by the order service): it will never run.

Handlers that declare nothing (``emits`` omitted) are listed as *undeclared*;
their emits are unknown, so a strict check fails on them.

Example:
    ``Topology.from_bus(bus, entry_points=[OrderPlaced]).check().raise_for_problems()``
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sagaflow.choreography.bus import EventBus
from sagaflow.errors import ConfigurationError
from sagaflow.events import Event, EventRegistry

__all__ = ["HandlerInfo", "Topology", "TopologyError", "TopologyReport"]


class TopologyError(ConfigurationError):
    """The topology check found events nobody consumes or handlers nobody feeds."""


@dataclass(frozen=True, slots=True)
class HandlerInfo:
    """One subscription as the topology sees it.

    Attributes:
        group: The consumer group.
        handler: The handler's qualified name.
        consumes: Wire names of the event types it receives.
        emits: Wire names it declared it may publish, or ``None`` if undeclared.
    """

    group: str
    handler: str
    consumes: tuple[str, ...]
    emits: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class TopologyReport:
    """What `Topology.check` found.

    Attributes:
        unconsumed: ``(event type, emitting groups)`` for emitted types no group handles.
        unemitted: ``(group, event type)`` for handled types nobody emits.
        undeclared: Groups whose handlers did not declare ``emits=``.
        strict: Whether undeclared handlers count as problems.
    """

    unconsumed: tuple[tuple[str, tuple[str, ...]], ...]
    unemitted: tuple[tuple[str, str], ...]
    undeclared: tuple[str, ...]
    strict: bool = False

    @property
    def ok(self) -> bool:
        """Whether there is nothing to fix."""
        return not (self.unconsumed or self.unemitted or (self.strict and self.undeclared))

    def __str__(self) -> str:
        if self.ok and not self.undeclared:
            return "topology ok: every emitted event is consumed, every handler can run"
        lines = ["topology ok" if self.ok else "topology problems:"]
        for event_type, groups in self.unconsumed:
            lines.append(f"  nobody consumes {event_type} (emitted by {', '.join(groups)})")
        for group, event_type in self.unemitted:
            lines.append(f"  {group} waits for {event_type}, which nobody emits")
        if self.undeclared:
            label = "  undeclared emits" if self.strict else "  (undeclared emits"
            lines.append(f"{label}: {', '.join(self.undeclared)}{'' if self.strict else ')'}")
        return "\n".join(lines)

    def raise_for_problems(self) -> None:
        """Raise `TopologyError` with the report when it is not `ok`."""
        if not self.ok:
            raise TopologyError(str(self))


@dataclass(frozen=True, slots=True)
class Topology:
    """The handlers of a choreography and the events that connect them.

    Attributes:
        handlers: Every subscription, in subscription order.
        entry_points: Event types published from outside handlers (never flagged
            as unemitted).
        external: Event types consumed outside these buses (never flagged as
            unconsumed), such as replies awaited by another system.
    """

    handlers: tuple[HandlerInfo, ...]
    entry_points: frozenset[str] = field(default_factory=frozenset)
    external: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_bus(
        cls,
        *buses: EventBus,
        entry_points: Iterable[type[Event] | str] = (),
        external: Iterable[type[Event] | str] = (),
    ) -> Topology:
        """Read the subscriptions of ``buses`` (one per service, or one for all).

        Args:
            buses: The buses, subscribed but not necessarily started.
            entry_points: Events published from outside any handler.
            external: Events consumed outside these buses.
        """
        if not buses:
            raise ConfigurationError("Topology.from_bus needs at least one bus")
        registry = buses[0].registry
        handlers = []
        for bus in buses:
            for sub in bus.subscriptions:
                emits = None
                if sub.emits is not None:
                    emits = tuple(_names(bus.registry, sub.emits))
                handlers.append(
                    HandlerInfo(
                        group=sub.group,
                        handler=getattr(sub.handler, "__qualname__", repr(sub.handler)),
                        consumes=tuple(sorted(bus.registry.subclasses_of(sub.event_type))),
                        emits=emits,
                    )
                )
        return cls(
            tuple(handlers),
            frozenset(_names(registry, entry_points)),
            frozenset(_names(registry, external)),
        )

    def consumed(self) -> set[str]:
        """Event types some group handles."""
        return {name for h in self.handlers for name in h.consumes}

    def emitted(self) -> set[str]:
        """Event types some handler declared, plus the entry points."""
        return {name for h in self.handlers for name in h.emits or ()} | set(self.entry_points)

    def check(self, *, strict: bool = False) -> TopologyReport:
        """Find unconsumed and unemitted events (and, if ``strict``, undeclared handlers)."""
        consumed = self.consumed() | set(self.external)
        emitted = self.emitted()
        emitters: dict[str, list[str]] = {}
        for handler in self.handlers:
            for name in handler.emits or ():
                emitters.setdefault(name, []).append(handler.group)
        unconsumed = tuple(
            (name, tuple(dict.fromkeys(groups)))
            for name, groups in sorted(emitters.items())
            if name not in consumed
        )
        # A handler with undeclared emits could emit anything: only flag waits
        # when every handler declared what it emits, or strict mode asks.
        undeclared = tuple(dict.fromkeys(h.group for h in self.handlers if h.emits is None))
        unemitted = tuple(
            (handler.group, name)
            for handler in self.handlers
            for name in handler.consumes
            if name not in emitted and (strict or not undeclared)
        )
        return TopologyReport(unconsumed, unemitted, undeclared, strict)


def _names(registry: EventRegistry, items: Iterable[type[Event] | str]) -> list[str]:
    names: list[str] = []
    for item in items:
        if isinstance(item, str):
            names.append(item)
        else:
            names.extend(sorted(registry.subclasses_of(item)))
    return names
