"""The order flow as an orchestrated saga.

reserve stock → charge payment → ship (the pivot) → notify (retriable), with
compensations release stock and refund. The order service runs the saga and
records the outcome; a compensated order is cancelled and the customer told.
"""

from __future__ import annotations

from sagaflow import (
    Orchestrator,
    RetryPolicy,
    Saga,
    SagaResult,
    SagaStatus,
    Step,
    StepContext,
    StepKind,
)
from sagaflow.examples.ecommerce.model import OrderRequest
from sagaflow.examples.ecommerce.services import Services

__all__ = ["OrderState", "definition", "order_saga", "place_order"]


class OrderState(OrderRequest):
    """The saga's state: the request plus what each step learned."""

    reservation_id: str | None = None
    payment_id: str | None = None
    shipment_id: str | None = None


QUICK = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.1)


def order_saga(services: Services) -> Saga[OrderState]:
    """Define the order saga over ``services``."""
    inventory, payments = services.inventory, services.payments
    shipping, notifications = services.shipping, services.notifications

    async def reserve_stock(ctx: StepContext[OrderState]) -> dict[str, str]:
        order = ctx.state
        return {
            "reservation_id": await inventory.reserve(order.order_id, order.sku, order.quantity)
        }

    async def release_stock(ctx: StepContext[OrderState]) -> dict[str, None]:
        await inventory.release(ctx.state.order_id)
        return {"reservation_id": None}

    async def charge_payment(ctx: StepContext[OrderState]) -> dict[str, str]:
        order = ctx.state
        return {"payment_id": await payments.charge(order.order_id, order.amount_cents)}

    async def refund_payment(ctx: StepContext[OrderState]) -> dict[str, None]:
        await payments.refund(ctx.state.order_id)
        return {"payment_id": None}

    async def ship_order(ctx: StepContext[OrderState]) -> dict[str, str]:
        order = ctx.state
        return {"shipment_id": await shipping.ship(order.order_id, order.address)}

    async def notify_customer(ctx: StepContext[OrderState]) -> None:
        await notifications.notify(ctx.state.order_id, "shipped", "Your order is on its way.")

    return Saga(
        "order",
        state=OrderState,
        retry=QUICK,
        steps=[
            Step("reserve_stock", reserve_stock, compensate=release_stock),
            Step("charge_payment", charge_payment, compensate=refund_payment),
            Step("ship_order", ship_order, kind=StepKind.PIVOT),
            Step("notify_customer", notify_customer, kind=StepKind.RETRIABLE, retry=QUICK),
        ],
    )


def definition() -> Saga[OrderState]:
    """The order saga over fresh services (for diagrams: ``sagaflow diagram ...:definition``)."""
    return order_saga(Services())


async def place_order(
    orchestrator: Orchestrator, services: Services, request: OrderRequest
) -> SagaResult[OrderState]:
    """The order service: run the saga for ``request`` and record the outcome."""
    services.orders[request.order_id] = "placed"
    state = OrderState(**request.model_dump())
    result = await orchestrator.run(order_saga(services), state, saga_id=request.order_id)
    if result.status is SagaStatus.COMPLETED:
        services.orders[request.order_id] = "shipped"
    elif result.status is SagaStatus.COMPENSATED:
        services.orders[request.order_id] = "cancelled"
        await services.notifications.notify(
            request.order_id, "cancelled", "Your order was cancelled; nothing was charged."
        )
    else:
        services.orders[request.order_id] = "needs attention"
    return result
