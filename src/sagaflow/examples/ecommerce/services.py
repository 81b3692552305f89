"""The four services (and the order service), written once for both styles.

Each keeps its own small state and is idempotent: an operation repeated with the
same key changes nothing (the reply is the same), and an undo with nothing to
undo is a no-op. That is what a service must offer to take part in a saga.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sagaflow.errors import NonRetryableError

__all__ = [
    "CardDeclinedError",
    "Failures",
    "Inventory",
    "Notifications",
    "OutOfStockError",
    "Payments",
    "Services",
    "Shipping",
    "ShippingUnavailableError",
]

FAILURE_NAMES = ("out-of-stock", "card-declined", "shipping-down", "crash")


class OutOfStockError(NonRetryableError):
    """Not enough stock: retrying will not help."""


class CardDeclinedError(NonRetryableError):
    """The card was declined: retrying will not help."""


class ShippingUnavailableError(NonRetryableError):
    """The carrier refuses new shipments today."""


@dataclass
class Failures:
    """Failure switches for a scenario.

    Attributes:
        out_of_stock: The inventory has less than ordered.
        card_declined: The payment provider declines the card.
        shipping_down: The carrier refuses the shipment.
        crash: The payment service crashes on its first request (a transient
            error): the request is retried and the flow completes.
    """

    out_of_stock: bool = False
    card_declined: bool = False
    shipping_down: bool = False
    crash: bool = False

    @classmethod
    def parse(cls, names: list[str] | tuple[str, ...]) -> Failures:
        """Build from names like ``card-declined``; unknown names raise ValueError."""
        failures = cls()
        for name in names:
            if name not in FAILURE_NAMES:
                raise ValueError(
                    f"unknown failure {name!r}; choose from {', '.join(FAILURE_NAMES)}"
                )
            setattr(failures, name.replace("-", "_"), True)
        return failures


@dataclass
class Inventory:
    """Stock per SKU and reservations per order."""

    stock: dict[str, int] = field(default_factory=lambda: {"book": 5, "lamp": 1})
    reservations: dict[str, tuple[str, int]] = field(default_factory=dict)
    failures: Failures = field(default_factory=Failures)

    async def reserve(self, order_id: str, sku: str, quantity: int) -> str:
        """Reserve stock for an order (idempotent per order)."""
        if order_id in self.reservations:
            return f"res-{order_id}"
        if self.failures.out_of_stock or self.stock.get(sku, 0) < quantity:
            raise OutOfStockError(f"only {self.stock.get(sku, 0)} {sku} left, {quantity} ordered")
        self.stock[sku] -= quantity
        self.reservations[order_id] = (sku, quantity)
        return f"res-{order_id}"

    async def release(self, order_id: str) -> None:
        """Give an order's reserved stock back; nothing to do if none was reserved."""
        reserved = self.reservations.pop(order_id, None)
        if reserved is not None:
            sku, quantity = reserved
            self.stock[sku] += quantity


@dataclass
class Payments:
    """Charges per order, and refunds."""

    charges: dict[str, int] = field(default_factory=dict)
    refunded: dict[str, int] = field(default_factory=dict)
    failures: Failures = field(default_factory=Failures)
    requests: int = 0

    async def charge(self, order_id: str, amount_cents: int) -> str:
        """Charge an order once, however often it is asked."""
        self.requests += 1
        if self.failures.crash and self.requests == 1:
            raise ConnectionError("payment service crashed mid-request")
        if order_id in self.charges:
            return f"pay-{order_id}"
        if self.failures.card_declined:
            raise CardDeclinedError("card declined by the issuer")
        self.charges[order_id] = amount_cents
        return f"pay-{order_id}"

    async def refund(self, order_id: str) -> None:
        """Refund an order's charge; nothing to do if it was never charged."""
        amount = self.charges.pop(order_id, None)
        if amount is not None:
            self.refunded[order_id] = amount


@dataclass
class Shipping:
    """Shipments per order."""

    shipments: dict[str, str] = field(default_factory=dict)
    failures: Failures = field(default_factory=Failures)

    async def ship(self, order_id: str, address: str) -> str:
        """Hand the order to the carrier (idempotent per order)."""
        if order_id in self.shipments:
            return f"shp-{order_id}"
        if self.failures.shipping_down:
            raise ShippingUnavailableError("the carrier is not accepting shipments")
        self.shipments[order_id] = address
        return f"shp-{order_id}"


@dataclass
class Notifications:
    """Messages sent to customers (one per order and kind)."""

    sent: dict[tuple[str, str], str] = field(default_factory=dict)

    async def notify(self, order_id: str, kind: str, text: str) -> None:
        """Tell the customer; a repeat of the same (order, kind) is not sent twice."""
        self.sent.setdefault((order_id, kind), text)


@dataclass
class Services:
    """One instance of every service, sharing one set of failure switches."""

    failures: Failures = field(default_factory=Failures)
    inventory: Inventory = field(init=False)
    payments: Payments = field(init=False)
    shipping: Shipping = field(init=False)
    notifications: Notifications = field(init=False)
    orders: dict[str, str] = field(default_factory=dict)  # order id -> status

    def __post_init__(self) -> None:
        self.inventory = Inventory(failures=self.failures)
        self.payments = Payments(failures=self.failures)
        self.shipping = Shipping(failures=self.failures)
        self.notifications = Notifications()

    def snapshot(self) -> dict[str, Any]:
        """Every service's end state, comparable between the two styles."""
        return {
            "orders": dict(self.orders),
            "stock": dict(self.inventory.stock),
            "reservations": sorted(self.inventory.reservations),
            "charges": dict(self.payments.charges),
            "refunds": dict(self.payments.refunded),
            "shipments": sorted(self.shipping.shipments),
            "notifications": sorted(self.notifications.sent),
        }
