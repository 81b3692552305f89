from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from sagaflow.transports.rabbitmq import RabbitMQTransport

from . import _scenarios as sc
from ._rabbitmq_cleanup import delete_queues

pytestmark = pytest.mark.services

DECLARED: dict[str, set[str]] = {}  # broker URL -> queues the tests declared


@pytest.fixture(scope="module", autouse=True)
def _delete_declared_queues() -> Iterator[None]:
    yield
    for url, names in DECLARED.items():
        asyncio.run(delete_queues(url, names))


class TestRabbitMQTransportContract(sc.BrokerTests):
    url_fixture = "rabbitmq_url"

    async def make_transport(self) -> RabbitMQTransport:
        return RabbitMQTransport(self.url, block=0.2)

    async def dispose_transport(self, transport: Any) -> None:
        # Deleted when the module ends: a later transport in the same test may
        # still need them (the persistence test reconnects to its queue).
        DECLARED.setdefault(self.url, set()).update(transport._declared)
        await transport.close()

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
