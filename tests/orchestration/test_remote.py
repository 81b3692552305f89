"""Remote steps: commands over a bus, replies matched by causation, on memory and Redis."""

from __future__ import annotations

import asyncio
import uuid

from pydantic import BaseModel

from sagaflow import Orchestrator, RetryPolicy, Saga, SagaStatus, Step, StepKind
from sagaflow.choreography import EventBus
from sagaflow.events import Event, EventRegistry
from sagaflow.orchestration.remote import RemoteSteps, command_handler

registry = EventRegistry()


class Reserve(Event, type="test.remote.reserve.v1", registry=registry):
    order_id: str
    quantity: int


class Reserved(Event, type="test.remote.reserved.v1", registry=registry):
    order_id: str
    reservation_id: str


class Rejected(Event, type="test.remote.rejected.v1", registry=registry):
    order_id: str
    reason: str


class Release(Event, type="test.remote.release.v1", registry=registry):
    order_id: str


class Released(Event, type="test.remote.released.v1", registry=registry):
    order_id: str


class Charge(Event, type="test.remote.charge.v1", registry=registry):
    order_id: str


class Charged(Event, type="test.remote.charged.v1", registry=registry):
    order_id: str


class Declined(Event, type="test.remote.declined.v1", registry=registry):
    order_id: str
    reason: str


class Order(BaseModel):
    order_id: str
    quantity: int = 1
    reservation_id: str | None = None


class Warehouse:
    """A service on the far side of the bus."""

    def __init__(self, bus: EventBus, *, stock: int = 5, decline: bool = False):
        self.stock = stock
        self.calls: list[str] = []
        self.slow_first = False
        self.decline = decline

        @command_handler(bus, Reserve, group="warehouse")
        async def reserve(command: Reserve) -> Event:
            self.calls.append("reserve")
            if self.slow_first and self.calls.count("reserve") == 1:
                await asyncio.sleep(0.5)  # the orchestrator times out and retries
            if command.quantity > self.stock:
                return Rejected(order_id=command.order_id, reason="out of stock")
            self.stock -= command.quantity
            return Reserved(order_id=command.order_id, reservation_id=f"r-{command.order_id}")

        @command_handler(bus, Release, group="warehouse-releases")
        async def release(command: Release) -> Event:
            self.calls.append("release")
            self.stock += 1
            return Released(order_id=command.order_id)

        @command_handler(bus, Charge, group="payments")
        async def charge(command: Charge) -> Event:
            self.calls.append("charge")
            if self.decline:
                return Declined(order_id=command.order_id, reason="card declined")
            return Charged(order_id=command.order_id)


def order_saga(remote: RemoteSteps) -> Saga[Order]:
    return Saga(
        "remote-order",
        state=Order,
        retry=RetryPolicy(max_attempts=3, initial_delay=0.01),
        steps=[
            Step(
                "reserve",
                remote.call(
                    lambda ctx: Reserve(order_id=ctx.state.order_id, quantity=ctx.state.quantity),
                    success=Reserved,
                    failure=Rejected,
                    updates=lambda reply: {"reservation_id": reply.reservation_id},
                ),
                compensate=remote.call(
                    lambda ctx: Release(order_id=ctx.state.order_id), success=Released
                ),
                timeout=0.2,
            ),
            Step(
                "charge",
                remote.call(
                    lambda ctx: Charge(order_id=ctx.state.order_id),
                    success=Charged,
                    failure=Declined,
                ),
                kind=StepKind.PIVOT,
                timeout=2,
            ),
        ],
    )


async def run_scenario(bus_factory, **warehouse_options):
    async with bus_factory() as service_bus, bus_factory() as orchestrator_bus:
        warehouse = Warehouse(service_bus, **warehouse_options.pop("init", {}))
        for name, value in warehouse_options.items():
            setattr(warehouse, name, value)
        await service_bus.start()
        remote = RemoteSteps(orchestrator_bus)
        saga = order_saga(remote)
        await orchestrator_bus.start()
        result = await Orchestrator().run(saga, Order(order_id=f"o-{uuid.uuid4().hex[:6]}"))
        return result, warehouse


def memory_buses():
    from sagaflow.transports.memory import MemoryTransport

    transport = MemoryTransport()

    def make():
        return EventBus(transport, registry=registry, close_transport=False)

    return make


async def test_remote_steps_complete():
    result, warehouse = await run_scenario(memory_buses())
    assert result.status is SagaStatus.COMPLETED
    assert result.state.reservation_id == f"r-{result.state.order_id}"
    assert warehouse.calls == ["reserve", "charge"]
    assert warehouse.stock == 4


async def test_failure_reply_fails_cleanly_and_remote_compensation_runs():
    result, warehouse = await run_scenario(memory_buses(), init={"decline": True})
    assert result.status is SagaStatus.COMPENSATED
    assert result.error["type"] == "RemoteStepRejected"
    assert "card declined" in result.error["message"]
    assert warehouse.calls == ["reserve", "charge", "release"]
    assert warehouse.stock == 5


async def test_rejected_first_step_has_nothing_to_undo():
    result, warehouse = await run_scenario(memory_buses(), init={"stock": 0})
    assert result.status is SagaStatus.COMPENSATED
    assert warehouse.calls == ["reserve"]


async def test_lost_reply_times_out_and_the_retry_is_deduplicated():
    result, warehouse = await run_scenario(memory_buses(), slow_first=True)
    assert result.status is SagaStatus.COMPLETED
    attempts = [r for r in result.records if r.kind.value == "step_started" and r.step == "reserve"]
    assert len(attempts) >= 2  # the first reply came too late
    assert warehouse.calls.count("reserve") == 1  # repeats were answered from the cache
    assert warehouse.stock == 4  # reserved once although asked again


async def test_remote_steps_over_redis(redis_url):
    from sagaflow.transports.redis import RedisStreamsTransport

    prefix = f"t{uuid.uuid4().hex[:8]}"
    transports = []

    def make():
        transport = RedisStreamsTransport(redis_url)
        transports.append(transport)
        return EventBus(transport, registry=registry, topic_for=lambda name: f"{prefix}.{name}")

    try:
        result, warehouse = await run_scenario(make, init={"decline": True})
    finally:
        # The buses were handed their transports, so they leave closing them to us;
        # left open, their connections warn when collected, during a later test.
        for transport in transports:
            await transport.close()
    assert result.status is SagaStatus.COMPENSATED
    assert warehouse.calls == ["reserve", "charge", "release"]
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url)
    keys = [key async for key in client.scan_iter(f"*{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
