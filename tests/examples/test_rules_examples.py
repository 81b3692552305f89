"""Rules of the e-commerce example that the scenario tests leave out.

In process: the remote-command wiring refuses unknown services, the diagram and
topology entry points build, an order whose compensation fails needs attention,
the demo refuses unknown failures and unsupported broker URLs, and runs one style
alone. Over RabbitMQ, one process per service (the demo documents amqp://).
"""

from __future__ import annotations

import pytest

from sagaflow import MemorySagaStore, SagaStatus
from sagaflow.choreography import EventBus
from sagaflow.errors import ConfigurationError
from sagaflow.examples.ecommerce import choreographed, commands, orchestrated
from sagaflow.examples.ecommerce.demo import FlowRecorder, run_demo, run_orchestration
from sagaflow.examples.ecommerce.distributed import run_flows
from sagaflow.examples.ecommerce.model import OrderRequest
from sagaflow.examples.ecommerce.service import demo_transport
from sagaflow.examples.ecommerce.services import Failures, Services


def test_serve_commands_refuses_an_unknown_service() -> None:
    with pytest.raises(ValueError, match="unknown service 'billing'"):
        commands.serve_commands(EventBus(), Services(), "billing")


def test_serve_commands_subscribes_each_known_service() -> None:
    for name in ("inventory", "payment", "shipping", "notification"):
        bus = EventBus()
        commands.serve_commands(bus, Services(), name)
        assert bus.subscriptions, name


def test_definition_and_topology_entry_points_build() -> None:
    saga = orchestrated.definition()
    assert saga.name == "order"
    assert [step.name for step in saga.steps()] == [
        "reserve_stock",
        "charge_payment",
        "ship_order",
        "notify_customer",
    ]
    topology = choreographed.topology()
    assert topology.entry_points == frozenset({"shop.order.placed.v1"})
    assert str(topology.check()).startswith("topology ok")


async def test_failed_compensation_leaves_the_order_needing_attention() -> None:
    services = Services(Failures(shipping_down=True))

    async def refund_fails(order_id: str) -> None:
        raise RuntimeError("refund service gone")

    services.payments.refund = refund_fails  # type: ignore[method-assign]
    store = MemorySagaStore()
    outcome, timeline = await run_orchestration(services, OrderRequest(order_id="o1"), store)
    assert outcome == "needs attention"
    assert (await store.load("o1")).status is SagaStatus.FAILED
    assert services.notifications.sent == {}
    assert "FAILED" in timeline.upper()


def test_recorder_without_lines_renders_its_title() -> None:
    assert FlowRecorder().render("nothing happened") == "nothing happened"


def test_demo_refuses_unknown_failures_with_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="unknown failure 'meteor'"):
        run_demo(failures=["meteor"])


@pytest.mark.parametrize("url", ["kafka://broker:9092", "http://x", "nothing"])
def test_demo_transport_refuses_unsupported_schemes(url: str) -> None:
    with pytest.raises(ConfigurationError, match="unsupported transport URL scheme"):
        demo_transport(url)


def test_demo_runs_one_style_alone_with_a_given_store(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = f"sqlite:///{tmp_path / 'journal.db'}"
    code = run_demo(
        style="orchestration",
        failures=["card-declined"],
        store=f"sqlite:///{tmp_path / 'sagas.db'}",
        journal=journal,
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "=== orchestration" in out and "=== choreography" not in out
    assert "same end state" not in out
    assert (tmp_path / "sagas.db").exists()


@pytest.mark.timeout(300)
async def test_card_declined_over_rabbitmq(rabbitmq_url: str) -> None:
    results = await run_flows(
        ("orchestration", "choreography"), Failures(card_declined=True), rabbitmq_url
    )
    snapshot = results["orchestration"]
    assert snapshot["orders"] == {"ORDER": "cancelled"}
    assert snapshot["charges"] == {} and snapshot["shipments"] == []
    assert snapshot["notifications"] == [("ORDER", "cancelled")]
    assert results["orchestration"] == results["choreography"]
