"""Traces of the e-commerce example: causal tree, text, Mermaid (pinned), HTML."""

from __future__ import annotations

import re

import pytest

from sagaflow.observability import EntryKind, FlowTrace, JournalEntry, render_html, render_text
from sagaflow.observability.mermaid import sequence_diagram

from ._flows import traced

CARD_DECLINED_CHOREOGRAPHY = """\
sequenceDiagram
    participant a_shop as shop
    participant a_inventory as inventory
    participant a_payment as payment
    participant a_inventory_releases as inventory-releases
    participant a_orders_cancellations as orders-cancellations
    participant a_notification_cancellations as notification-cancellations
    a_shop->>a_inventory: shop.order.placed.v1
    a_inventory->>a_payment: shop.inventory.reserved.v1
    a_payment->>a_inventory_releases: shop.payment.failed.v1
    a_inventory_releases->>a_orders_cancellations: shop.inventory.released.v1
    a_orders_cancellations->>a_notification_cancellations: shop.order.cancelled.v1"""

SHIPPING_DOWN_ORCHESTRATION = """\
sequenceDiagram
    participant a_shop as shop
    participant a_reserve_stock as reserve_stock
    participant a_charge_payment as charge_payment
    participant a_ship_order as ship_order
    Note over a_shop: saga order started
    a_shop->>a_reserve_stock: reserve_stock
    a_shop->>a_charge_payment: charge_payment
    a_shop-xa_ship_order: ship_order: ShippingUnavailableError (final)
    a_shop-->>a_charge_payment: undo charge_payment
    a_shop-->>a_reserve_stock: undo reserve_stock
    Note over a_shop: ✗ saga order: COMPENSATED"""


async def test_mermaid_of_the_card_declined_choreography():
    trace = await traced("choreography", ["card-declined"])
    assert sequence_diagram(trace) == CARD_DECLINED_CHOREOGRAPHY


async def test_mermaid_of_the_shipping_down_saga():
    trace = await traced("orchestration", ["shipping-down"])
    assert sequence_diagram(trace) == SHIPPING_DOWN_ORCHESTRATION


@pytest.mark.parametrize(
    ("failures", "chain"),
    [
        ([], ["placed", "inventory.reserved", "payment.captured", "order.shipped"]),
        (["out-of-stock"], ["placed", "inventory.rejected", "order.cancelled"]),
        (
            ["shipping-down"],
            [
                "placed",
                "inventory.reserved",
                "payment.captured",
                "shipping.failed",
                "payment.refunded",
                "inventory.released",
                "order.cancelled",
            ],
        ),
    ],
)
async def test_choreography_causal_chain(failures, chain):
    trace = await traced("choreography", failures)
    assert len(trace.roots) == 1
    got = trace.causal_chain()
    assert len(got) == len(chain)
    for name, part in zip(got, chain, strict=True):
        assert part in name


async def test_crash_shows_the_in_process_retry():
    trace = await traced("choreography", ["crash"])
    payment = next(n for n in trace.events.values() if n.event_type.endswith("reserved.v1"))
    (handling,) = payment.handlings
    assert handling.group == "payment" and handling.attempts == 2 and not handling.failed
    assert "payment@shop: acked (2 attempts" in render_text(trace)


async def test_text_trace_of_a_compensated_saga():
    trace = await traced("orchestration", ["shipping-down"])
    text = render_text(trace)
    assert text.startswith("flow o1: saga COMPENSATED")
    assert "compensated: charge_payment, reserve_stock" in text
    assert "ShippingUnavailableError: the carrier is not accepting shipments" in text
    assert trace.outcome() == "compensated"
    assert trace.compensated() == ["charge_payment", "reserve_stock"]


async def test_html_page_is_self_contained():
    trace = await traced("choreography", ["card-declined"])
    page = render_html(trace)
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "<style>" in page
    assert "<script" not in page and "<link" not in page
    # The only URL is the SVG namespace: nothing is fetched.
    assert set(re.findall(r"https?://[^\"' ]+", page)) == {"http://www.w3.org/2000/svg"}


def test_trace_escapes_hostile_names():
    entries = [
        JournalEntry(
            correlation_id="f",
            kind=EntryKind.PUBLISH,
            at=1.0,
            service="<script>alert(1)</script>",
            event_id="e1",
            event_type="x;y#z\nNote over a: pwned",
        ),
        JournalEntry(
            correlation_id="f",
            kind=EntryKind.HANDLE,
            at=1.1,
            event_id="e1",
            event_type="x",
            group="g",
            attempt=1,
            attempts=1,
            outcome="failed",
            error_type="E",
            error_message="</pre><script>",
        ),
    ]
    trace = FlowTrace.build(entries)
    assert "<script>" not in render_html(trace)
    diagram = sequence_diagram(trace)
    assert diagram.count("\n") == 3  # header, two participants, one message: no injected line
    assert ";" not in diagram.split("\n", 3)[3]


def test_unrecorded_deliveries_are_pointed_out():
    entries = [
        JournalEntry(
            correlation_id="f", kind=EntryKind.PUBLISH, at=1.0, event_id="e", event_type="t"
        ),
        JournalEntry(
            correlation_id="f",
            kind=EntryKind.HANDLE,
            at=3.0,
            event_id="e",
            event_type="t",
            group="payment",
            attempt=2,
            attempts=1,
            outcome="acked",
        ),
    ]
    trace = FlowTrace.build(entries)
    assert "1 earlier delivery(ies) unrecorded" in render_text(trace)
    assert "Note over a_payment: ✗ 1 earlier delivery lost (consumer crashed?)" in sequence_diagram(
        trace
    )


def test_empty_flow():
    assert render_text(FlowTrace.build([], "nope")) == "flow nope: no journal entries"
