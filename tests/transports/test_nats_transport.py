from __future__ import annotations

from typing import Any

import pytest

from sagaflow.testing.transport_contract import TransportContract
from sagaflow.transports.nats import NatsJetStreamTransport

from . import _scenarios as sc

pytestmark = pytest.mark.services


@pytest.fixture
def factory(nats_url: str) -> sc.Factory:
    async def make() -> NatsJetStreamTransport:
        return NatsJetStreamTransport(nats_url, block=0.2, ack_wait=30.0)

    return make


class TestNatsJetStreamTransportContract(TransportContract):
    redelivery_timeout = 10.0

    @pytest.fixture(autouse=True)
    def _service(self, nats_url: str) -> None:
        self.url = nats_url

    async def make_transport(self) -> NatsJetStreamTransport:
        return NatsJetStreamTransport(self.url, block=0.2, ack_wait=30.0)


async def read_dlq(t: Any, topic: str) -> list[tuple[str, str]]:
    return [(d.message.id, d.reason) for d in await t.dead_letters(topic)]


async def test_dead_letter(factory: sc.Factory) -> None:
    await sc.dead_letter(factory, read_dlq)


async def test_redelivered_after_close(factory: sc.Factory) -> None:
    await sc.redelivered_after_close(factory)


async def test_max_deliveries(nats_url: str) -> None:
    async def make() -> NatsJetStreamTransport:
        return NatsJetStreamTransport(nats_url, block=0.2, max_deliveries=3)

    await sc.max_deliveries(make, read_dlq, 3)
