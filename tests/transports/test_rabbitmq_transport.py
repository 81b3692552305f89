from __future__ import annotations

import pytest

from sagaflow.transports.rabbitmq import RabbitMQTransport

from . import _scenarios as sc

pytestmark = pytest.mark.services


class TestRabbitMQTransportContract(sc.BrokerTests):
    url_fixture = "rabbitmq_url"

    async def make_transport(self) -> RabbitMQTransport:
        return RabbitMQTransport(self.url, block=0.2)

    async def make_capped_transport(self, max_deliveries: int) -> RabbitMQTransport:
        return RabbitMQTransport(self.url, block=0.2, max_deliveries=max_deliveries)


async def test_unroutable_publish_is_an_error(rabbitmq_url: str) -> None:
    from sagaflow.errors import PublishError

    t = RabbitMQTransport(rabbitmq_url)
    try:
        with pytest.raises(PublishError):
            await t.publish([sc.msg(sc.name("nobody-listens"), 1)])
    finally:
        await t.close()
