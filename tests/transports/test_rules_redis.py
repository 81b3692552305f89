"""Rules of the Redis Streams transport, each exercised against the real server.

Malformed or hostile input is written with redis-py straight into the keys the
transport reads. Every test uses its own key prefix and deletes its keys.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from sagaflow.errors import PublishError
from sagaflow.transports.redis import RedisStreamsTransport

from . import _scenarios as sc

pytestmark = pytest.mark.services

Make = Callable[..., RedisStreamsTransport]


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[Any]:
    import redis.asyncio as redis

    client = redis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def make(redis_url: str, raw: Any) -> AsyncIterator[Make]:
    """Build transports on a key prefix of this test's own; close them, delete the keys."""
    prefix = f"sftest-{uuid.uuid4().hex[:8]}:"
    make = sc.Transports(RedisStreamsTransport, redis_url, prefix=prefix, block=0.05)
    yield make
    await make.close()
    keys = [k async for k in raw.scan_iter(match=f"{prefix}*")]
    if keys:
        await raw.delete(*keys)


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def test_refused_dead_letter_raises_typed_error_and_keeps_the_entry(
    make: Make, raw: Any
) -> None:
    """A DLQ write Redis refuses must not acknowledge the entry (it was lost before)."""
    t = make(claim_min_idle=0.3, claim_interval=0.1)
    topic, group = sc.name("dl"), sc.name("g")
    await t.declare(topic, group=group)
    await raw.set(t.dead_letter_key(topic), "not a stream")
    m = sc.msg(topic, 1)
    await t.publish([m])
    it = t.subscribe(topic, group=group)
    (d,) = await sc.take(it, 1)
    with pytest.raises(PublishError) as info:
        await d.dead_letter("poison")
    assert m.body.decode() not in str(info.value)  # no payload in error messages
    summary = await raw.xpending(t.stream_key(topic), group)
    assert summary["pending"] == 1, "the entry was acknowledged without being dead-lettered"
    # Once the DLQ can be written, the entry comes back and can be dead-lettered.
    await raw.delete(t.dead_letter_key(topic))
    (again,) = await sc.take(it, 1)
    assert again.message.id == m.id
    assert again.attempt == 2
    await again.dead_letter("poison")
    (letter,) = await t.dead_letters(topic)
    assert (letter.message.id, letter.reason, letter.group) == (m.id, "poison", group)


async def test_failed_transport_dead_letter_does_not_end_the_consumer(make: Make, raw: Any) -> None:
    """Over max_deliveries the transport dead-letters; if that fails, iteration goes on."""
    t = make(max_deliveries=1, claim_min_idle=0.3, claim_interval=0.1)
    topic, group = sc.name("cap"), sc.name("g")
    await t.declare(topic, group=group)
    await raw.set(t.dead_letter_key(topic), "not a stream")
    poison, fine = sc.msg(topic, 1), sc.msg(topic, 2)
    await t.publish([poison])
    it = t.subscribe(topic, group=group)
    (d,) = await sc.take(it, 1)
    await d.nack()  # the redelivery (attempt 2) is over the cap: dead-lettering fails
    await asyncio.sleep(0.3)
    await t.publish([fine])
    (d2,) = await sc.take(it, 1)  # raised TransportUnavailableError/ResponseError before
    assert d2.message.id == fine.id
    await d2.ack()
    await raw.delete(t.dead_letter_key(topic))

    async def dead_lettered() -> bool:
        await sc.nothing_within(it, 0.2)  # never handed out again
        return [x.message.id for x in await t.dead_letters(topic)] == [poison.id]

    await eventually(dead_lettered)
    (letter,) = await t.dead_letters(topic)
    assert letter.reason.startswith("delivered ") and letter.reason.endswith("(max 1)")


MALFORMED: list[tuple[str, dict[bytes, bytes]]] = [
    ("headers not JSON", {b"id": b"bad-1", b"body": b"b", b"headers": b"not json"}),
    ("headers not an object", {b"id": b"bad-2", b"body": b"b", b"headers": b"[1, 2]"}),
    ("header value not text", {b"id": b"bad-3", b"body": b"b", b"headers": b'{"n": 1}'}),
    ("id not UTF-8", {b"id": b"bad-\xff", b"body": b"b", b"headers": b"{}"}),
    ("no body field", {b"id": b"bad-5", b"headers": b"{}"}),
    ("a foreign entry", {b"foo": b"bar"}),
]


async def test_malformed_entries_are_dead_lettered_and_the_consumer_goes_on(
    make: Make, raw: Any
) -> None:
    """Entries another writer put in the stream: dead-lettered with a reason, kept verbatim."""
    t = make()
    topic, group = sc.name("bad"), sc.name("g")
    await t.declare(topic, group=group)
    for _, fields in MALFORMED:
        await raw.xadd(t.stream_key(topic), fields)
    good = sc.msg(topic, 1)
    await t.publish([good])
    it = t.subscribe(topic, group=group)
    (d,) = await sc.take(it, 1)  # the consumer died on the first malformed entry before
    assert d.message == good
    await d.ack()
    await sc.nothing_within(it, 0.3)
    letters = await t.dead_letters(topic, group=group)
    assert len(letters) == len(MALFORMED)
    assert all(x.reason.startswith("malformed entry: ") for x in letters)
    assert letters[0].message.id == "bad-1" and letters[0].message.body == b"b"
    assert letters[3].message.id == "bad-\\xff"  # listing salvages what it can read
    # The DLQ stream keeps each entry's own fields, byte for byte.
    dlq = await raw.xrange(t.dead_letter_key(topic))
    for (_, fields), (_, stored) in zip(MALFORMED, dlq, strict=True):
        assert {k: v for k, v in stored.items() if k in fields} == fields
    # Nothing is left pending: every malformed entry was settled by dead-lettering.
    await eventually(lambda: _no_pending(raw, t.stream_key(topic), group), within=2.0)


