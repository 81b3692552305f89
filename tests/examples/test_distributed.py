"""The example with one process per service over real brokers: styles must agree.

Every scenario runs over Redis; one scenario each over NATS and PostgreSQL.
The crash scenario kills the payment service process (SIGKILL-like exit while
it holds an unacknowledged message); the broker redelivers to its restart.
"""

from __future__ import annotations

import pytest

from sagaflow.examples.ecommerce.distributed import run_flows
from sagaflow.examples.ecommerce.services import Failures

EXPECTED = {
    (): ("shipped", {"book": 4}, {"ORDER": 2500}, {}, ["ORDER"], "shipped"),
    ("out-of-stock",): ("cancelled", {"book": 5}, {}, {}, [], "cancelled"),
    ("card-declined",): ("cancelled", {"book": 5}, {}, {}, [], "cancelled"),
    ("shipping-down",): ("cancelled", {"book": 5}, {}, {"ORDER": 2500}, [], "cancelled"),
    ("crash",): ("shipped", {"book": 4}, {"ORDER": 2500}, {}, ["ORDER"], "shipped"),
}

pytestmark = pytest.mark.timeout(600)


def check(snapshot, expected):
    outcome, stock, charges, refunds, shipments, notification = expected
    assert snapshot["orders"] == {"ORDER": outcome}
    assert snapshot["stock"]["book"] == stock["book"]
    assert snapshot["charges"] == charges
    assert snapshot["refunds"] == refunds
    assert snapshot["shipments"] == shipments
    assert snapshot["notifications"] == [("ORDER", notification)]


@pytest.mark.parametrize("failures", list(EXPECTED), ids=lambda f: "+".join(f) or "happy")
async def test_every_scenario_over_redis(redis_url, failures):
    results = await run_flows(
        ("orchestration", "choreography"), Failures.parse(list(failures)), redis_url
    )
    for style in ("orchestration", "choreography"):
        check(results[style], EXPECTED[failures])
    assert results["orchestration"] == results["choreography"]


async def test_card_declined_over_nats(nats_url):
    results = await run_flows(
        ("orchestration", "choreography"), Failures(card_declined=True), nats_url
    )
    check(results["orchestration"], EXPECTED[("card-declined",)])
    assert results["orchestration"] == results["choreography"]


async def test_shipping_down_over_postgres(postgres_url):
    results = await run_flows(
        ("orchestration", "choreography"), Failures(shipping_down=True), postgres_url
    )
    check(results["orchestration"], EXPECTED[("shipping-down",)])
    assert results["orchestration"] == results["choreography"]
