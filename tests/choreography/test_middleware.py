from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence

import pytest

from sagaflow.choreography import HandleContext, HandleNext, Middleware, PublishNext
from sagaflow.envelope import Envelope
from sagaflow.errors import NonRetryableError
from sagaflow.events import Event

from ._support import OrderPlaced, make_bus


class Recorder(Middleware):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def on_publish(
        self, envelopes: Sequence[Envelope[Event]], call_next: PublishNext
    ) -> None:
        self.log.append(f"{self.name}:publish:{len(envelopes)}")
        await call_next(envelopes)

    async def on_handle(self, ctx: HandleContext, call_next: HandleNext) -> None:
        self.log.append(f"{self.name}:before")
        try:
            await call_next(ctx)
            self.log.append(f"{self.name}:ok:dup={ctx.duplicate}:attempts={ctx.attempts}")
        except Exception as exc:
            self.log.append(f"{self.name}:error:{type(exc).__name__}")
            raise


async def test_middleware_order_and_outcomes() -> None:
    log: list[str] = []
    middleware = [Recorder("outer", log), Recorder("inner", log)]
    async with make_bus(middleware=middleware) as bus:

        async def handle(event: OrderPlaced) -> None:
            log.append("handler")
            if event.total < 0:
                raise NonRetryableError("negative")

        bus.subscribe(OrderPlaced, handle, group="g")
        await bus.publish(OrderPlaced(order_id="1"), id="e1")
        await bus.join()
        assert log == [
            "outer:publish:1",
            "inner:publish:1",
            "outer:before",
            "inner:before",
            "handler",
            "inner:ok:dup=False:attempts=1",
            "outer:ok:dup=False:attempts=1",
        ]
        log.clear()
        await bus.publish(OrderPlaced(order_id="1"), id="e1")
        await bus.join()
        assert log[-1] == "outer:ok:dup=True:attempts=0"
        log.clear()
        await bus.publish(OrderPlaced(order_id="2", total=-1))
        await bus.join()
        assert log[-1] == "outer:error:NonRetryableError"
    assert bus.stats.dead_lettered == 1


async def test_publish_middleware_can_rewrite_or_drop() -> None:
    class Stamp(Middleware):
        async def on_publish(
            self, envelopes: Sequence[Envelope[Event]], call_next: PublishNext
        ) -> None:
            stamped = [dataclasses.replace(e, traceparent="00-stamp") for e in envelopes]
            await call_next([e for e in stamped if getattr(e.event, "total", 0) >= 0])

    seen: list[str | None] = []
    async with make_bus(middleware=[Stamp()]) as bus:
        from sagaflow.choreography import current_envelope

        def handle(event: OrderPlaced) -> None:
            env = current_envelope()
            seen.append(env.traceparent if env else None)

        bus.subscribe(OrderPlaced, handle, group="g")
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.publish(OrderPlaced(order_id="2", total=-5))  # dropped
        await bus.join()
    assert seen == ["00-stamp"]


async def test_base_middleware_passes_through() -> None:
    seen: list[str] = []
    async with make_bus(middleware=[Middleware()]) as bus:
        bus.subscribe(OrderPlaced, lambda e: seen.append(e.order_id), group="g")
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.join()
    assert seen == ["1"]
    assert "attempts=0" in repr(HandleContext(bus.envelope(OrderPlaced(order_id="x")), "g", 1))


async def test_swallowing_middleware_acks_as_documented() -> None:
    class Swallow(Middleware):
        async def on_handle(self, ctx: HandleContext, call_next: HandleNext) -> None:
            with contextlib.suppress(Exception):
                await call_next(ctx)

    async def fail(event: OrderPlaced) -> None:
        raise NonRetryableError("x")

    async with make_bus(middleware=[Swallow()]) as bus:
        bus.subscribe(OrderPlaced, fail, group="g")
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.join()
    assert bus.stats.dead_lettered == 0
    assert bus.stats.handled == 1


def test_middleware_hooks_are_optional() -> None:
    with pytest.raises(TypeError):
        Middleware(1)  # type: ignore[call-arg]
