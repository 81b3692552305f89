from __future__ import annotations

from typing import Any

import pytest

from sagaflow.testing.transport_contract import TransportContract
from sagaflow.transports.rabbitmq import RabbitMQTransport

from . import _scenarios as sc

pytestmark = pytest.mark.services


@pytest.fixture
def factory(rabbitmq_url: str) -> sc.Factory:
    async def make() -> RabbitMQTransport:
        return RabbitMQTransport(rabbitmq_url, block=0.2)

    return make


class TestRabbitMQTransportContract(TransportContract):
    redelivery_timeout = 10.0

    @pytest.fixture(autouse=True)
    def _service(self, rabbitmq_url: str) -> None:
        self.url = rabbitmq_url

    async def make_transport(self) -> RabbitMQTransport:
        return RabbitMQTransport(self.url, block=0.2)


async def read_dlq(t: Any, topic: str) -> list[tuple[str, str]]:
    return [(d.message.id, d.reason) for d in await t.dead_letters(topic)]


async def test_dead_letter(factory: sc.Factory) -> None:
    await sc.dead_letter(factory, read_dlq)


async def test_redelivered_after_close(factory: sc.Factory) -> None:
    await sc.redelivered_after_close(factory)


async def test_max_deliveries(rabbitmq_url: str) -> None:
    async def make() -> RabbitMQTransport:
        return RabbitMQTransport(rabbitmq_url, block=0.2, max_deliveries=3)

    await sc.max_deliveries(make, read_dlq, 3)


async def test_unroutable_publish_is_an_error(rabbitmq_url: str) -> None:
    from sagaflow.errors import PublishError

    t = RabbitMQTransport(rabbitmq_url)
    try:
        with pytest.raises(PublishError):
            await t.publish([sc.msg(sc.name("nobody-listens"), 1)])
    finally:
        await t.close()
