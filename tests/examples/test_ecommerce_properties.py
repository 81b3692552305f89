"""Property-based tests of the e-commerce example, written with sagaflow's testing kit.

They are the model for testing your own flows:

* the orchestrated order saga under any failure schedule keeps the shop consistent;
* the choreographed flow, driven by a hypothesis state machine through random
  orders, handler failures, duplicates, drops before ack and reorderings, keeps
  the same invariants after every step;
* a crash-point exploration of the order saga on SQLite and PostgreSQL converges
  at every point.
"""

from __future__ import annotations

import asyncio
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, rule

from sagaflow import EventBus, MemorySagaStore, Orchestrator, SagaStatus
from sagaflow.examples.ecommerce import choreographed, orchestrated
from sagaflow.examples.ecommerce.events import OrderPlaced
from sagaflow.examples.ecommerce.model import OrderRequest
from sagaflow.examples.ecommerce.services import Failures, Services
from sagaflow.testing.clock import FakeClock
from sagaflow.testing.crash import explore_crash_points
from sagaflow.testing.stateful import ChoreographyMachine
from sagaflow.testing.strategies import failure_schedules

INITIAL_STOCK = {"book": 5, "lamp": 1}


def assert_shop_is_consistent(services: Services, finished: set[str]) -> None:
    """The invariants of the shop, whatever happened."""
    inventory = services.inventory
    # Stock is conserved: on the shelf plus reserved equals what we started with.
    for sku, initial in INITIAL_STOCK.items():
        reserved = sum(q for s, q in inventory.reservations.values() if s == sku)
        assert inventory.stock[sku] + reserved == initial, (sku, inventory.stock, reserved)
        assert inventory.stock[sku] >= 0
    for order_id in finished:
        status = services.orders[order_id]
        sent = {kind for (order, kind) in services.notifications.sent if order == order_id}
        if status == "shipped":
            assert order_id in services.payments.charges
            assert order_id in inventory.reservations
            assert order_id in services.shipping.shipments
            assert sent == {"shipped"}
        elif status == "cancelled":
            assert order_id not in services.payments.charges, "a cancelled order kept its charge"
            assert order_id not in inventory.reservations, "a cancelled order kept its stock"
            assert order_id not in services.shipping.shipments
            assert sent == {"cancelled"}
        else:
            raise AssertionError(f"order {order_id} ended {status!r}")


# -- orchestration: any failure schedule ----------------------------------------------


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    failures=st.sets(st.sampled_from(["out-of-stock", "card-declined", "shipping-down"])),
)
def test_order_saga_keeps_the_shop_consistent_under_any_failure_schedule(data, failures):
    services = Services(Failures.parse(sorted(failures)))
    saga = orchestrated.order_saga(services)
    schedule = data.draw(failure_schedules(saga))

    async def main():
        clock = FakeClock(auto_advance=True)
        faulty_saga = schedule.apply(saga, clock=clock)
        orchestrator = Orchestrator(MemorySagaStore(clock=clock), clock=clock, seed=1)
        state = orchestrated.OrderState(order_id="o1")
        result = await orchestrator.run(faulty_saga, state, saga_id="o1")
        await orchestrator.close()
        return result

    result = asyncio.run(main())
    assert result.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED)
    if result.status is SagaStatus.COMPLETED:
        services.orders["o1"] = "shipped"
        services.notifications.sent.setdefault(("o1", "shipped"), "")
        assert_shop_is_consistent(services, {"o1"})
    elif result.status is SagaStatus.COMPENSATED:
        services.orders["o1"] = "cancelled"
        services.notifications.sent[("o1", "cancelled")] = ""
        assert_shop_is_consistent(services, {"o1"})
    else:  # parked: only a failed compensation or a failed step after the pivot does this
        failed_step = result.error["step"]
        assert failed_step in ("notify_customer", "reserve_stock", "charge_payment"), (
            schedule.describe()
        )


# -- choreography: a state machine over random orders and failures --------------------


class ChoreographedShop(ChoreographyMachine):
    """Random orders through the choreographed flow on a misbehaving transport."""

    starts = st.builds(
        OrderPlaced,
        order_id=st.uuids().map(lambda u: f"o-{u.hex[:8]}"),
        sku=st.sampled_from(["book", "lamp"]),
        quantity=st.integers(1, 3),
        amount_cents=st.integers(100, 10_000),
        address=st.just("1 Main Street"),
    )

    def setup(self) -> None:
        self.services = Services()

    def make_bus(self, transport, **options) -> EventBus:
        bus = EventBus(transport, source="/shop", **options)
        choreographed.wire(bus, self.services)
        return bus

    def before_publish(self, event) -> None:  # the order service records the order first
        self.services.orders[event.order_id] = "placed"

    def publish_options(self, event) -> dict:
        return {"correlation_id": event.order_id, "key": event.order_id}

    @rule(name=st.sampled_from(["card_declined", "shipping_down"]), on=st.booleans())
    def switch_a_failure(self, name: str, on: bool) -> None:
        """Business failures come and go: declined cards, a carrier that is down."""
        setattr(self.services.failures, name, on)

    @invariant()
    def shop_is_consistent(self) -> None:
        if self.bus is None:
            return
        assert_shop_is_consistent(self.services, {event.order_id for event in self.published})


ChoreographedShop.TestCase.settings = settings(
    max_examples=25, stateful_step_count=8, deadline=None, suppress_health_check=list(HealthCheck)
)
TestChoreographedShop = ChoreographedShop.TestCase


# -- crash points -------------------------------------------------------------------------


async def _explore(store_factory):
    services = Services()
    saga = orchestrated.order_saga(services)
    request = OrderRequest(order_id="crash-o1")
    report = await explore_crash_points(
        saga, orchestrated.OrderState(**request.model_dump()), store_factory=store_factory
    )
    print("\n" + report.render())
    report.assert_ok()
    assert len(report.outcomes) == 10  # 5 writes, before and after each
    return report


async def test_crash_points_of_the_order_saga_on_sqlite(tmp_path):
    from sagaflow.stores import SQLiteSagaStore

    counter = iter(range(1000))
    await _explore(lambda: SQLiteSagaStore(tmp_path / f"crash-{next(counter)}.db"))


async def test_crash_points_of_the_order_saga_on_postgres(postgres_url):
    import psycopg

    from sagaflow.stores import PostgresSagaStore

    prefix = f"crashpts_{uuid.uuid4().hex[:8]}"
    counter = iter(range(1000))
    try:
        await _explore(lambda: PostgresSagaStore(postgres_url, schema=f"{prefix}_{next(counter)}"))
    finally:
        async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
            cursor = await conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (f"{prefix}%",)
            )
            for (name,) in await cursor.fetchall():
                await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
