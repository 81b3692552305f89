"""Saga definitions as Mermaid flowcharts, with and without an instance's state."""

from __future__ import annotations

from pydantic import BaseModel

from sagaflow import Parallel, Saga, Step, StepKind
from sagaflow.examples.ecommerce.orchestrated import definition
from sagaflow.observability import saga_flowchart
from sagaflow.orchestration.records import RecordKind, SagaRecord

ORDER = """\
flowchart LR
    start(("order v1"))
    s_reserve_stock["reserve_stock<br/><small>compensatable</small>"]
    start --> s_reserve_stock
    s_charge_payment["charge_payment<br/><small>compensatable</small>"]
    s_reserve_stock --> s_charge_payment
    s_ship_order{{"ship_order<br/><small>pivot</small>"}}
    s_charge_payment --> s_ship_order
    s_notify_customer(["notify_customer<br/><small>retriable</small>"])
    s_ship_order --> s_notify_customer
    finish(("done"))
    s_notify_customer --> finish
    u_reserve_stock[/"undo: release_stock"/]
    s_reserve_stock -.->|undo| u_reserve_stock
    u_charge_payment[/"undo: refund_payment"/]
    s_charge_payment -.->|undo| u_charge_payment"""


def test_order_saga_flowchart():
    assert saga_flowchart(definition()) == ORDER


class State(BaseModel):
    pass


def act(ctx: object) -> None:
    return None


def test_parallel_stage_and_state_overlay():
    saga = Saga(
        "trip",
        state=State,
        steps=[
            Parallel(
                "book",
                Step("flight", act, compensate=act),
                Step("hotel", act, compensate=act),
            ),
            Step("pay", act, kind=StepKind.PIVOT),
        ],
    )
    records = [
        SagaRecord(RecordKind.STEP_COMPLETED, "flight", 1),
        SagaRecord(RecordKind.STEP_FAILED, "hotel", 1, data={"final": True}),
        SagaRecord(RecordKind.COMPENSATION_COMPLETED, "flight", 1),
    ]
    chart = saga_flowchart(saga, records).splitlines()
    assert '    subgraph p0["parallel"]' in chart
    assert "    start --> s_flight" in chart and "    start --> s_hotel" in chart
    assert "    s_flight --> s_pay" in chart and "    s_hotel --> s_pay" in chart
    assert "    class s_flight compensated" in chart
    assert "    class s_hotel failed" in chart
    assert "    s_flight ==>|undo| u_flight" in chart
    assert "    s_hotel -.->|undo| u_hotel" in chart
    assert not any(line.startswith("    class s_pay") for line in chart)
