"""A minimal order saga: reserve stock, charge payment, ship, notify.

Run it:  python examples/order_saga.py            (the happy path and a declined card)
         python examples/order_saga.py --fail ship (any step name makes that step fail)

Everything runs in one process on the in-memory saga store.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

from pydantic import BaseModel

from sagaflow import (
    Orchestrator,
    RecordKind,
    RetryPolicy,
    Saga,
    SagaResult,
    Step,
    StepContext,
    StepKind,
)
from sagaflow.errors import NonRetryableError


class Order(BaseModel):
    """The saga's state: what each step learned, so compensations can undo it."""

    order_id: str
    sku: str
    quantity: int
    amount_cents: int
    reservation_id: str | None = None
    payment_id: str | None = None
    shipment_id: str | None = None


class Services:
    """Stand-ins for the inventory, payment, shipping and notification services."""

    def __init__(self, fail: set[str]) -> None:
        self.fail = fail
        self.stock = {"sku-1": 10}
        self.payments: dict[str, int] = {}
        self.notified: list[str] = []

    def _maybe_fail(self, step: str) -> None:
        if step in self.fail:
            raise NonRetryableError(f"{step} refused (failure injected)")

    async def reserve_stock(self, ctx: StepContext[Order]) -> dict[str, str]:
        self._maybe_fail("reserve_stock")
        self.stock[ctx.state.sku] -= ctx.state.quantity
        return {"reservation_id": f"res-{ctx.state.order_id}"}

    async def release_stock(self, ctx: StepContext[Order]) -> dict[str, None]:
        if ctx.state.reservation_id:  # nothing to undo if the reservation never happened
            self.stock[ctx.state.sku] += ctx.state.quantity
        return {"reservation_id": None}

    async def charge_payment(self, ctx: StepContext[Order]) -> dict[str, str]:
        self._maybe_fail("charge_payment")
        # The idempotency key lets a real payment API refuse a double charge.
        self.payments[ctx.idempotency_key] = ctx.state.amount_cents
        return {"payment_id": f"pay-{ctx.state.order_id}"}

    async def refund_payment(self, ctx: StepContext[Order]) -> dict[str, None]:
        self.payments.pop(f"{ctx.saga_id}:charge_payment", None)
        return {"payment_id": None}

    async def create_shipment(self, ctx: StepContext[Order]) -> dict[str, str]:
        self._maybe_fail("create_shipment")
        return {"shipment_id": f"shp-{ctx.state.order_id}"}

    async def notify_customer(self, ctx: StepContext[Order]) -> None:
        self._maybe_fail("notify_customer")
        self.notified.append(ctx.state.order_id)


def order_saga(services: Services) -> Saga[Order]:
    """Define the saga: two compensatable steps, the shipment as pivot, then notify."""
    return Saga(
        "order",
        state=Order,
        steps=[
            Step("reserve_stock", services.reserve_stock, compensate=services.release_stock),
            Step("charge_payment", services.charge_payment, compensate=services.refund_payment),
            Step("create_shipment", services.create_shipment, kind=StepKind.PIVOT),
            Step(
                "notify_customer",
                services.notify_customer,
                kind=StepKind.RETRIABLE,
                retry=RetryPolicy(max_attempts=3, initial_delay=0.01),
            ),
        ],
    )


def timeline(result: SagaResult[Order]) -> str:
    """Render a result's log as readable lines."""
    start = result.records[0].at
    lines = [f"saga {result.saga_name} {result.saga_id}: {result.status.value.upper()}"]
    for record in result.records:
        label = record.kind.value.replace("_", " ")
        step = f" {record.step}" if record.step else ""
        attempt = f" (attempt {record.attempt})" if record.attempt else ""
        detail = ""
        if record.kind in (RecordKind.STEP_FAILED, RecordKind.COMPENSATION_FAILED):
            detail = f": {record.data['error']['message']}" if record.data else ""
        lines.append(f"  +{(record.at - start) * 1000:7.2f} ms  {label}{step}{attempt}{detail}")
    return "\n".join(lines)


async def main(fail: set[str]) -> list[SagaResult[Order]]:
    """Run one order that succeeds (unless --fail) and one whose card is declined."""
    results = []
    async with Orchestrator() as orchestrator:
        for failures in (fail, fail | {"charge_payment"}):
            services = Services(failures)
            order = Order(order_id=uuid.uuid4().hex[:8], sku="sku-1", quantity=2, amount_cents=4999)
            result = await orchestrator.run(order_saga(services), order)
            print(timeline(result))
            print(
                f"  stock left: {services.stock['sku-1']}, payments held: {len(services.payments)}"
            )
            results.append(result)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fail", action="append", default=[], help="step name to fail")
    asyncio.run(main(set(parser.parse_args().fail)))
