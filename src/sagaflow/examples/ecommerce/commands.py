"""Commands and replies of the orchestrated flow when services live in other processes.

Each service answers its commands with a success or a failure reply (see
`sagaflow.orchestration.remote`). The saga is the same as in `orchestrated`, with
each step a remote call instead of a function call.
"""

from __future__ import annotations

from sagaflow import RetryPolicy, Saga, Step, StepKind
from sagaflow.choreography import EventBus
from sagaflow.events import Event
from sagaflow.examples.ecommerce.orchestrated import OrderState
from sagaflow.examples.ecommerce.services import (
    CardDeclinedError,
    OutOfStockError,
    Services,
    ShippingUnavailableError,
)
from sagaflow.orchestration.remote import RemoteSteps, command_handler

__all__ = ["remote_order_saga", "serve_commands"]


class ReserveStock(Event, type="shop.cmd.reserve-stock.v1"):
    """Command to the inventory service."""

    order_id: str
    sku: str
    quantity: int


class StockReserved(Event, type="shop.reply.stock-reserved.v1"):
    """Reply: stock set aside."""

    order_id: str
    reservation_id: str


class StockRejected(Event, type="shop.reply.stock-rejected.v1"):
    """Reply: not enough stock."""

    order_id: str
    reason: str


class ReleaseStock(Event, type="shop.cmd.release-stock.v1"):
    """Compensation command to the inventory service."""

    order_id: str


class StockReleased(Event, type="shop.reply.stock-released.v1"):
    """Reply: stock given back (or nothing was reserved)."""

    order_id: str


class ChargePayment(Event, type="shop.cmd.charge-payment.v1"):
    """Command to the payment service."""

    order_id: str
    amount_cents: int


class PaymentCharged(Event, type="shop.reply.payment-charged.v1"):
    """Reply: charged."""

    order_id: str
    payment_id: str


class PaymentDeclined(Event, type="shop.reply.payment-declined.v1"):
    """Reply: the card was declined."""

    order_id: str
    reason: str


class RefundPayment(Event, type="shop.cmd.refund-payment.v1"):
    """Compensation command to the payment service."""

    order_id: str


class PaymentRefundIssued(Event, type="shop.reply.payment-refunded.v1"):
    """Reply: refunded (or nothing was charged)."""

    order_id: str


class ShipOrder(Event, type="shop.cmd.ship-order.v1"):
    """Command to the shipping service."""

    order_id: str
    address: str


class ShipmentCreated(Event, type="shop.reply.shipment-created.v1"):
    """Reply: handed to the carrier."""

    order_id: str
    shipment_id: str


class ShipmentRefused(Event, type="shop.reply.shipment-refused.v1"):
    """Reply: the carrier refused."""

    order_id: str
    reason: str


class NotifyCustomer(Event, type="shop.cmd.notify-customer.v1"):
    """Command to the notification service."""

    order_id: str
    kind: str
    text: str


class CustomerNotified(Event, type="shop.reply.customer-notified.v1"):
    """Reply: the message went out."""

    order_id: str


QUICK = RetryPolicy(max_attempts=4, initial_delay=0.05, max_delay=1.0)


