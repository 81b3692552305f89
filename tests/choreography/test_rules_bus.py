"""Rules of the event bus that no other test exercised, each through the public API.

Every test names the rule it checks (module docstrings of
``sagaflow.choreography``, docs/choreography.md) and fails if the rule breaks.
"""

from __future__ import annotations

import pytest

from sagaflow.errors import ConfigurationError

from ._support import OrderPlaced, PaymentTaken, make_bus

# -- subscribing ---------------------------------------------------------------------


async def test_one_group_cannot_consume_one_topic_twice() -> None:
    # Rule (EventBus.subscribe): two handlers in one group would compete for the
    # same events, so the bus refuses it. With a shared topic, disjoint types
    # compete too: each consumer acked the other's events as "not my type", and
    # most events were never handled (18 of 20 in this scenario).
    bus = make_bus(topic_for=lambda name: "t.shared")
    bus.subscribe(OrderPlaced, lambda e: None, group="g")
    with pytest.raises(ConfigurationError, match="compete"):
        bus.subscribe(PaymentTaken, lambda e: None, group="g")
    seen: list[str] = []
    bus.subscribe(PaymentTaken, lambda e: seen.append(e.order_id), group="other")
    async with bus:
        for n in range(10):
            await bus.publish(PaymentTaken(order_id=str(n)))
        await bus.join()
    assert sorted(seen, key=int) == [str(n) for n in range(10)]
    # Disjoint types on their own topics still share a group.
    plain = make_bus()
    plain.subscribe(OrderPlaced, lambda e: None, group="g")
    plain.subscribe(PaymentTaken, lambda e: None, group="g")
