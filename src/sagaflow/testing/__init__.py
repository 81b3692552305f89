"""sagaflow's testing kit: fakes, fault injection, crash points, strategies, assertions.

Importing `sagaflow` never imports this package, and this package imports
pytest and hypothesis only in the modules that need them (the contract suites,
`strategies` and `stateful`), loaded on first use of their names.

* `FakeClock`: virtual time for timeouts, backoff, deadlines and leases.
* `Fault`, `inject_faults`, `faulty`, `FaultyTransport`: deterministic failures.
* `explore_crash_points`, `CrashingStore`, `SimulatedCrash`: crash-point exploration.
* `assert_saga`, `assert_compensated_in_reverse`: saga outcome and log checks;
  `assert_flow`, `assert_topology`: choreography checks.
* `failure_schedules`, `events`, `registered_events`, `envelopes`,
  `hostile_messages` (hypothesis strategies) and `ChoreographyMachine`.
* `SagaStoreContract`, `TransportContract`: contract suites for your own backends.
"""

from __future__ import annotations

import importlib
from typing import Any

from sagaflow.testing.assertions import assert_compensated_in_reverse, assert_saga
from sagaflow.testing.clock import FakeClock
from sagaflow.testing.crash import CrashingStore, CrashReport, SimulatedCrash, explore_crash_points
from sagaflow.testing.faults import (
    Fault,
    FaultKind,
    FaultyTransport,
    InjectedFault,
    faulty,
    inject_faults,
)

__all__ = [
    "ChoreographyMachine",
    "CrashReport",
    "CrashingStore",
    "FailureSchedule",
    "FakeClock",
    "Fault",
    "FaultKind",
    "FaultyTransport",
    "InjectedFault",
    "SagaStoreContract",
    "SimulatedCrash",
    "TransportContract",
    "assert_compensated_in_reverse",
    "assert_flow",
    "check_flow",
    "assert_saga",
    "assert_topology",
    "envelopes",
    "events",
    "explore_crash_points",
    "failure_schedules",
    "faulty",
    "hostile_messages",
    "inject_faults",
    "registered_events",
]

_LAZY = {
    "ChoreographyMachine": "sagaflow.testing.stateful",
    "FailureSchedule": "sagaflow.testing.strategies",
    "envelopes": "sagaflow.testing.strategies",
    "events": "sagaflow.testing.strategies",
    "failure_schedules": "sagaflow.testing.strategies",
    "hostile_messages": "sagaflow.testing.strategies",
    "registered_events": "sagaflow.testing.strategies",
    "SagaStoreContract": "sagaflow.testing.store_contract",
    "TransportContract": "sagaflow.testing.transport_contract",
    "assert_flow": "sagaflow.testing.flow",
    "check_flow": "sagaflow.testing.flow",
    "assert_topology": "sagaflow.testing.topology",
}


def __getattr__(name: str) -> Any:
    """Load the parts that need hypothesis or pytest on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sagaflow.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