async def _no_pending(raw: Any, stream: str, group: str) -> bool:
    return (await raw.xpending(stream, group))["pending"] == 0


async def test_group_that_vanished_is_recreated_and_reads_what_came_since(
    make: Make, raw: Any
) -> None:
    """Redis restarted without persistence (stream and group gone): the consumer carries on."""
    t = make()
    topic, group = sc.name("gone"), sc.name("g")
    await t.declare(topic, group=group)
    it = t.subscribe(topic, group=group)
    await t.publish([sc.msg(topic, 1)])
    (d,) = await sc.take(it, 1)
    await d.ack()
    await asyncio.sleep(0.1)
    await raw.delete(t.stream_key(topic))  # the stream and its group are gone
    after = [sc.msg(topic, i) for i in (2, 3)]
    await t.publish(after)  # re-creates the stream, but not the group
    got = await sc.take(it, 2)  # the group is re-created from 0: nothing is missed
    assert [x.message.id for x in got] == [m.id for m in after]
    assert all(x.attempt == 1 for x in got)


async def test_trimming_keeps_entries_a_group_has_not_acknowledged(make: Make, raw: Any) -> None:
    """max_len trims acknowledged entries only: a consumer's pending entries stay readable."""
    t = make(max_len=10)
    topic, done, lagging = sc.name("trim"), sc.name("done"), sc.name("lag")
    await t.declare(topic, group=done)
    await t.declare(topic, group=lagging)
    sent = [sc.msg(topic, i) for i in range(30)]
    await t.publish(sent)
    fast = t.subscribe(topic, group=done)
    for d in await sc.take(fast, 30):
        await d.ack()
    slow = t.subscribe(topic, group=lagging)
    read = await sc.take(slow, 30)
    for d in read[:25]:
        await d.ack()
    held = read[25:]  # read, not acknowledged: pending
    await asyncio.sleep(0.2)  # acks are written behind
    await t.publish([sc.msg(topic, 99)])  # the publish that triggers a trim

    async def trimmed() -> bool:
        return bool(await raw.xlen(t.stream_key(topic)) <= 6)

    await eventually(trimmed)
    entries = await raw.xrange(t.stream_key(topic))
    assert [f[b"id"].decode() for _, f in entries][:5] == [d.message.id for d in held]
    for d in held:
        await d.nack()  # still there to be delivered again
    again = await sc.take(slow, 6)
    assert sorted(x.message.id for x in again[:5]) == sorted(d.message.id for d in held)


async def test_trimming_a_stream_no_group_reads(make: Make, raw: Any) -> None:
    """Without groups nothing needs the entries: the stream is cut back towards max_len."""
    t = make(max_len=50)
    topic = sc.name("nogroup")
    for start in range(0, 1000, 100):
        await t.publish([sc.msg(topic, i) for i in range(start, start + 100)])

    async def trimmed() -> bool:
        return bool(await raw.xlen(t.stream_key(topic)) < 1000)

    await eventually(trimmed)
    assert await raw.xlen(t.stream_key(topic)) >= 50


async def test_publish_redis_refuses_is_a_publish_error_without_the_payload(
    make: Make, raw: Any
) -> None:
    t = make()
    topic = sc.name("wrongtype")
    await raw.set(t.stream_key(topic), "not a stream")
    m = sc.msg(topic, 1)
    with pytest.raises(PublishError) as info:
        await t.publish([m])
    assert m.body.decode() not in str(info.value)
    assert info.value.__cause__ is not None


async def test_declare_errors_are_typed_and_masked(make: Make, raw: Any) -> None:
    from sagaflow.errors import TransportUnavailableError

    t = make()
    topic = sc.name("wrongtype")
    await raw.set(t.stream_key(topic), "not a stream")
    with pytest.raises(TransportUnavailableError):
        await t.declare(topic, group="g")
    down = RedisStreamsTransport("redis://u:hunter2@127.0.0.1:1/0")
    try:
        with pytest.raises(TransportUnavailableError) as info:
            await down.declare("topic", group="g")
        assert "hunter2" not in str(info.value)
    finally:
        await down.close()


async def test_resp3_connections_deliver_too(make: Make) -> None:
    """client_options reach redis-py: a RESP3 connection reads the stream the same way."""
    t = make(client_options={"protocol": 3})
    topic, group = sc.name("resp3"), sc.name("g")
    await t.declare(topic, group=group)
    m = sc.msg(topic, 1)
    await t.publish([m])
    (d,) = await sc.take(t.subscribe(topic, group=group), 1)
    assert d.message == m
    await d.ack()


async def test_delayed_retry_of_an_entry_deleted_meanwhile_is_settled(make: Make, raw: Any) -> None:
    """An entry deleted by hand while waiting for its retry: nothing delivered, nothing pending."""
    t = make()
    topic, group = sc.name("xdel"), sc.name("g")
    await t.declare(topic, group=group)
    it = t.subscribe(topic, group=group)
    await t.publish([sc.msg(topic, 1)])
    (d,) = await sc.take(it, 1)
    await d.nack(delay=0.3)
    await raw.xdel(t.stream_key(topic), d._key)  # type: ignore[attr-defined]
    await sc.nothing_within(it, 1.0)
    assert await _no_pending(raw, t.stream_key(topic), group)
    assert await raw.zcard(t._delay_key(topic, group)) == 0
