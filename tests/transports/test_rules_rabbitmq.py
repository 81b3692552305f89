"""Rules of the RabbitMQ transport, each exercised against the real broker.

Hostile input is published with aio-pika straight to the exchange or queue the
transport reads. Every test uses its own prefix (exchanges and queues) and
deletes what it declared.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sagaflow.transports.rabbitmq import RabbitMQTransport

from . import _scenarios as sc
from ._rabbitmq_cleanup import delete_queues

pytestmark = pytest.mark.services

Make = Callable[..., RabbitMQTransport]


@pytest.fixture
async def prefix(rabbitmq_url: str) -> AsyncIterator[str]:
    import aio_pika

    p = f"sftest-{uuid.uuid4().hex[:8]}"
    yield p
    connection = await aio_pika.connect(rabbitmq_url, timeout=10)
    try:
        channel = await connection.channel()
        for exchange in (p, f"{p}.dlx"):
            await channel.exchange_delete(exchange)
    finally:
        await connection.close()


@pytest.fixture
async def make(rabbitmq_url: str, prefix: str) -> AsyncIterator[Make]:
    make = sc.Transports(RabbitMQTransport, rabbitmq_url, prefix=prefix, block=0.1)
    yield make
    await make.close()
    await delete_queues(rabbitmq_url, {q for t in make.made for q in t._declared})


@pytest.fixture
async def raw_channel(rabbitmq_url: str) -> AsyncIterator[Any]:
    import aio_pika

    connection = await aio_pika.connect(rabbitmq_url, timeout=10)
    try:
        yield await connection.channel()
    finally:
        await connection.close()


@pytest.fixture
def bytes_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the raw client send ``bytes`` header values as AMQP long strings, unchecked.

    pamqp encodes only ``str`` as a long string (always valid UTF-8); other clients
    send whatever bytes they like, which pamqp then decodes to ``bytes``.
    """
    import struct

    from pamqp import encode

    original = encode.encode_table_value

    def encode_table_value(value: Any) -> bytes:
        if isinstance(value, bytes):
            return b"S" + struct.pack(">I", len(value)) + value
        return original(value)

    monkeypatch.setattr(encode, "encode_table_value", encode_table_value)


async def test_header_that_is_not_utf8_is_dead_lettered_and_the_consumer_goes_on(
    make: Make, raw_channel: Any, bytes_headers: None
) -> None:
    """A message another client published with a non-UTF-8 header: dead-lettered, not fatal."""
    import aio_pika

    t = make()
    topic, group = sc.name("bad"), sc.name("g")
    await t.declare(topic, group=group)
    exchange = await raw_channel.get_exchange(t._prefix)
    await exchange.publish(
        aio_pika.Message(b"raw", message_id="bad-1", headers={"h": b"caf\xe9", "ok": "yes"}),
        routing_key=topic,
    )
    good = sc.msg(topic, 1)
    await t.publish([good])
    it = t.subscribe(topic, group=group)
    (d,) = await sc.take(it, 1)  # UnicodeDecodeError ended the consumer before
    assert d.message.id == good.id
    await d.ack()
    await sc.nothing_within(it, 0.5)
    (letter,) = await t.dead_letters(topic)
    assert letter.message.id == "bad-1"
    assert letter.message.body == b"raw"
    assert letter.group == group
    assert letter.reason == "malformed message: a header is not UTF-8 text"
    assert dict(letter.message.headers) == {"h": "caf\\xe9", "ok": "yes"}
