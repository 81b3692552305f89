"""The order flow with one process per service, over a real broker.

`run_distributed` starts the four services as subprocesses
(`sagaflow.examples.ecommerce.service`), runs the order service itself (the
orchestrator with remote steps, or the choreography's order handlers), restarts a
service that crashes, and asks every service for its end state over the bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from sagaflow import Orchestrator, SagaStatus
from sagaflow.choreography import EventBus
from sagaflow.examples.ecommerce import choreographed, commands
from sagaflow.examples.ecommerce.demo import FlowRecorder, normalized, print_trace_hint, summary
from sagaflow.examples.ecommerce.model import OrderRequest
from sagaflow.examples.ecommerce.orchestrated import OrderState
from sagaflow.examples.ecommerce.service import (
    CRASH_EXIT_CODE,
    SERVICES,
    ServiceState,
    StateRequested,
    demo_transport,
    prefixed,
)
from sagaflow.examples.ecommerce.services import FAILURE_NAMES, Failures, Services
from sagaflow.observability.journal import open_journal
from sagaflow.observability.recorder import Journaling
from sagaflow.orchestration.context import StepContext
from sagaflow.orchestration.remote import RemoteSteps
from sagaflow.orchestration.render import render_timeline

__all__ = ["run_distributed", "run_flows"]

FINAL = ("shipped", "cancelled")


class _Fleet:
    """The service subprocesses of one run; restarts any that crash."""

    def __init__(
        self,
        style: str,
        url: str,
        prefix: str,
        failures: list[str],
        workdir: Path,
        journal: str | None = None,
    ):
        self.style, self.url, self.prefix, self.journal = style, url, prefix, journal
        self.failures = failures
        self.marker = workdir / f"{prefix}.crashed"
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.crashes: list[str] = []
        self._watchers: list[asyncio.Task[None]] = []
        self._stopping = False

    async def start(self) -> None:
        await asyncio.gather(*(self._spawn(name) for name in SERVICES))
        self._watchers = [asyncio.ensure_future(self._watch(name)) for name in SERVICES]

    async def _spawn(self, name: str) -> None:
        command = [
            sys.executable, "-m", "sagaflow.examples.ecommerce.service", name,
            "--style", self.style, "--transport", self.url, "--prefix", self.prefix,
            "--crash-marker", str(self.marker),
        ]  # fmt: skip
        for failure in self.failures:
            command += ["--fail", failure]
        if self.journal:
            command += ["--journal", self.journal]
        process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        self.processes[name] = process
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=60)
        if line.strip() != b"READY":
            raise RuntimeError(f"the {name} service did not start (exit code {process.returncode})")

    async def _watch(self, name: str) -> None:
        while not self._stopping:
            code = await self.processes[name].wait()
            if self._stopping:
                return
            self.crashes.append(f"{name} (exit {code})")
            print(f"  !! the {name} service crashed (exit code {code}); restarting it")
            if code != CRASH_EXIT_CODE:
                return
            await self._spawn(name)

    async def stop(self) -> None:
        self._stopping = True
        for process in self.processes.values():
            if process.returncode is None:
                process.terminate()
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                await asyncio.wait_for(process.wait(), timeout=20)
        for watcher in self._watchers:
            watcher.cancel()


@contextlib.asynccontextmanager
async def _fleet(
    style: str, url: str, prefix: str, failures: list[str], workdir: Path, journal: str | None
) -> AsyncIterator[_Fleet]:
    fleet = _Fleet(style, url, prefix, failures, workdir, journal)
    try:
        await fleet.start()
        yield fleet
    finally:
        await fleet.stop()


async def _collect_state(
    bus: EventBus, answers: dict[str, dict[str, Any]], request_id: str
) -> dict[str, Any]:
    answers.clear()
    await bus.publish(StateRequested(request_id=request_id))
    deadline = time.monotonic() + 20
    # Answers arrive through a handler writing the dict: poll it briefly.
    while len(answers) < len(SERVICES) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    merged: dict[str, Any] = {}
    for part in answers.values():
        merged.update(part)
    return merged


async def _settled_state(
    bus: EventBus, answers: dict[str, dict[str, Any]], order_id: str
) -> dict[str, Any]:
    """Ask until the notification of the outcome has arrived (choreography is eventual).

    Services answer one request at different moments, so one round may mix a
    state from before an effect with one from after it. Every effect of the flow
    happens before its final notification; a round *asked after* the notification
    was seen therefore reflects them all.
    """
    state: dict[str, Any] = {}
    for attempt in range(40):
        state = await _collect_state(bus, answers, f"{order_id}-{attempt}")
        if any(entry[0] == order_id for entry in state.get("notifications", [])):
            return await _collect_state(bus, answers, f"{order_id}-final")
        await asyncio.sleep(0.25)
    return state


async def _orchestrate(
    bus: EventBus, request: OrderRequest, store_url: str | None, journaling: Journaling | None
) -> tuple[str, str]:
    from sagaflow.stores import open_store

    remote = RemoteSteps(bus)
    saga = commands.remote_order_saga(remote)
    notify = remote.call(
        lambda ctx: commands.NotifyCustomer(
            order_id=ctx.state.order_id,
            kind="cancelled",
            text="Your order was cancelled; nothing was charged.",
        ),
        success=commands.CustomerNotified,
    )
    await bus.start()
    with tempfile.TemporaryDirectory(prefix="sagaflow-demo-") as directory:
        store = open_store(store_url or f"sqlite:///{Path(directory) / 'sagas.db'}")
        try:
            hooks = [journaling.hooks] if journaling is not None else []
            async with Orchestrator(store, hooks=hooks) as orchestrator:
                state = OrderState(**request.model_dump())
                result = await orchestrator.run(saga, state, saga_id=request.order_id)
        finally:
            await store.close()
    outcome = "shipped" if result.status is SagaStatus.COMPLETED else "cancelled"
    if result.status is SagaStatus.COMPENSATED:
        context = StepContext(result.saga_id, "order", "notify_cancelled", 1, result.state)
        await asyncio.wait_for(notify(context), timeout=30)
    elif result.status is SagaStatus.FAILED:
        outcome = "needs attention"
    timeline = render_timeline(result.saga_id, result.status, result.records, saga_name="order")
    return outcome, timeline


async def _choreograph(bus: EventBus, request: OrderRequest, recorder: FlowRecorder) -> str:
    orders = Services()
    choreographed.wire(bus, orders, only={"orders"})
    await bus.start()
    await choreographed.place_order(bus, orders, request)
    deadline = time.monotonic() + 90
    # The order service's own handlers set the outcome: poll it.
    while orders.orders[request.order_id] not in FINAL and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return orders.orders[request.order_id]


async def _run_style(
    style: str,
    failures: list[str],
    url: str,
    store_url: str | None,
    workdir: Path,
    journal: str | None,
    order_ids: dict[str, str],
) -> dict[str, Any]:
    prefix = f"demo{uuid.uuid4().hex[:10]}"
    request = OrderRequest(order_id=f"order-{uuid.uuid4().hex[:6]}")
    order_ids[style] = request.order_id
    print(f"\n=== {style} over {url.split('://')[0]}: order {request.order_id} ===")
    recorder = FlowRecorder()
    answers: dict[str, dict[str, Any]] = {}
    journaling = Journaling(open_journal(journal), service="orders") if journal else None
    bus = EventBus(
        demo_transport(url),
        source="/orders",
        topic_for=prefixed(prefix),
        middleware=[recorder] if journaling is None else [recorder, journaling],
        on_unrouted=lambda envelope: None,
        on_dead_letter=journaling.on_dead_letter if journaling is not None else None,
    )

    @bus.handler(ServiceState, group=f"{prefix}-state-answers")
    async def collect(event: ServiceState) -> None:
        answers[event.service] = event.state

    async with _fleet(style, url, prefix, failures, workdir, journal) as fleet, bus:
        if style == "orchestration":
            outcome, timeline = await _orchestrate(bus, request, store_url, journaling)
        else:
            outcome = await _choreograph(bus, request, recorder)
            timeline = recorder.render(
                f"choreography, order {request.order_id} (as seen by the order service): "
                f"{outcome.upper()}"
            )
        state = await _settled_state(bus, answers, request.order_id)
    if journaling is not None:
        await journaling.close()
    print(timeline)
    if fleet.crashes:
        print(f"  crashed and restarted: {', '.join(fleet.crashes)}")
    view = Services()
    view.orders[request.order_id] = outcome
    _fill(view, state)
    print(summary(view))
    # Order ids differ per style: compare the outcome with the id replaced.
    return normalized(view.snapshot(), request.order_id)


def _fill(view: Services, state: dict[str, Any]) -> None:
    view.inventory.stock = dict(state.get("stock", {}))
    view.inventory.reservations = dict.fromkeys(state.get("reservations", []), ("?", 0))
    view.payments.charges = dict(state.get("charges", {}))
    view.payments.refunded = dict(state.get("refunds", {}))
    view.shipping.shipments = dict.fromkeys(state.get("shipments", []), "")
    # JSON turned the (order, kind) tuples into lists: make them keys again.
    view.notifications.sent = dict.fromkeys(map(tuple, state.get("notifications", [])), "")


async def run_flows(
    styles: Sequence[str],
    failures: Failures,
    url: str,
    store_url: str | None = None,
    journal: str | None = None,
    order_ids: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run each style over ``url``; return every service's end state per style.

    Order ids are replaced by ``"ORDER"`` so that the styles can be compared.
    With ``journal`` (a URL every process can reach), each process records the
    flow there; ``order_ids`` is then filled with each style's order id (the
    correlation id to trace).
    """
    names = [name for name in FAILURE_NAMES if getattr(failures, name.replace("-", "_"))]
    results: dict[str, dict[str, Any]] = {}
    ids = order_ids if order_ids is not None else {}
    with tempfile.TemporaryDirectory(prefix="sagaflow-fleet-") as workdir:
        for style in styles:
            results[style] = await _run_style(
                style, names, url, store_url, Path(workdir), journal, ids
            )
    return results


async def run_distributed(
    styles: Sequence[str],
    failures: Failures,
    url: str,
    store_url: str | None,
    journal: str | None = None,
) -> int:
    """Run each style with one process per service over ``url``; return an exit code."""
    order_ids: dict[str, str] = {}
    results = await run_flows(styles, failures, url, store_url, journal, order_ids)
    if journal:
        print_trace_hint(journal, list(order_ids.values()))
    if len(results) == 2:
        agree = results["orchestration"] == results["choreography"]
        print(f"\nboth styles reached the same end state: {'yes' if agree else 'NO'}")
        return 0 if agree else 1
    return 0
