"""Stalled flows: expectations against the journal, the watcher's hook."""

from __future__ import annotations

import asyncio

import pytest

from sagaflow.errors import ConfigurationError
from sagaflow.examples.ecommerce.events import OrderPlaced, PaymentCaptured, PaymentFailed
from sagaflow.observability import MemoryJournal
from sagaflow.observability.stalled import (
    Expectation,
    StallWatcher,
    find_stalled,
    parse_duration,
)

from ._support import published

PLACED, CAPTURED, FAILED = (
    "shop.order.placed.v1",
    "shop.payment.captured.v1",
    "shop.payment.failed.v1",
)


@pytest.fixture
async def journal():
    journal = MemoryJournal()
    await journal.write(
        [
            published("on-time", PLACED, 100),
            published("on-time", CAPTURED, 150),
            published("late", PLACED, 100),
            published("late", CAPTURED, 500),
            published("stuck", PLACED, 200),
            published("declined", PLACED, 100),
            published("declined", FAILED, 120),
            published("young", PLACED, 900),
        ]
    )
    return journal


def test_parse():
    expectation = Expectation.parse(f"{PLACED} -> {CAPTURED} within 5m unless {FAILED},x.v1")
    assert expectation == Expectation(
        OrderPlaced, PaymentCaptured, within=300, unless=[PaymentFailed, "x.v1"]
    )
    assert Expectation.parse("a -> b within 250ms").within == 0.25
    assert str(Expectation.parse("a -> b within 2h")) == "a -> b within 7200s"
    assert parse_duration("7d") == 604_800 and parse_duration(" 30 ") == 30
    for bad in ("a -> b", "a b within 5", "a -> b within -1"):
        with pytest.raises(ConfigurationError):
            Expectation.parse(bad)


async def test_find_stalled(journal):
    expectation = Expectation(OrderPlaced, PaymentCaptured, within=300, unless=[PaymentFailed])
    stalled = await find_stalled(journal, [expectation], now=1000)
    assert [(s.correlation_id, s.overdue) for s in stalled] == [("late", 600.0), ("stuck", 500.0)]
    assert str(stalled[1]) == (f"stuck: no {CAPTURED} 300s after {PLACED} (500.0s overdue)")
    # Without "unless", the declined order counts as stalled too.
    plain = await find_stalled(journal, [Expectation(PLACED, CAPTURED, within=300)], now=1000)
    assert {s.correlation_id for s in plain} == {"late", "stuck", "declined"}
    # The horizon bounds how far back it looks.
    assert await find_stalled(journal, [expectation], now=1000, horizon=750) == []


async def test_watcher_reports_each_stalled_flow_once(journal):
    reported = []
    expectation = Expectation(PLACED, CAPTURED, within=0.05)
    watcher = StallWatcher(journal, [expectation], on_stalled=reported.append, interval=0.01)
    import time

    await journal.write([published("now", PLACED, time.time())])
    async with watcher:
        await asyncio.sleep(0.2)
    # Reported once although checked many times; the old flows are past the horizon.
    assert [s.correlation_id for s in reported] == ["now"]
