"""Run the e-commerce example's flows in process with a journal (shared by the tests)."""

from __future__ import annotations

from sagaflow import MemorySagaStore
from sagaflow.examples.ecommerce.demo import run_choreography, run_orchestration
from sagaflow.examples.ecommerce.model import OrderRequest
from sagaflow.examples.ecommerce.services import Failures, Services
from sagaflow.observability import FlowTrace, Journaling, MemoryJournal, load_trace


async def traced(style: str, failures: list[str], order_id: str = "o1") -> FlowTrace:
    """Run one flow of the example with a journal; return its trace."""
    journal = MemoryJournal()
    journaling = Journaling(journal, service="shop")
    services = Services(Failures.parse(failures))
    request = OrderRequest(order_id=order_id)
    if style == "orchestration":
        await run_orchestration(services, request, MemorySagaStore(), journaling)
    else:
        await run_choreography(services, request, journaling)
    await journaling.flush()
    return await load_trace(journal, order_id)
