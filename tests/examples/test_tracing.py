"""The example's failure scenarios, traced end to end with the journal and the CLI.

In process for every scenario in both styles; across processes over Redis and
PostgreSQL, each service process writing to one shared SQLite or PostgreSQL journal.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from sagaflow.examples.ecommerce.distributed import run_flows
from sagaflow.examples.ecommerce.services import Failures
from sagaflow.observability import load_trace, open_journal, render_text, sequence_diagram
from sagaflow.testing.flow import check_flow

SCENARIOS = {
    (): ("completed", []),
    ("out-of-stock",): ("compensated", []),
    ("card-declined",): ("compensated", ["reserve_stock"]),
    ("shipping-down",): ("compensated", ["charge_payment", "reserve_stock"]),
    ("crash",): ("completed", []),
}

CHOREOGRAPHY_ENDS = {
    (): "shop.order.shipped.v1",
    ("out-of-stock",): "shop.order.cancelled.v1",
    ("card-declined",): "shop.order.cancelled.v1",
    ("shipping-down",): "shop.order.cancelled.v1",
    ("crash",): "shop.order.shipped.v1",
}


@pytest.mark.parametrize("failures", list(SCENARIOS), ids=lambda f: "+".join(f) or "happy")
def test_demo_prints_trace_commands_that_work(failures, tmp_path):
    journal = f"sqlite:///{tmp_path / 'journal.db'}"
    argv = ["demo", "--journal", journal]
    for failure in failures:
        argv += ["--fail", failure]
    demo = subprocess.run(
        [sys.executable, "-m", "sagaflow.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    commands = re.findall(r"^  sagaflow trace (\S+) --journal (\S+)$", demo.stdout, re.MULTILINE)
    assert [url for _, url in commands] == [journal, journal]
    (orch, _), (chor, _) = commands
    outcome, compensated = SCENARIOS[failures]
    traces = {}
    for flow in (orch, chor):
        shown = subprocess.run(
            [sys.executable, "-m", "sagaflow.cli", "trace", flow, "--journal", journal],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        traces[flow] = shown.stdout
    assert traces[orch].startswith(f"flow {orch}: saga {outcome.upper()}")
    if compensated:
        assert f"compensated: {', '.join(compensated)}" in traces[orch]
    assert CHOREOGRAPHY_ENDS[failures] in traces[chor]
    if failures == ("crash",):
        assert "payment@shop: acked (2 attempts" in traces[chor]


async def _traces(journal_url: str, order_ids: dict[str, str]):
    journal = open_journal(journal_url)
    try:
        return {style: await load_trace(journal, flow) for style, flow in order_ids.items()}
    finally:
        await journal.close()


@pytest.mark.timeout(600)
async def test_shipping_down_across_processes_over_redis(redis_url, tmp_path):
    journal = f"sqlite:///{tmp_path / 'journal.db'}"
    order_ids: dict[str, str] = {}
    results = await run_flows(
        ("orchestration", "choreography"),
        Failures(shipping_down=True),
        redis_url,
        journal=journal,
        order_ids=order_ids,
    )
    assert results["orchestration"] == results["choreography"]
    traces = await _traces(journal, order_ids)
    saga = traces["orchestration"]
    check_flow(saga, outcome="compensated", compensated=["charge_payment", "reserve_stock"])
    # Every service process wrote its part of the one flow.
    assert {"orders", "inventory", "payment", "shipping", "notification"} <= set(saga.services())
    check_flow(
        saga,
        ["shop.cmd.ship-order.v1", "shop.reply.shipment-refused.v1"],
        handled_by={"shop.cmd.refund-payment.v1": ["payment-refunds"]},
    )
    chor = traces["choreography"]
    check_flow(
        chor,
        [
            "shop.order.placed.v1",
            "shop.inventory.reserved.v1",
            "shop.payment.captured.v1",
            "shop.shipping.failed.v1",
            "shop.payment.refunded.v1",
            "shop.inventory.released.v1",
            "shop.order.cancelled.v1",
        ],
        exact=True,
        dead_letters=0,
    )
    assert {"orders", "inventory", "payment", "shipping", "notification"} <= set(chor.services())
    diagram = sequence_diagram(chor)
    assert "    a_shipping->>a_payment_refunds: shop.shipping.failed.v1" in diagram


@pytest.mark.timeout(600)
async def test_crash_across_processes_over_postgres_into_a_postgres_journal(postgres_url):
    from sagaflow.observability.postgres import PostgresJournal

    order_ids: dict[str, str] = {}
    # Every process opens the journal by URL (the default table); order ids are unique.
    await run_flows(
        ("choreography",),
        Failures(crash=True),
        postgres_url,
        journal=postgres_url,
        order_ids=order_ids,
    )
    journal = PostgresJournal(postgres_url)
    try:
        trace = await load_trace(journal, order_ids["choreography"])
    finally:
        await journal.close()
        await _forget(postgres_url, order_ids["choreography"])
    check_flow(
        trace, ["shop.order.placed.v1", "shop.inventory.reserved.v1", "shop.payment.captured.v1"]
    )
    payment = next(n for n in trace.events.values() if n.event_type == "shop.inventory.reserved.v1")
    (handled,) = payment.handlings
    # The first delivery died with the payment process; the broker redelivered it.
    assert handled.attempt == 2 and handled.service == "payment"
    assert "earlier delivery(ies) unrecorded" in render_text(trace)


async def _forget(url: str, flow: str) -> None:
    """Remove this test's flow from the shared journal table."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("DELETE FROM sagaflow_journal WHERE correlation_id = %s", (flow,))
