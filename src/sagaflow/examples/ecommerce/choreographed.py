"""The order flow as choreography: services react to events, no coordinator.

    OrderPlaced ──inventory──> InventoryReserved ──payment──> PaymentCaptured
        │                          │                              │
        └─> InventoryRejected      └─> PaymentFailed              ├─shipping─> OrderShipped
              │                          │                        └─> ShippingFailed
              │                          │                              │ payment refunds
              │                          │                        PaymentRefunded
              │                          └──────────inventory releases──┘
              │                                 InventoryReleased
              └────────────orders: OrderCancelled <──┘        notification: tells the customer

Business refusals (out of stock, card declined, carrier down) become failure
events that trigger the compensations; transient errors (a crashed service)
raise, so the bus retries the delivery.
"""

from __future__ import annotations

from sagaflow.choreography import EventBus
from sagaflow.examples.ecommerce.events import (
    InventoryRejected,
    InventoryReleased,
    InventoryReserved,
    OrderCancelled,
    OrderPlaced,
    OrderShipped,
    PaymentCaptured,
    PaymentFailed,
    PaymentRefunded,
    ShippingFailed,
)
from sagaflow.examples.ecommerce.model import OrderRequest
from sagaflow.examples.ecommerce.services import (
    CardDeclinedError,
    OutOfStockError,
    Services,
    ShippingUnavailableError,
)
from sagaflow.observability.topology import Topology

__all__ = ["place_order", "topology", "wire"]


def wire(bus: EventBus, services: Services, *, only: set[str] | None = None) -> None:
    """Subscribe the services' handlers (all, or only the named services)."""
    wanted = only or {"inventory", "payment", "shipping", "notification", "orders"}
    if "inventory" in wanted:
        _inventory(bus, services)
    if "payment" in wanted:
        _payment(bus, services)
    if "shipping" in wanted:
        _shipping(bus, services)
    if "notification" in wanted:
        _notification(bus, services)
    if "orders" in wanted:
        _orders(bus, services)


def _inventory(bus: EventBus, services: Services) -> None:
    inventory = services.inventory

    @bus.handler(OrderPlaced, group="inventory", emits=[InventoryReserved, InventoryRejected])
    async def reserve_stock(event: OrderPlaced) -> None:
        try:
            await inventory.reserve(event.order_id, event.sku, event.quantity)
        except OutOfStockError as exc:
            await bus.publish(InventoryRejected(order_id=event.order_id, reason=str(exc)))
            return
        await bus.publish(
            InventoryReserved(
                order_id=event.order_id, amount_cents=event.amount_cents, address=event.address
            )
        )

    async def release_stock(event: PaymentFailed | PaymentRefunded) -> None:
        await inventory.release(event.order_id)
        await bus.publish(InventoryReleased(order_id=event.order_id, reason=event.reason))

    emits = [InventoryReleased]
    bus.subscribe(PaymentFailed, release_stock, group="inventory-releases", emits=emits)
    bus.subscribe(PaymentRefunded, release_stock, group="inventory-releases", emits=emits)


def _payment(bus: EventBus, services: Services) -> None:
    payments = services.payments

    @bus.handler(InventoryReserved, group="payment", emits=[PaymentCaptured, PaymentFailed])
    async def charge(event: InventoryReserved) -> None:
        try:
            await payments.charge(event.order_id, event.amount_cents)
        except CardDeclinedError as exc:  # a refusal is news; a crash is retried
            await bus.publish(PaymentFailed(order_id=event.order_id, reason=str(exc)))
            return
        await bus.publish(PaymentCaptured(order_id=event.order_id, address=event.address))

    @bus.handler(ShippingFailed, group="payment-refunds", emits=[PaymentRefunded])
    async def refund(event: ShippingFailed) -> None:
        await payments.refund(event.order_id)
        await bus.publish(PaymentRefunded(order_id=event.order_id, reason=event.reason))


def _shipping(bus: EventBus, services: Services) -> None:
    shipping = services.shipping

    @bus.handler(PaymentCaptured, group="shipping", emits=[OrderShipped, ShippingFailed])
    async def ship(event: PaymentCaptured) -> None:
        try:
            shipment_id = await shipping.ship(event.order_id, event.address)
        except ShippingUnavailableError as exc:
            await bus.publish(ShippingFailed(order_id=event.order_id, reason=str(exc)))
            return
        await bus.publish(OrderShipped(order_id=event.order_id, shipment_id=shipment_id))


def _notification(bus: EventBus, services: Services) -> None:
    notifications = services.notifications

    @bus.handler(OrderShipped, group="notification", emits=[])
    async def shipped(event: OrderShipped) -> None:
        await notifications.notify(event.order_id, "shipped", "Your order is on its way.")

    @bus.handler(OrderCancelled, group="notification-cancellations", emits=[])
    async def cancelled(event: OrderCancelled) -> None:
        await notifications.notify(
            event.order_id, "cancelled", "Your order was cancelled; nothing was charged."
        )


def _orders(bus: EventBus, services: Services) -> None:
    orders = services.orders

    @bus.handler(OrderShipped, group="orders", emits=[])
    async def mark_shipped(event: OrderShipped) -> None:
        orders[event.order_id] = "shipped"

    async def cancel(event: InventoryRejected | InventoryReleased) -> None:
        orders[event.order_id] = "cancelled"
        await bus.publish(OrderCancelled(order_id=event.order_id, reason=event.reason))

    emits = [OrderCancelled]
    bus.subscribe(InventoryRejected, cancel, group="orders-cancellations", emits=emits)
    bus.subscribe(InventoryReleased, cancel, group="orders-cancellations", emits=emits)


def topology() -> Topology:
    """The whole choreography's topology (every service wired on one bus, not started).

    ``sagaflow topology sagaflow.examples.ecommerce.choreographed:topology`` draws it.
    """
    bus = EventBus()
    wire(bus, Services())
    return Topology.from_bus(bus, entry_points=[OrderPlaced])


async def place_order(bus: EventBus, services: Services, request: OrderRequest) -> str:
    """The order service: publish `OrderPlaced` (correlated by order id)."""
    services.orders[request.order_id] = "placed"
    envelope = await bus.publish(
        OrderPlaced(**request.model_dump()),
        correlation_id=request.order_id,
        key=request.order_id,
        subject=request.order_id,
    )
    return envelope.id
