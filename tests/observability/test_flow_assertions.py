"""assert_flow / check_flow on the example's flows."""

from __future__ import annotations

import pytest

from sagaflow.examples.ecommerce.events import (
    InventoryReleased,
    InventoryReserved,
    OrderCancelled,
    OrderPlaced,
    PaymentFailed,
)
from sagaflow.observability import Journaling, MemoryJournal
from sagaflow.testing.flow import assert_flow, check_flow

from ._flows import traced


async def test_card_declined_follows_its_compensation_chain():
    trace = await traced("choreography", ["card-declined"])
    check_flow(
        trace,
        [OrderPlaced, InventoryReserved, PaymentFailed, InventoryReleased, OrderCancelled],
        exact=True,
        handled_by={PaymentFailed: ["inventory-releases"]},
        dead_letters=0,
    )
    # A sub-chain anywhere in the tree is enough without exact=True.
    check_flow(trace, [PaymentFailed, InventoryReleased])


async def test_a_broken_chain_fails_with_the_trace():
    trace = await traced("choreography", ["card-declined"])
    with pytest.raises(AssertionError) as caught:
        check_flow(trace, [OrderPlaced, PaymentFailed])
    message = str(caught.value)
    assert "no causal chain shop.order.placed.v1 -> shop.payment.failed.v1" in message
    assert "causal tree" in message  # the rendered trace comes along


async def test_saga_outcome_and_compensations():
    trace = await traced("orchestration", ["shipping-down"])
    check_flow(trace, outcome="compensated", compensated=["charge_payment", "reserve_stock"])
    with pytest.raises(AssertionError, match="saga outcome 'compensated' != expected 'completed'"):
        check_flow(trace, outcome="completed")


async def test_assert_flow_reads_and_flushes_a_journaling():
    journaling = Journaling(MemoryJournal(), interval=60)
    with pytest.raises(AssertionError, match="has no entry for this flow"):
        await assert_flow(journaling, "nothing")
    from sagaflow import MemorySagaStore
    from sagaflow.examples.ecommerce.demo import run_orchestration
    from sagaflow.examples.ecommerce.model import OrderRequest
    from sagaflow.examples.ecommerce.services import Services

    await run_orchestration(Services(), OrderRequest(order_id="o9"), MemorySagaStore(), journaling)
    trace = await assert_flow(journaling, "o9", outcome="completed", compensated=[])
    assert len(trace.saga_entries) > 5
