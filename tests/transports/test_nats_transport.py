from __future__ import annotations

import pytest

from sagaflow.transports.nats import NatsJetStreamTransport

from . import _scenarios as sc

pytestmark = pytest.mark.services


class TestNatsJetStreamTransportContract(sc.BrokerTests):
    url_fixture = "nats_url"

    async def make_transport(self) -> NatsJetStreamTransport:
        return NatsJetStreamTransport(self.url, block=0.2, ack_wait=30.0)

    async def make_capped_transport(self, max_deliveries: int) -> NatsJetStreamTransport:
        return NatsJetStreamTransport(self.url, block=0.2, max_deliveries=max_deliveries)
