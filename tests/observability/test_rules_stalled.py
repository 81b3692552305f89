"""Stalled-flow and topology rules no other test exercised."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from sagaflow.choreography import EventBus
from sagaflow.errors import ConfigurationError
from sagaflow.events import Event, EventRegistry
from sagaflow.observability import MemoryJournal, Topology
from sagaflow.observability.stalled import Expectation, StallWatcher, find_stalled

from ._support import published

registry = EventRegistry()


class Asked(Event, type="test.stall-rules.asked.v1", registry=registry):
    pass


class Answered(Event, type="test.stall-rules.answered.v1", registry=registry):
    pass


ASK = Expectation(Asked, Answered, within=10)


# -- Expectation --------------------------------------------------------------------------------


def test_an_abstract_event_class_cannot_be_expected():
    with pytest.raises(ConfigurationError, match="is not a concrete event class"):
        Expectation(Event, Answered, within=1)
    with pytest.raises(ConfigurationError, match="is not a concrete event class"):
        Expectation(Asked, Answered, within=1, unless=[Event])


@pytest.mark.parametrize("within", [0, -1])
def test_within_must_be_positive(within):
    with pytest.raises(ConfigurationError, match="within must be > 0"):
        Expectation(Asked, Answered, within=within)
    with pytest.raises(ConfigurationError, match="within must be > 0"):
        Expectation.parse("a -> b within 0s")


async def test_a_flow_is_checked_once_from_its_first_start():
    journal = MemoryJournal()
    # The flow asked twice; the answer came 15 s after the first ask, 5 s after the second.
    await journal.write(
        [
            published("f", ASK.after, 100),
            published("f", ASK.after, 110),
            published("f", ASK.expect, 115),
        ]
    )
    [stalled] = await find_stalled(journal, [ASK], now=200)
    assert (stalled.correlation_id, stalled.since, stalled.overdue) == ("f", 100, 90)


async def test_an_answer_before_the_deadline_or_any_ending_is_not_a_stall():
    journal = MemoryJournal()
    cancel = Expectation(Asked, Answered, within=10, unless=["test.cancelled.v1"])
    await journal.write(
        [
            published("on-time", ASK.after, 100),
            published("on-time", ASK.expect, 110),  # at the deadline exactly
            published("cancelled-late", ASK.after, 100),
            published("cancelled-late", "test.cancelled.v1", 150),  # ended otherwise, late
        ]
    )
    assert await find_stalled(journal, [cancel], now=200) == []


# -- StallWatcher -------------------------------------------------------------------------------


def test_watcher_interval_must_be_positive():
    with pytest.raises(ConfigurationError, match="interval must be > 0"):
        StallWatcher(MemoryJournal(), [ASK], interval=0)


async def test_a_failing_hook_is_logged_and_the_flow_still_reported_once(caplog):
    journal = MemoryJournal()
    await journal.write([published("f", ASK.after, time.time() - 60)])
    calls = []

    def hook(flow):
        calls.append(flow.correlation_id)
        raise RuntimeError("pager down")

    watcher = StallWatcher(journal, [ASK], on_stalled=hook)
    with caplog.at_level(logging.WARNING, logger="sagaflow.observability"):
        assert [s.correlation_id for s in await watcher.check()] == ["f"]
        assert await watcher.check() == []
    assert calls == ["f"]
    assert "on_stalled hook failed" in caplog.text


async def test_the_watcher_survives_a_journal_outage(caplog):
    class Flaky(MemoryJournal):
        failures = 2

        async def published(self, event_type, *, since, until, limit=10_000):  # type: ignore[no-untyped-def]
            if self.failures:
                self.failures -= 1
                raise ConnectionError("journal down")
            return await super().published(event_type, since=since, until=until, limit=limit)

    journal = Flaky()
    await journal.write([published("f", ASK.after, time.time() - 60)])
    found = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="sagaflow.observability"):
        async with StallWatcher(journal, [ASK], on_stalled=lambda _: found.set(), interval=0.01):
            await asyncio.wait_for(found.wait(), 5)
    assert journal.failures == 0
    assert caplog.text.count("stall check failed: ConnectionError") == 2


async def test_watcher_stop_is_idempotent_and_ends_the_checks():
    class Counting(MemoryJournal):
        calls = 0

        async def published(self, event_type, *, since, until, limit=10_000):  # type: ignore[no-untyped-def]
            self.calls += 1
            return []

    journal = Counting()
    watcher = StallWatcher(journal, [ASK], interval=0.01)
    await watcher.start()
    await watcher.start()  # already running: no second loop
    await asyncio.sleep(0.1)
    await watcher.stop()
    await watcher.stop()
    calls = journal.calls
    assert 0 < calls <= 12  # one loop at 100 Hz, not two
    await asyncio.sleep(0.05)
    assert journal.calls == calls


# -- Topology -----------------------------------------------------------------------------------


def test_topology_needs_a_bus():
    with pytest.raises(ConfigurationError, match="at least one bus"):
        Topology.from_bus()


def test_entry_points_and_external_events_may_be_wire_names():
    bus = EventBus(registry=registry)
    bus.subscribe(Asked, lambda e: None, group="answerer", emits=[Answered])
    plain = Topology.from_bus(bus).check()
    assert plain.unemitted == (("answerer", Asked.event_type),)
    assert plain.unconsumed == ((Answered.event_type, ("answerer",)),)
    topology = Topology.from_bus(
        bus, entry_points=["test.stall-rules.asked.v1"], external=["test.stall-rules.answered.v1"]
    )
    assert topology.check(strict=True).ok


def test_undeclared_handlers_are_listed_and_strict_mode_fails_on_them():
    bus = EventBus(registry=registry)
    bus.subscribe(Asked, lambda e: None, group="quiet")
    topology = Topology.from_bus(bus, entry_points=[Asked])
    lenient, strict = topology.check(), topology.check(strict=True)
    assert lenient.ok and not strict.ok
    assert str(lenient) == "topology ok\n  (undeclared emits: quiet)"
    assert str(strict) == "topology problems:\n  undeclared emits: quiet"
