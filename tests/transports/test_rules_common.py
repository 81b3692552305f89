"""Rules every transport shares: lazy imports, typed option errors, empty publishes.

The broker transports are built only against the real services (their
constructors do not connect; an empty publish must not either).
"""

from __future__ import annotations

from typing import Any

import pytest

import sagaflow.transports as transports
from sagaflow.errors import ConfigurationError, TransportClosedError
from sagaflow.transports import MemoryTransport


def test_broker_classes_are_imported_on_first_use() -> None:
    from sagaflow.transports.nats import NatsJetStreamTransport

    vars(transports).pop("NatsJetStreamTransport", None)  # as if never looked up
    assert transports.NatsJetStreamTransport is NatsJetStreamTransport
    assert vars(transports)["NatsJetStreamTransport"] is NatsJetStreamTransport  # cached
    with pytest.raises(AttributeError, match="KafkaTransport"):
        _ = transports.KafkaTransport
    assert dir(transports) == sorted(transports.__all__)


async def test_memory_transport_reports_closed() -> None:
    t = MemoryTransport()
    assert not t.closed
    await t.close()
    assert t.closed
    with pytest.raises(TransportClosedError):
        await t.declare("topic", group="g")


@pytest.mark.parametrize(
    ("module", "cls", "options"),
    [
        ("redis", "RedisStreamsTransport", {"batch_size": 0}),
        ("redis", "RedisStreamsTransport", {"claim_min_idle": 0}),
        ("nats", "NatsJetStreamTransport", {"ack_wait": 0}),
        ("nats", "NatsJetStreamTransport", {"retention": "workqueue"}),
        ("nats", "NatsJetStreamTransport", {"subject_prefix": "a.>"}),
        ("rabbitmq", "RabbitMQTransport", {"prefetch": 0}),
        ("rabbitmq", "RabbitMQTransport", {"prefix": "bad prefix"}),
        ("postgres", "PostgresTransport", {"lease": 0}),
        ("postgres", "PostgresTransport", {"prefix": "drop table;"}),
        ("postgres", "PostgresTransport", {"prefix": "1abc_"}),
    ],
)
def test_bad_options_are_configuration_errors(
    module: str, cls: str, options: dict[str, Any]
) -> None:
    transport_class = getattr(transports, cls)
    assert transport_class.__module__ == f"sagaflow.transports.{module}"
    with pytest.raises(ConfigurationError):
        transport_class(**options)


@pytest.mark.parametrize("url", ["redis://u:hunter2@host:notaport/0", "http://u:hunter2@host/0"])
def test_bad_redis_url_is_a_configuration_error_without_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        transports.RedisStreamsTransport(url)
    assert "hunter2" not in str(info.value)
    assert info.value.__cause__ is None  # the driver's message quotes the URL


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:1/0",
        "nats://127.0.0.1:1",
        "amqp://guest:guest@127.0.0.1:1/",
        "postgresql://postgres@127.0.0.1:1/db",
    ],
)
async def test_empty_publish_is_a_no_op_and_needs_no_broker(url: str) -> None:
    t = transports.open_transport(url)
    await t.publish([])  # nothing to send: returns without connecting
    await t.close()
    with pytest.raises(TransportClosedError):
        await t.publish([])