def remote_order_saga(remote: RemoteSteps, *, timeout: float = 15.0) -> Saga[OrderState]:
    """The order saga with every step a command to a service in another process."""
    return Saga(
        "order",
        state=OrderState,
        retry=QUICK,
        steps=[
            Step(
                "reserve_stock",
                remote.call(
                    lambda ctx: ReserveStock(
                        order_id=ctx.state.order_id, sku=ctx.state.sku, quantity=ctx.state.quantity
                    ),
                    success=StockReserved,
                    failure=StockRejected,
                    updates=lambda reply: {"reservation_id": reply.reservation_id},
                ),
                compensate=remote.call(
                    lambda ctx: ReleaseStock(order_id=ctx.state.order_id), success=StockReleased
                ),
                timeout=timeout,
                compensation_timeout=timeout,
            ),
            Step(
                "charge_payment",
                remote.call(
                    lambda ctx: ChargePayment(
                        order_id=ctx.state.order_id, amount_cents=ctx.state.amount_cents
                    ),
                    success=PaymentCharged,
                    failure=PaymentDeclined,
                    updates=lambda reply: {"payment_id": reply.payment_id},
                ),
                compensate=remote.call(
                    lambda ctx: RefundPayment(order_id=ctx.state.order_id),
                    success=PaymentRefundIssued,
                ),
                timeout=timeout,
                compensation_timeout=timeout,
            ),
            Step(
                "ship_order",
                remote.call(
                    lambda ctx: ShipOrder(order_id=ctx.state.order_id, address=ctx.state.address),
                    success=ShipmentCreated,
                    failure=ShipmentRefused,
                    updates=lambda reply: {"shipment_id": reply.shipment_id},
                ),
                kind=StepKind.PIVOT,
                timeout=timeout,
            ),
            Step(
                "notify_customer",
                remote.call(
                    lambda ctx: NotifyCustomer(
                        order_id=ctx.state.order_id,
                        kind="shipped",
                        text="Your order is on its way.",
                    ),
                    success=CustomerNotified,
                ),
                kind=StepKind.RETRIABLE,
                retry=QUICK,
                timeout=timeout,
            ),
        ],
    )


def serve_commands(bus: EventBus, services: Services, name: str) -> None:
    """Subscribe the command handlers of service ``name`` on ``bus``."""
    if name == "inventory":
        _inventory(bus, services)
    elif name == "payment":
        _payment(bus, services)
    elif name == "shipping":
        _shipping(bus, services)
    elif name == "notification":
        _notification(bus, services)
    else:
        raise ValueError(f"unknown service {name!r}")


def _inventory(bus: EventBus, services: Services) -> None:
    inventory = services.inventory

    @command_handler(bus, ReserveStock, group="inventory")
    async def reserve(command: ReserveStock) -> Event:
        try:
            reservation = await inventory.reserve(command.order_id, command.sku, command.quantity)
        except OutOfStockError as exc:
            return StockRejected(order_id=command.order_id, reason=str(exc))
        return StockReserved(order_id=command.order_id, reservation_id=reservation)

    @command_handler(bus, ReleaseStock, group="inventory-releases")
    async def release(command: ReleaseStock) -> Event:
        await inventory.release(command.order_id)
        return StockReleased(order_id=command.order_id)


def _payment(bus: EventBus, services: Services) -> None:
    payments = services.payments

    @command_handler(bus, ChargePayment, group="payment")
    async def charge(command: ChargePayment) -> Event:
        try:
            payment = await payments.charge(command.order_id, command.amount_cents)
        except CardDeclinedError as exc:
            return PaymentDeclined(order_id=command.order_id, reason=str(exc))
        return PaymentCharged(order_id=command.order_id, payment_id=payment)

    @command_handler(bus, RefundPayment, group="payment-refunds")
    async def refund(command: RefundPayment) -> Event:
        await payments.refund(command.order_id)
        return PaymentRefundIssued(order_id=command.order_id)


def _shipping(bus: EventBus, services: Services) -> None:
    shipping = services.shipping

    @command_handler(bus, ShipOrder, group="shipping")
    async def ship(command: ShipOrder) -> Event:
        try:
            shipment = await shipping.ship(command.order_id, command.address)
        except ShippingUnavailableError as exc:
            return ShipmentRefused(order_id=command.order_id, reason=str(exc))
        return ShipmentCreated(order_id=command.order_id, shipment_id=shipment)


def _notification(bus: EventBus, services: Services) -> None:
    notifications = services.notifications

    @command_handler(bus, NotifyCustomer, group="notification")
    async def notify(command: NotifyCustomer) -> Event:
        await notifications.notify(command.order_id, command.kind, command.text)
        return CustomerNotified(order_id=command.order_id)
