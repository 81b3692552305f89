"""A ready-made hypothesis state machine for a choreographed flow.

Subclass `ChoreographyMachine`, say how to build your bus (wire your handlers on
it) and which events may start flows, and write invariants as methods decorated
with ``@invariant()``. Hypothesis then publishes random events, injects handler
failures, duplicates, drops-before-ack and reorderings, lets the flow settle after
each step, and checks your invariants every time:

    class OrderFlow(ChoreographyMachine):
        starts = st.builds(OrderPlaced, order_id=st.uuids().map(str))

        def make_bus(self, transport, **options):
            bus = EventBus(transport, **options)  # options: middleware, fast retry policies
            wire(bus, self.services)
            return bus

        def setup(self):
            self.services = Services()

        @invariant()
        def stock_is_conserved(self):
            assert stock(self.services) + reserved(self.services) == INITIAL

    TestOrderFlow = OrderFlow.TestCase

Handler failures are injected through a bus middleware passed in ``options``
(a failure before the handler runs: the retry and redelivery path), so your
handlers need no change. ``options`` also carries retry and redelivery policies
without delays, so that a test case settles in milliseconds.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from sagaflow.choreography import EventBus, HandleContext, HandleNext, Middleware
from sagaflow.events import Event
from sagaflow.retry import RetryPolicy
from sagaflow.testing.faults import FaultyTransport, InjectedFault
from sagaflow.transports.base import Transport
from sagaflow.transports.memory import MemoryTransport

__all__ = ["ChoreographyMachine", "FailingHandlers"]


class FailingHandlers(Middleware):
    """Middleware that fails the next ``pending`` handlings before the handler runs."""

    def __init__(self) -> None:
        self.pending = 0
        self.injected = 0

    async def on_handle(self, ctx: HandleContext, call_next: HandleNext) -> None:
        """Fail this handling if a failure is pending, else go on."""
        if self.pending > 0:
            self.pending -= 1
            self.injected += 1
            raise InjectedFault(f"injected handler failure in {ctx.group}")
        await call_next(ctx)


class ChoreographyMachine(RuleBasedStateMachine):
    """Drive a choreographed flow with random publishes and failures.

    Class attributes to set:
        starts: Strategy of events that start flows (required).
        max_duplicate / max_drop / max_reorder: Upper bounds of the transport
            misbehaviour probabilities hypothesis may pick.
        retry / redelivery: The policies given to the bus (no delays by default).
        settle_timeout: Seconds the flow may take to settle after each step.
    """

    starts: ClassVar[st.SearchStrategy[Event]]
    max_duplicate: ClassVar[float] = 0.3
    max_drop: ClassVar[float] = 0.2
    max_reorder: ClassVar[float] = 0.3
    settle_timeout: ClassVar[float] = 10.0
    retry: ClassVar[RetryPolicy] = RetryPolicy(max_attempts=2, initial_delay=0)
    redelivery: ClassVar[RetryPolicy] = RetryPolicy(max_attempts=10, initial_delay=0)

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.published: list[Event] = []
        self.failures = FailingHandlers()
        self.bus: EventBus | None = None
        self.transport: FaultyTransport | None = None

    # -- to override -----------------------------------------------------------------

    def setup(self) -> None:
        """Create your services' state (called once per test case, before the bus)."""

    def make_bus(self, transport: Transport, **options: Any) -> EventBus:
        """Build ``EventBus(transport, **options)`` and subscribe your handlers."""
        raise NotImplementedError

    def before_publish(self, event: Event) -> None:
        """Called before a flow's first event is published (e.g. record the order)."""

    def publish_options(self, event: Event) -> dict[str, Any]:
        """Keyword arguments for `EventBus.publish` (e.g. ``correlation_id``)."""
        return {}

    # -- machinery -------------------------------------------------------------------

    @initialize(
        seed=st.integers(0, 2**32 - 1),
        duplicate=st.floats(0, 1),
        drop=st.floats(0, 1),
        reorder=st.floats(0, 1),
    )
    def start_bus(self, seed: int, duplicate: float, drop: float, reorder: float) -> None:
        """Build the services and a bus over a misbehaving in-memory transport."""
        self.setup()
        self.transport = FaultyTransport(
            MemoryTransport(),
            seed=seed,
            duplicate=duplicate * self.max_duplicate,
            drop_before_ack=drop * self.max_drop,
            reorder=reorder * self.max_reorder,
            delay_seconds=0.001,
        )
        bus = self.make_bus(
            self.transport,
            middleware=[self.failures],
            retry=self.retry,
            redelivery=self.redelivery,
        )
        self.bus = bus
        self.loop.run_until_complete(bus.start())

    @precondition(lambda self: self.bus is not None)
    @rule(data=st.data())
    def publish_a_flow(self, data: st.DataObject) -> None:
        """Publish an event that starts a flow, then let everything settle."""
        event = data.draw(self.starts)
        assert self.bus is not None
        self.before_publish(event)
        self.published.append(event)
        self.loop.run_until_complete(self.bus.publish(event, **self.publish_options(event)))
        self.settle()

    @precondition(lambda self: self.bus is not None)
    @rule(count=st.integers(1, 3))
    def fail_next_handlings(self, count: int) -> None:
        """Make the next handlings fail once each (retried or redelivered later)."""
        self.failures.pending += count

    def settle(self) -> None:
        """Run the loop until no group has work waiting or in flight."""
        assert self.bus is not None
        self.loop.run_until_complete(self.bus.join(timeout=self.settle_timeout))

    def teardown(self) -> None:
        """Stop the bus and close the loop."""
        if self.bus is not None:
            self.loop.run_until_complete(self.bus.stop(timeout=5))
        self.loop.close()
