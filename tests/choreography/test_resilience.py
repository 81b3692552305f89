from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator

from sagaflow.errors import TransportUnavailableError
from sagaflow.transports.base import Delivery
from sagaflow.transports.memory import MemoryTransport

from ._support import OrderPlaced, make_bus


class FlakyOnce(MemoryTransport):
    """The first subscription's iterator fails as if the connection dropped."""

    def __init__(self) -> None:
        super().__init__()
        self.subscriptions = 0

    def subscribe(self, topic: str, *, group: str) -> AsyncIterator[Delivery]:  # type: ignore[override]
        self.subscriptions += 1
        inner = super().subscribe(topic, group=group)
        if self.subscriptions > 1:
            return inner

        async def broken() -> AsyncIterator[Delivery]:
            await inner.aclose()
            raise TransportUnavailableError("connection reset")
            yield  # pragma: no cover - makes this an async generator

        return broken()


async def test_consumer_resubscribes_after_a_transport_error() -> None:
    transport = FlakyOnce()
    seen: list[str] = []
    async with make_bus(transport=transport) as bus:
        bus.subscribe(OrderPlaced, lambda e: seen.append(e.order_id), group="g")
        await bus.start()
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.join(timeout=5)
    assert seen == ["1"]
    assert transport.subscriptions == 2
    await transport.close()


def test_import_sagaflow_choreography_pulls_no_test_tools() -> None:
    code = (
        "import sys, sagaflow, sagaflow.choreography, sagaflow.serialization, "
        "sagaflow.transports.memory; "
        "bad = {'pytest', 'hypothesis', 'pytest_asyncio'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_unexpected_errors_hand_the_delivery_back(caplog) -> None:  # type: ignore[no-untyped-def]
    from sagaflow.serialization import JsonSerializer

    from ._support import REGISTRY

    class Buggy(JsonSerializer):
        calls = 0

        def decode(self, message):  # type: ignore[no-untyped-def]
            envelope = super().decode(message)
            Buggy.calls += 1
            if Buggy.calls == 1:

                class Weird:  # isinstance() itself blows up: a bug, not bad input
                    @property
                    def __class__(self):  # type: ignore[no-untyped-def]
                        raise RuntimeError("bug")

                return type(envelope)(**{**_fields(envelope), "event": Weird()})
            return envelope

    seen: list[str] = []
    async with make_bus(serializer=Buggy(REGISTRY)) as bus:
        bus.subscribe(OrderPlaced, lambda e: seen.append(e.order_id), group="g")
        await bus.publish(OrderPlaced(order_id="1"))
        await bus.join(timeout=5)
    assert seen == ["1"]
    assert Buggy.calls == 2
    assert "unexpected error handling a delivery" in caplog.text


def _fields(envelope):  # type: ignore[no-untyped-def]
    import dataclasses

    return {f.name: getattr(envelope, f.name) for f in dataclasses.fields(envelope)}
