"""`assert_topology`: the choreography's wiring as a test assertion.

def test_every_event_has_a_consumer():
    bus = EventBus()
    wire(bus, Services())
    assert_topology(bus, entry_points=[OrderPlaced])
"""

from __future__ import annotations

from collections.abc import Iterable

from sagaflow.choreography.bus import EventBus
from sagaflow.events import Event
from sagaflow.observability.topology import Topology, TopologyReport

__all__ = ["assert_topology"]


def assert_topology(
    *buses: EventBus,
    entry_points: Iterable[type[Event] | str] = (),
    external: Iterable[type[Event] | str] = (),
    strict: bool = False,
) -> TopologyReport:
    """Fail (`AssertionError`) when an emitted event has no consumer or a handler cannot run.

    Args:
        buses: The buses of the system, subscribed (one per service, or one).
        entry_points: Events published from outside handlers.
        external: Events consumed outside these buses.
        strict: Also fail on handlers that did not declare ``emits=``.

    Returns:
        The report (for further checks).
    """
    topology = Topology.from_bus(*buses, entry_points=entry_points, external=external)
    report = topology.check(strict=strict)
    if not report.ok:
        raise AssertionError(str(report))
    return report
