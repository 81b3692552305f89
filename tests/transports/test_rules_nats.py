"""Rules of the NATS JetStream transport, each exercised against the real server.

Every test uses its own stream and subject prefixes and deletes its streams; the
raw nats-py client plays the operator (or a server that lost its storage).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sagaflow.transports.nats import NatsJetStreamTransport

from . import _scenarios as sc

pytestmark = pytest.mark.services

Make = Callable[..., NatsJetStreamTransport]


@pytest.fixture
async def js(nats_url: str) -> AsyncIterator[Any]:
    import nats

    nc = await nats.connect(nats_url)
    try:
        yield nc.jetstream()
    finally:
        await nc.close()


@pytest.fixture
async def make(nats_url: str, js: Any) -> AsyncIterator[Make]:
    tag = uuid.uuid4().hex[:8]
    made: list[NatsJetStreamTransport] = []

    def build(url: str = nats_url, **options: Any) -> NatsJetStreamTransport:
        options.setdefault("block", 0.2)
        options.setdefault("ack_wait", 30.0)
        t = NatsJetStreamTransport(
            url, stream_prefix=f"SFT{tag}_", subject_prefix=f"sft{tag}", **options
        )
        made.append(t)
        return t

    yield build
    for t in made:
        await t.close()
    for info in await js.streams_info():
        if info.config.name.startswith(f"SFT{tag}_"):
            await js.delete_stream(info.config.name)


async def test_dead_letter_recreates_a_lost_dlq_stream(make: Make, js: Any) -> None:
    """After the server lost the DLQ stream, dead-lettering re-creates it (it failed forever)."""
    t = make()
    topic, group = sc.name("dlq"), sc.name("g")
    await t.declare(topic, group=group)
    it = t.subscribe(topic, group=group)
    first, second = sc.msg(topic, 1), sc.msg(topic, 2)
    await t.publish([first])
    (d,) = await sc.take(it, 1)
    await d.dead_letter("first")
    await js.delete_stream(t.dead_letter_stream)  # a restart without storage, say
    await t.publish([second])
    (d2,) = await sc.take(it, 1)
    await d2.dead_letter("second")  # raised TransportUnavailableError before
    letters = await t.dead_letters(topic)
    assert [(x.message.id, x.reason) for x in letters] == [(second.id, "second")]
    await sc.nothing_within(it, 0.5)


async def test_transport_dead_letter_into_a_lost_dlq_keeps_the_consumer(
    make: Make, js: Any
) -> None:
    """Over max_deliveries with the DLQ stream gone: dead-lettered, the consumer goes on."""
    t = make(max_deliveries=1)
    topic, group = sc.name("cap"), sc.name("g")
    await t.declare(topic, group=group)
    it = t.subscribe(topic, group=group)
    await t.dead_letters(topic)  # creates the DLQ stream (and caches it)
    await js.delete_stream(t.dead_letter_stream)
    poison, fine = sc.msg(topic, 1), sc.msg(topic, 2)
    await t.publish([poison])
    (d,) = await sc.take(it, 1)
    await d.nack()  # the redelivery is over the cap: the transport dead-letters it
    await t.publish([fine])
    (d2,) = await sc.take(it, 1)  # the iterator raised TransportUnavailableError before
    assert d2.message.id == fine.id
    await d2.ack()
    (letter,) = await t.dead_letters(topic)
    assert letter.message.id == poison.id
    assert letter.reason == "delivered 2 times (max 1)"
