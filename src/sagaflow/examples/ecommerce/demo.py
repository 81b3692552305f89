"""Run the order flow in one or both styles and print a readable timeline.

In-process by default: an in-memory event bus and a SQLite saga log in a
temporary directory (or the store given). Every flow is recorded in a flow
journal (a SQLite file kept in a temporary directory unless ``journal`` names
one), and the demo ends with the ``sagaflow trace`` commands that show them.
``sagaflow demo`` calls `run_demo`.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagaflow import Orchestrator, RetryPolicy
from sagaflow.choreography import EventBus, HandleContext, HandleNext, Middleware, PublishNext
from sagaflow.choreography.context import current_envelope
from sagaflow.envelope import Envelope
from sagaflow.events import Event
from sagaflow.examples.ecommerce import choreographed, orchestrated
from sagaflow.examples.ecommerce.model import OrderRequest
from sagaflow.examples.ecommerce.services import Failures, Services
from sagaflow.observability.journal import open_journal
from sagaflow.observability.recorder import Journaling
from sagaflow.orchestration.render import render_timeline
from sagaflow.orchestration.store import SagaStore

__all__ = [
    "FlowRecorder",
    "default_journal_url",
    "normalized",
    "run_choreography",
    "run_demo",
    "run_orchestration",
]

STYLES = ("orchestration", "choreography")


@dataclass(frozen=True)
class _Line:
    at: float
    text: str


class FlowRecorder(Middleware):
    """Bus middleware that notes every publish and handling, for the timeline."""

    def __init__(self) -> None:
        self.lines: list[_Line] = []

    async def on_publish(
        self, envelopes: Sequence[Envelope[Event]], call_next: PublishNext
    ) -> None:
        """Note who published what."""
        parent = current_envelope()
        by = f"handler of {parent.type}" if parent else "order service"
        for envelope in envelopes:
            self.lines.append(_Line(time.perf_counter(), f"{envelope.type:<28} published by {by}"))
        await call_next(envelopes)

    async def on_handle(self, ctx: HandleContext, call_next: HandleNext) -> None:
        """Note each handling, its attempts and its outcome."""
        try:
            await call_next(ctx)
        except Exception as exc:
            self.lines.append(
                _Line(time.perf_counter(), f"{ctx.envelope.type:<28} FAILED in {ctx.group}: {exc}")
            )
            raise
        retries = f" after {ctx.attempts} attempts" if ctx.attempts > 1 else ""
        self.lines.append(
            _Line(time.perf_counter(), f"{ctx.envelope.type:<28} handled by {ctx.group}{retries}")
        )

    def render(self, title: str) -> str:
        """The recorded lines with times relative to the first."""
        if not self.lines:
            return title
        start = self.lines[0].at
        body = [f"  +{(line.at - start) * 1000:8.2f} ms  {line.text}" for line in self.lines]
        return "\n".join([title, *body])


async def run_orchestration(
    services: Services,
    request: OrderRequest,
    store: SagaStore,
    journaling: Journaling | None = None,
) -> tuple[str, str]:
    """Run the orchestrated flow; return (outcome, timeline).

    With ``journaling``, the saga's steps are recorded in its flow journal.
    """
    hooks = [journaling.hooks] if journaling is not None else []
    async with Orchestrator(store, hooks=hooks) as orchestrator:
        result = await orchestrated.place_order(orchestrator, services, request)
    timeline = render_timeline(result.saga_id, result.status, result.records, saga_name="order")
    return services.orders[request.order_id], timeline


async def run_choreography(
    services: Services, request: OrderRequest, journaling: Journaling | None = None
) -> tuple[str, str]:
    """Run the choreographed flow in process; return (outcome, timeline).

    With ``journaling``, every publish and handling is recorded in its flow journal.
    """
    recorder = FlowRecorder()
    retry = RetryPolicy(max_attempts=3, initial_delay=0.01, max_delay=0.1)
    middleware: list[Middleware] = [recorder]
    if journaling is not None:
        middleware.append(journaling)
    async with EventBus(
        middleware=middleware,
        retry=retry,
        source="/shop",
        on_dead_letter=journaling.on_dead_letter if journaling is not None else None,
    ) as bus:
        choreographed.wire(bus, services)
        await choreographed.place_order(bus, services, request)
        await bus.join(timeout=30)
    outcome = services.orders[request.order_id]
    return outcome, recorder.render(f"choreography, order {request.order_id}: {outcome.upper()}")


@contextlib.contextmanager
def _default_store(url: str | None) -> Iterator[SagaStore]:
    from sagaflow.stores import open_store

    if url:
        yield open_store(url)
        return
    with tempfile.TemporaryDirectory(prefix="sagaflow-demo-") as directory:
        yield open_store(f"sqlite:///{Path(directory) / 'sagas.db'}")


def summary(services: Services) -> str:
    """The end state of every service, in a few lines."""
    snap = services.snapshot()
    return "\n".join(
        [
            f"  stock: {snap['stock']}   reservations: {snap['reservations'] or 'none'}",
            f"  charges: {snap['charges'] or 'none'}   refunds: {snap['refunds'] or 'none'}",
            f"  shipments: {snap['shipments'] or 'none'}",
            "  notifications: "
            + (", ".join(f"{order}:{kind}" for order, kind in snap["notifications"]) or "none"),
        ]
    )


def normalized(snapshot: dict[str, Any], order_id: str) -> dict[str, Any]:
    """``snapshot`` with ``order_id`` replaced by ``"ORDER"`` (to compare runs of two orders)."""

    def rename(value: Any) -> Any:
        if isinstance(value, str):
            return "ORDER" if value == order_id else value
        if isinstance(value, dict):
            return {rename(k): rename(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(rename(v) for v in value)
        return value

    renamed: dict[str, Any] = rename(snapshot)
    return renamed


def default_journal_url() -> str:
    """A SQLite journal in a new temporary directory, left in place for `sagaflow trace`."""
    directory = tempfile.mkdtemp(prefix="sagaflow-demo-")
    return f"sqlite:///{Path(directory) / 'journal.db'}"


def print_trace_hint(journal_url: str, order_ids: Sequence[str]) -> None:
    """Tell the reader how to see each flow again."""
    print("\nsee each flow with:")
    for order_id in order_ids:
        print(f"  sagaflow trace {order_id} --journal {journal_url}")
    print("  (add --format mermaid or --format html -o flow.html for a diagram)")


async def _run(
    styles: Sequence[str], failures: Failures, store_url: str | None, journal_url: str
) -> dict[str, Any]:
    stamp = int(time.time() * 1000) % 100_000
    snapshots: dict[str, Any] = {}
    order_ids: list[str] = []
    journaling = Journaling(open_journal(journal_url), service="shop")
    try:
        for style in styles:
            # One order id per style: each flow has its own trace in the journal.
            request = OrderRequest(order_id=f"order-{stamp}-{style[:4]}")
            order_ids.append(request.order_id)
            services = Services(Failures(**vars(failures)))
            print(f"\n=== {style}: order {request.order_id} ===")
            if style == "orchestration":
                with _default_store(store_url) as store:
                    try:
                        _, timeline = await run_orchestration(services, request, store, journaling)
                    finally:
                        await store.close()
            else:
                _, timeline = await run_choreography(services, request, journaling)
            print(timeline)
            print(summary(services))
            snapshots[style] = normalized(services.snapshot(), request.order_id)
    finally:
        await journaling.close()
    print_trace_hint(journal_url, order_ids)
    return snapshots


def run_demo(
    *,
    style: str = "both",
    failures: Sequence[str] = (),
    transport: str | None = None,
    store: str | None = None,
    journal: str | None = None,
) -> int:
    """Run the demo and print it; return a process exit code.

    Args:
        style: ``orchestration``, ``choreography`` or ``both``.
        failures: Failure switches (``out-of-stock``, ``card-declined``,
            ``shipping-down``, ``crash``).
        transport: Broker URL to run each service as its own process; ``None``
            runs everything in this process.
        store: Saga store URL for the orchestrated flow (default: a temporary
            SQLite file).
        journal: Flow journal URL every process writes to (default: a SQLite
            file in a temporary directory, kept for ``sagaflow trace``).
    """
    from sagaflow.errors import ConfigurationError

    try:
        parsed = Failures.parse(list(failures))
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    styles = STYLES if style == "both" else (style,)
    journal_url = journal or default_journal_url()
    if transport is not None:
        from sagaflow.examples.ecommerce.distributed import run_distributed

        return asyncio.run(run_distributed(styles, parsed, transport, store, journal_url))
    snapshots = asyncio.run(_run(styles, parsed, store, journal_url))
    if len(snapshots) == 2:
        agree = snapshots["orchestration"] == snapshots["choreography"]
        print(f"\nboth styles reached the same end state: {'yes' if agree else 'NO'}")
        return 0 if agree else 1
    return 0
