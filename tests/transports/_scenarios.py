"""Broker-agnostic scenarios run by each broker's test module (until and beside the
shared contract suite). Each takes a factory returning a fresh, open transport."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, Generic, TypeVar

import pytest

from sagaflow.errors import MessageTooLargeError, TransportClosedError
from sagaflow.testing.transport_contract import TransportContract
from sagaflow.transports.base import Delivery, Message, Transport

Factory = Callable[[], Awaitable[Any]]
T = TypeVar("T", bound=Transport)


class Transports(Generic[T]):
    """A rule test's `make`: builds transports on the test's own names, closes them all.

    ``Transports(new, url, **defaults)(url=None, **options)`` returns
    ``new(url or the default url, **defaults, **options)``, an option given to
    the call winning over its default; `made` lists what was built.
    """

    def __init__(self, new: Callable[..., T], url: str, **defaults: Any) -> None:
        self._new = new
        self._url = url
        self._defaults = defaults
        self.made: list[T] = []

    def __call__(self, url: str | None = None, **options: Any) -> T:
        t = self._new(url or self._url, **{**self._defaults, **options})
        self.made.append(t)
        return t

    async def close(self) -> None:
        for t in self.made:
            await t.close()


def name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def msg(topic: str, i: int, **headers: str) -> Message:
    return Message(
        id=f"m{i}-{uuid.uuid4().hex[:6]}",
        topic=topic,
        body=f"body-{i}".encode(),
        headers={"n": str(i), **headers},
        key=f"k{i % 3}",
    )


async def take(it: AsyncIterator[Delivery], n: int, within: float = 10.0) -> list[Delivery]:
    out: list[Delivery] = []

    async def run() -> None:
        while len(out) < n:
            out.append(await anext(it))

    await asyncio.wait_for(run(), within)
    return out


async def nothing_within(it: AsyncIterator[Delivery], seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        d = await asyncio.wait_for(anext(it), seconds)
        pytest.fail(f"unexpected delivery {d.message.id} attempt {d.attempt}")


async def started(it: AsyncIterator[Delivery]) -> asyncio.Task[Delivery]:
    """Start iterating (so the group exists) and return the pending first-item task."""
    task = asyncio.ensure_future(anext(it))
    await asyncio.sleep(0.5)
    return task


async def roundtrip(factory: Factory) -> None:
    t = await factory()
    topic, group = name("topic"), name("g")
    try:
        it = t.subscribe(topic, group=group)
        first = await started(it)
        sent = [msg(topic, i, extra="x") for i in range(5)]
        await t.publish(sent)
        got = [await asyncio.wait_for(first, 10)] + await take(it, 4)
        assert [d.message.id for d in got] == [m.id for m in sent]
        for d, m in zip(got, sent, strict=True):
            assert d.message.body == m.body
            assert d.message.topic == topic
            assert dict(d.message.headers) == dict(m.headers)
            assert d.message.key == m.key
            assert d.attempt == 1
            await d.ack()
            await d.ack()  # settling twice is a no-op
        await nothing_within(it, 1.0)
    finally:
        await t.close()


async def fanout_and_competing(factory: Factory) -> None:
    t = await factory()
    topic, g1, g2 = name("topic"), name("g"), name("g")
    try:
        a1, a2, b = (
            t.subscribe(topic, group=g1),
            t.subscribe(topic, group=g1),
            t.subscribe(topic, group=g2),
        )
        tasks = [await started(x) for x in (a1, a2, b)]
        n = 40
        await t.publish([msg(topic, i) for i in range(n)])
        seen: dict[str, list[str]] = {g1: [], g2: []}

        async def drain(it: AsyncIterator[Delivery], first: asyncio.Task[Delivery], g: str) -> None:
            d = await first
            while True:
                seen[g].append(d.message.id)
                await d.ack()
                d = await anext(it)

        runners = [
            asyncio.create_task(drain(x, f, g))
            for x, f, g in ((a1, tasks[0], g1), (a2, tasks[1], g1), (b, tasks[2], g2))
        ]
        deadline = time.monotonic() + 15
        while (len(seen[g1]) < n or len(seen[g2]) < n) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        for r in runners:
            r.cancel()
        assert len(seen[g1]) == n
        assert len(set(seen[g1])) == n
        assert len(seen[g2]) == n
        assert len(set(seen[g2])) == n
    finally:
        await t.close()


async def nack_delay(factory: Factory, delay: float = 1.0) -> None:
    t = await factory()
    topic, group = name("topic"), name("g")
    try:
        it = t.subscribe(topic, group=group)
        first = await started(it)
        await t.publish([msg(topic, 1)])
        d = await asyncio.wait_for(first, 10)
        assert d.attempt == 1
        t0 = time.monotonic()
        await d.nack(delay=delay)
        (d2,) = await take(it, 1, within=delay + 10)
        assert time.monotonic() - t0 >= delay * 0.9
        assert d2.message.id == d.message.id
        assert d2.attempt == 2
        await d2.nack()
        (d3,) = await take(it, 1)
        assert d3.attempt == 3
        await d3.ack()
        await nothing_within(it, 1.0)
    finally:
        await t.close()


async def dead_letter(
    factory: Factory, read_dlq: Callable[[Any, str], Awaitable[list[tuple[str, str]]]]
) -> None:
    """read_dlq(transport, topic) -> [(message id, reason)]"""
    t = await factory()
    topic, group = name("topic"), name("g")
    try:
        it = t.subscribe(topic, group=group)
        first = await started(it)
        m = msg(topic, 1)
        await t.publish([m])
        d = await asyncio.wait_for(first, 10)
        await d.dead_letter("poison: cannot decode")
        await nothing_within(it, 1.0)
        deadline = time.monotonic() + 10
        while True:
            dlq = await read_dlq(t, topic)
            if dlq or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert (m.id, "poison: cannot decode") in dlq
        # the consumer keeps running
        await t.publish([msg(topic, 2)])
        (d2,) = await take(it, 1)
        await d2.ack()
    finally:
        await t.close()


async def redelivered_after_close(factory: Factory, within: float = 15.0) -> None:
    t1 = await factory()
    topic, group = name("topic"), name("g")
    it = t1.subscribe(topic, group=group)
    first = await started(it)
    sent = [msg(topic, i) for i in range(3)]
    await t1.publish(sent)
    got = [await asyncio.wait_for(first, 10)] + await take(it, 2)
    await got[0].ack()
    await t1.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(it), 5)
    with pytest.raises(TransportClosedError):
        await t1.publish([msg(topic, 9)])
    await t1.close()  # idempotent
    t2 = await factory()
    try:
        it2 = t2.subscribe(topic, group=group)
        again = await take(it2, 2, within=within)
        assert sorted(d.message.id for d in again) == sorted(m.id for m in sent[1:]), [
            (d.message.id, d.attempt, getattr(getattr(d, "_msg", None), "reply", None))
            for d in again
        ]
        assert all(d.attempt >= 2 for d in again)
        for d in again:
            await d.ack()
        await nothing_within(it2, 1.0)
    finally:
        await t2.close()


async def too_large(factory: Factory) -> None:
    t = await factory()
    try:
        big = Message(id="big", topic=name("topic"), body=b"x" * (t.features.max_payload + 1))
        with pytest.raises(MessageTooLargeError):
            await t.publish([big])
    finally:
        await t.close()


async def close_ends_iterator(factory: Factory) -> None:
    t = await factory()
    it = t.subscribe(name("topic"), group=name("g"))
    task = await started(it)
    await t.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(task, 5)


async def max_deliveries(
    factory: Factory, read_dlq: Callable[[Any, str], Awaitable[list[tuple[str, str]]]], limit: int
) -> None:
    """A message nacked more than `limit` times ends in the DLQ, not delivered again."""
    t = await factory()
    topic, group = name("topic"), name("g")
    try:
        it = t.subscribe(topic, group=group)
        first = await started(it)
        m = msg(topic, 1)
        await t.publish([m])
        d = await asyncio.wait_for(first, 10)
        attempts = [d.attempt]
        await d.nack()
        while True:
            try:
                (d,) = await take(it, 1, within=1.5)
            except TimeoutError:
                break
            attempts.append(d.attempt)
            await d.nack()
        assert attempts == list(range(1, limit + 1))
        deadline = time.monotonic() + 10
        while not (dlq := await read_dlq(t, topic)) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert [i for i, _ in dlq] == [m.id]
    finally:
        await t.close()


async def read_dlq(t: Any, topic: str) -> list[tuple[str, str]]:
    """The ``(message id, reason)`` of each dead letter of ``topic`` on a broker transport."""
    return [(d.message.id, d.reason) for d in await t.dead_letters(topic)]


class BrokerTests(TransportContract):
    """The contract suite plus the scenarios above, for one broker transport.

    A subclass names the URL fixture of its service in ``url_fixture`` and builds its
    transport in `make_transport` and `make_capped_transport` (``self.url`` is set).
    """

    redelivery_timeout = 10.0
    url_fixture: ClassVar[str]
    url: str

    @pytest.fixture(autouse=True)
    def _service(self, request: pytest.FixtureRequest) -> None:
        self.url = request.getfixturevalue(self.url_fixture)

    async def make_capped_transport(self, max_deliveries: int) -> Any:
        """Return a fresh transport that dead-letters after ``max_deliveries``."""
        raise NotImplementedError

    async def test_dead_letter(self) -> None:
        await dead_letter(self.make_transport, read_dlq)

    async def test_redelivered_after_close(self) -> None:
        await redelivered_after_close(self.make_transport)

    async def test_max_deliveries(self) -> None:
        await max_deliveries(lambda: self.make_capped_transport(3), read_dlq, 3)
