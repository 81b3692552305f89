"""The events of the choreographed order flow (wire names are versioned)."""

from __future__ import annotations

from sagaflow.events import Event

__all__ = [
    "InventoryRejected",
    "InventoryReleased",
    "InventoryReserved",
    "OrderCancelled",
    "OrderEvent",
    "OrderPlaced",
    "OrderShipped",
    "PaymentCaptured",
    "PaymentFailed",
    "PaymentRefunded",
    "ShippingFailed",
]


class OrderEvent(Event):
    """Abstract base: every event of the flow names its order."""

    order_id: str


class OrderPlaced(OrderEvent, type="shop.order.placed.v1"):
    """The customer placed an order."""

    sku: str
    quantity: int
    amount_cents: int
    address: str


class InventoryReserved(OrderEvent, type="shop.inventory.reserved.v1"):
    """Stock is set aside for the order."""

    amount_cents: int
    address: str


class InventoryRejected(OrderEvent, type="shop.inventory.rejected.v1"):
    """Not enough stock."""

    reason: str


class PaymentCaptured(OrderEvent, type="shop.payment.captured.v1"):
    """The customer was charged."""

    address: str


class PaymentFailed(OrderEvent, type="shop.payment.failed.v1"):
    """The charge was refused."""

    reason: str


class OrderShipped(OrderEvent, type="shop.order.shipped.v1"):
    """The carrier took the order."""

    shipment_id: str


class ShippingFailed(OrderEvent, type="shop.shipping.failed.v1"):
    """The carrier refused the order."""

    reason: str


class PaymentRefunded(OrderEvent, type="shop.payment.refunded.v1"):
    """The charge was given back (compensation)."""

    reason: str


class InventoryReleased(OrderEvent, type="shop.inventory.released.v1"):
    """The reserved stock was given back (compensation)."""

    reason: str


class OrderCancelled(OrderEvent, type="shop.order.cancelled.v1"):
    """The order service gave up on the order."""

    reason: str
