"""The observability commands: trace, flows stalled, topology, diagram."""

from __future__ import annotations

import asyncio
import time

import pytest

from sagaflow.cli import main
from sagaflow.observability import EntryKind, JournalEntry
from sagaflow.observability.sqlite import SqliteJournal


def run(capsys, *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


@pytest.fixture
def journal_url(tmp_path):
    path = tmp_path / "journal.db"
    journal = SqliteJournal(str(path))
    now = time.time()
    entries = [
        JournalEntry(
            correlation_id="o1",
            kind=EntryKind.PUBLISH,
            at=now - 600,
            service="orders",
            event_id="e1",
            event_type="shop.order.placed.v1",
        ),
        JournalEntry(
            correlation_id="o1",
            kind=EntryKind.HANDLE,
            at=now - 599,
            service="payment",
            event_id="e1",
            event_type="shop.order.placed.v1",
            group="payment",
            attempt=1,
            attempts=3,
            duration=0.01,
            outcome="failed",
            error_type="CardDeclinedError",
            error_message="card declined",
        ),
    ]
    asyncio.run(journal.write(entries))
    asyncio.run(journal.close())
    return f"sqlite:///{path}"


def test_trace_text(capsys, journal_url):
    code, out, _ = run(capsys, "trace", "o1", "--journal", journal_url)
    assert code == 0
    assert out.startswith("flow o1  (1 events, 1 handlings, 1 failed;")
    assert "✗ payment@payment: failed (3 attempts" in out
    assert "CardDeclinedError: card declined" in out


def test_trace_mermaid_and_html_to_a_file(capsys, journal_url, tmp_path):
    code, out, _ = run(capsys, "trace", "o1", "--journal", journal_url, "--format", "mermaid")
    assert code == 0
    assert out.splitlines()[-1] == (
        "    a_orders-xa_payment: shop.order.placed.v1: CardDeclinedError after 3 attempt(s)"
    )
    target = tmp_path / "flow.html"
    code, _, err = run(
        capsys, "trace", "o1", "--journal", journal_url, "--format", "html", "-o", str(target)
    )
    assert code == 0 and "wrote" in err
    assert "<svg" in target.read_text()


def test_trace_exit_codes(capsys, journal_url, monkeypatch):
    monkeypatch.delenv("SAGAFLOW_JOURNAL", raising=False)
    assert run(capsys, "trace", "nope", "--journal", journal_url)[0] == 1
    assert run(capsys, "trace", "o1")[0] == 2
    assert run(capsys, "trace", "o1", "--journal", "ftp://x")[0] == 2
    code, _, err = run(capsys, "trace", "o1", "--journal", "sqlite:////nonexistent/dir/j.db")
    assert code == 3 and "journal" in err
    monkeypatch.setenv("SAGAFLOW_JOURNAL", journal_url)
    assert run(capsys, "trace", "o1")[0] == 0


def test_flows_stalled(capsys, journal_url):
    spec = "shop.order.placed.v1 -> shop.payment.captured.v1 within 5m"
    code, out, _ = run(capsys, "flows", "stalled", "--journal", journal_url, "--expect", spec)
    assert code == 1
    assert out.startswith("o1: no shop.payment.captured.v1 300s after shop.order.placed.v1")
    spec_unless = spec + " unless shop.order.placed.v1"
    code, out, _ = run(
        capsys, "flows", "stalled", "--journal", journal_url, "--expect", spec_unless
    )
    assert (code, out) == (0, "no stalled flows\n")
    assert run(capsys, "flows", "stalled", "--journal", journal_url, "--expect", "bad")[0] == 2


def test_topology(capsys):
    target = "sagaflow.examples.ecommerce.choreographed:topology"
    code, out, _ = run(capsys, "topology", target, "--strict")
    assert (code, out.strip()) == (
        0,
        "topology ok: every emitted event is consumed, every handler can run",
    )
    code, out, _ = run(capsys, "topology", target, "--format", "mermaid")
    assert code == 0 and out.startswith("flowchart LR")
    assert run(capsys, "topology", "no.such.module:x")[0] == 2
    assert run(capsys, "topology", "sagaflow.examples.ecommerce.orchestrated:definition")[0] == 2


def test_topology_reports_problems(capsys, tmp_path, monkeypatch):
    (tmp_path / "broken_topology.py").write_text(
        "from sagaflow.choreography import EventBus\n"
        "from sagaflow.events import Event, EventRegistry\n"
        "r = EventRegistry()\n"
        "class A(Event, type='t.a.v1', registry=r): pass\n"
        "class B(Event, type='t.b.v1', registry=r): pass\n"
        "def bus():\n"
        "    bus = EventBus(registry=r)\n"
        "    bus.subscribe(A, lambda e: None, group='g', emits=[B])\n"
        "    return bus\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, _ = run(capsys, "topology", "broken_topology:bus", "--entry", "t.a.v1")
    assert code == 1
    assert "nobody consumes t.b.v1 (emitted by g)" in out


def test_diagram_of_a_saga_with_its_state(capsys, tmp_path):
    from sagaflow.examples.ecommerce import orchestrated
    from sagaflow.examples.ecommerce.model import OrderRequest
    from sagaflow.examples.ecommerce.services import Failures, Services
    from sagaflow.orchestration.orchestrator import Orchestrator
    from sagaflow.stores import open_store

    url = f"sqlite:///{tmp_path / 'sagas.db'}"

    async def run_saga() -> None:
        store = open_store(url)
        async with Orchestrator(store) as orchestrator:
            services = Services(Failures(card_declined=True))
            await orchestrated.place_order(orchestrator, services, OrderRequest(order_id="o7"))
        await store.close()

    asyncio.run(run_saga())
    target = "sagaflow.examples.ecommerce.orchestrated:definition"
    code, out, _ = run(capsys, "diagram", target, "--store", url, "--saga-id", "o7")
    assert code == 0
    assert "    class s_reserve_stock compensated" in out
    assert "    class s_charge_payment failed" in out
    assert "    s_reserve_stock ==>|undo| u_reserve_stock" in out
    assert run(capsys, "diagram", target, "--store", url, "--saga-id", "nope")[0] == 1


def test_flows_list(capsys, journal_url):
    code, out, _ = run(capsys, "flows", "list", "--journal", journal_url, "--since", "5m")
    assert (code, out) == (0, "no flows\n")  # the flow is 10 minutes old
    code, out, _ = run(
        capsys, "flows", "list", "--journal", journal_url, "--since", "1d", "--failed"
    )
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("CORRELATION ID")
    assert lines[1].split()[0] == "o1" and lines[1].split()[-2:] == ["2", "1"]


def test_flows_prune(capsys, journal_url):
    code, out, _ = run(capsys, "flows", "prune", "--journal", journal_url, "--older-than", "1d")
    assert (code, out) == (0, "deleted 0 journal entries older than 1d\n")
    code, out, _ = run(capsys, "flows", "prune", "--journal", journal_url, "--older-than", "5m")
    assert (code, out) == (0, "deleted 2 journal entries older than 5m\n")
    assert run(capsys, "trace", "o1", "--journal", journal_url)[0] == 1
    assert run(capsys, "flows", "prune", "--journal", journal_url, "--older-than", "soon")[0] == 2
