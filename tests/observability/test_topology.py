"""Topology: the example's wiring, broken wirings, assert_topology, the Mermaid graph."""

from __future__ import annotations

import pytest

from sagaflow.choreography import EventBus
from sagaflow.errors import ConfigurationError
from sagaflow.events import Event, EventRegistry
from sagaflow.examples.ecommerce import choreographed
from sagaflow.examples.ecommerce.events import OrderPlaced
from sagaflow.examples.ecommerce.services import Services
from sagaflow.observability import Topology, TopologyError, topology_graph
from sagaflow.testing.topology import assert_topology

registry = EventRegistry()


class A(Event, type="test.topo.a.v1", registry=registry):
    pass


class B(Event, type="test.topo.b.v1", registry=registry):
    pass


class C(Event, type="test.topo.c.v1", registry=registry):
    pass


async def noop(event: Event) -> None:
    return None


def test_the_example_choreography_is_well_wired():
    bus = EventBus()
    choreographed.wire(bus, Services())
    report = assert_topology(bus, entry_points=[OrderPlaced], strict=True)
    assert report.ok and not report.undeclared


def test_the_example_split_per_service_is_well_wired_too():
    buses = []
    for name in ("inventory", "payment", "shipping", "notification", "orders"):
        bus = EventBus()
        choreographed.wire(bus, Services(), only={name})
        buses.append(bus)
    assert_topology(*buses, entry_points=[OrderPlaced], strict=True)


def test_without_the_entry_point_inventory_waits_for_nothing():
    bus = EventBus()
    choreographed.wire(bus, Services())
    with pytest.raises(AssertionError, match=r"inventory waits for shop\.order\.placed\.v1"):
        assert_topology(bus)


def test_unconsumed_and_unemitted_events():
    bus = EventBus(registry=registry)
    bus.subscribe(A, noop, group="g1", emits=[B])
    bus.subscribe(C, noop, group="g2", emits=[])
    report = Topology.from_bus(bus, entry_points=[A]).check()
    assert report.unconsumed == (("test.topo.b.v1", ("g1",)),)
    assert report.unemitted == (("g2", "test.topo.c.v1"),)
    assert not report.ok
    assert "nobody consumes test.topo.b.v1 (emitted by g1)" in str(report)
    with pytest.raises(TopologyError):
        report.raise_for_problems()
    # Consumed elsewhere: declared external, the check passes for it.
    external = Topology.from_bus(bus, entry_points=[A, C], external=[B]).check()
    assert external.ok


def test_undeclared_emits_fail_only_in_strict_mode():
    bus = EventBus(registry=registry)
    bus.subscribe(A, noop, group="g1")
    report = Topology.from_bus(bus, entry_points=[A]).check()
    assert report.ok and report.undeclared == ("g1",)
    assert not Topology.from_bus(bus, entry_points=[A]).check(strict=True).ok


def test_emits_must_be_event_classes():
    bus = EventBus(registry=registry)
    with pytest.raises(ConfigurationError):
        bus.subscribe(A, noop, group="g", emits=["test.topo.b.v1"])  # type: ignore[list-item]


def test_mermaid_graph_marks_problems_and_entry_points():
    bus = EventBus(registry=registry)
    bus.subscribe(A, noop, group="g1", emits=[B])
    graph = topology_graph(Topology.from_bus(bus, entry_points=[A]))
    assert graph.splitlines()[0] == "flowchart LR"
    assert "    e_test_topo_a_v1 --> g_g1" in graph
    assert "    g_g1 -.-> e_test_topo_b_v1" in graph
    assert "    class e_test_topo_b_v1 problem" in graph
    assert "    class e_test_topo_a_v1 entry" in graph
