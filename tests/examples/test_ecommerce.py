"""Every scenario of the e-commerce example, in both styles: end states must agree."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sagaflow import MemorySagaStore, SagaStatus
from sagaflow.examples.ecommerce.demo import run_choreography, run_orchestration
from sagaflow.examples.ecommerce.model import OrderRequest
from sagaflow.examples.ecommerce.services import Failures, Services

SCENARIOS = {
    (): {
        "orders": "shipped",
        "stock": 4,
        "charges": {"o1": 2500},
        "refunds": {},
        "shipments": ["o1"],
        "notifications": [("o1", "shipped")],
    },
    ("out-of-stock",): {
        "orders": "cancelled",
        "stock": 5,
        "charges": {},
        "refunds": {},
        "shipments": [],
        "notifications": [("o1", "cancelled")],
    },
    ("card-declined",): {
        "orders": "cancelled",
        "stock": 5,
        "charges": {},
        "refunds": {},
        "shipments": [],
        "notifications": [("o1", "cancelled")],
    },
    ("shipping-down",): {
        "orders": "cancelled",
        "stock": 5,
        "charges": {},
        "refunds": {"o1": 2500},
        "shipments": [],
        "notifications": [("o1", "cancelled")],
    },
    ("crash",): {
        "orders": "shipped",
        "stock": 4,
        "charges": {"o1": 2500},
        "refunds": {},
        "shipments": ["o1"],
        "notifications": [("o1", "shipped")],
    },
}


def check(services: Services, expected: dict) -> None:
    snap = services.snapshot()
    assert snap["orders"] == {"o1": expected["orders"]}
    assert snap["stock"]["book"] == expected["stock"]
    assert snap["charges"] == expected["charges"]
    assert snap["refunds"] == expected["refunds"]
    assert snap["shipments"] == expected["shipments"]
    assert snap["notifications"] == expected["notifications"]
    assert snap["reservations"] == (["o1"] if expected["orders"] == "shipped" else [])


@pytest.mark.parametrize("failures", list(SCENARIOS), ids=lambda f: "+".join(f) or "happy")
async def test_both_styles_agree_on_every_scenario(failures):
    orchestrated_services = Services(Failures.parse(list(failures)))
    choreographed_services = Services(Failures.parse(list(failures)))
    request = OrderRequest(order_id="o1")
    await run_orchestration(orchestrated_services, request, MemorySagaStore())
    await run_choreography(choreographed_services, request)
    check(orchestrated_services, SCENARIOS[failures])
    check(choreographed_services, SCENARIOS[failures])
    assert orchestrated_services.snapshot() == choreographed_services.snapshot()


async def test_crash_scenario_retries_the_payment():
    services = Services(Failures(crash=True))
    store = MemorySagaStore()
    await run_orchestration(services, OrderRequest(order_id="o1"), store)
    log = await store.load("o1")
    assert log.status is SagaStatus.COMPLETED
    failed = [r for r in log.records if r.kind.value == "step_failed"]
    assert [(r.step, r.data["error"]["type"]) for r in failed] == [
        ("charge_payment", "ConnectionError")
    ]
    assert services.payments.requests == 2


def test_demo_command_prints_both_timelines():
    done = subprocess.run(
        [sys.executable, "-m", "sagaflow.cli", "demo", "--fail", "shipping-down"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "=== orchestration" in done.stdout and "=== choreography" in done.stdout
    assert "compensation completed charge_payment" in done.stdout
    assert "shop.payment.refunded.v1" in done.stdout
    assert "both styles reached the same end state: yes" in done.stdout


def test_demo_rejects_unknown_failures():
    done = subprocess.run(
        [sys.executable, "-m", "sagaflow.cli", "demo", "--fail", "meteor"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "unknown failure 'meteor'" in done.stderr
