"""Rules of the NATS JetStream transport, each exercised against the real server.

Every test uses its own stream and subject prefixes and deletes its streams; the
raw nats-py client plays the operator (or a server that lost its storage).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sagaflow.errors import PublishError
from sagaflow.transports.base import Message
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
    make = sc.Transports(
        NatsJetStreamTransport,
        nats_url,
        stream_prefix=f"SFT{tag}_",
        subject_prefix=f"sft{tag}",
        block=0.2,
        ack_wait=30.0,
    )
    yield make
    await make.close()
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


async def test_publish_recreates_a_stream_the_server_lost(make: Make, js: Any) -> None:
    t = make()
    topic, group = sc.name("lost"), sc.name("g")
    await t.publish([sc.msg(topic, 1)])  # creates (and caches) the stream
    await js.delete_stream(t.stream_name(topic))
    await t.declare(topic, group=group)  # failed with NotFoundError until a publish
    m = sc.msg(topic, 2)
    await t.publish([m])
    info = await js.stream_info(t.stream_name(topic))
    assert info.state.messages == 1
    (d,) = await sc.take(t.subscribe(topic, group=group), 1)
    assert d.message.id == m.id


async def test_publish_after_the_stream_vanished_under_the_cache(make: Make, js: Any) -> None:
    t = make()
    topic = sc.name("lost")
    await t.publish([sc.msg(topic, 1)])
    await js.delete_stream(t.stream_name(topic))
    await t.publish([sc.msg(topic, 2)])  # NoStreamResponseError: re-created, retried
    info = await js.stream_info(t.stream_name(topic))
    assert info.state.messages == 1


async def test_subscription_rebinds_when_its_consumer_is_deleted(make: Make, js: Any) -> None:
    t = make()
    topic, group = sc.name("rebind"), sc.name("g")
    await t.declare(topic, group=group)
    it = t.subscribe(topic, group=group)
    await t.publish([sc.msg(topic, 1)])
    (d,) = await sc.take(it, 1)
    await d.ack()
    consumers = await js.consumers_info(t.stream_name(topic))
    await js.delete_consumer(t.stream_name(topic), consumers[0].name)
    await t.declare(topic, group=group)  # an operator re-creates it (or a restart does)
    m = sc.msg(topic, 2)
    await t.publish([m])
    (d2,) = await sc.take(it, 1, within=20)
    assert d2.message.id == m.id


async def test_existing_stream_configuration_is_left_alone(make: Make, js: Any) -> None:
    """A stream the operator created with other limits is used, not replaced (error 10058)."""
    from nats.js.api import StreamConfig

    t = make()
    topic, group = sc.name("oper"), sc.name("g")
    await js.add_stream(
        StreamConfig(name=t.stream_name(topic), subjects=[t.subject(topic)], max_msgs=1000)
    )
    await t.declare(topic, group=group)
    m = sc.msg(topic, 1)
    await t.publish([m])
    (d,) = await sc.take(t.subscribe(topic, group=group), 1)
    assert d.message.id == m.id
    info = await js.stream_info(t.stream_name(topic))
    assert info.config.max_msgs == 1000


async def test_stream_the_server_refuses_is_a_publish_error(make: Make, js: Any) -> None:
    """Another stream already captures the topic's subject: a PublishError, not a raw error."""
    from nats.js.api import StreamConfig

    from sagaflow.errors import PublishError

    t = make()
    topic = sc.name("overlap")
    await js.add_stream(
        StreamConfig(name=t.stream_name("x") + "OTHER", subjects=[t.subject(topic)])
    )
    with pytest.raises(PublishError):
        await t.publish([sc.msg(topic, 1)])


async def test_unreachable_server_does_not_end_a_subscription_and_close_is_prompt(
    make: Make,
) -> None:
    from sagaflow.errors import TransportUnavailableError

    t = make("nats://u:hunter2@127.0.0.1:1")
    it = t.subscribe(sc.name("down"), group="g")
    await sc.nothing_within(it, 1.0)  # keeps retrying with backoff, no error raised
    with pytest.raises(TransportUnavailableError) as info:
        await t.declare("down", group="g")
    assert "hunter2" not in str(info.value)
    pending = asyncio.ensure_future(anext(it))
    await asyncio.sleep(0.1)
    started = asyncio.get_running_loop().time()
    await t.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(pending, 5)
    assert asyncio.get_running_loop().time() - started < 3


async def test_a_full_stream_refuses_publishes_at_once(make: Make) -> None:
    """max_bytes with DiscardPolicy.NEW: a full stream refuses with PublishError.

    It used to hang 10 s a try and end as TransportUnavailableError after four
    tries (about 40 s): nats-py left the refused publish's future unsettled, and
    the refusal came as a 503, which read as an outage.
    """
    t = make(max_bytes=4096)
    topic = sc.name("full")

    async def fill() -> int:
        for n in range(20):
            await t.publish([Message(topic=topic, id=f"m{n}", body=b"x" * 1000, headers={})])
        return 20

    started = asyncio.get_running_loop().time()
    with pytest.raises(PublishError, match="maximum bytes exceeded"):
        await fill()
    assert asyncio.get_running_loop().time() - started < 5
    # The stream stays full: a later publish is refused as well, as quickly.
    with pytest.raises(PublishError):
        await t.publish([Message(topic=topic, id="late", body=b"y" * 1000, headers={})])
