"""The transport contract suite: one set of tests that every `Transport` must pass.

Subclass `TransportContract` in a test module, give it a factory, and pytest runs
every contract test against your transport::

    from sagaflow.testing.transport_contract import TransportContract
    from sagaflow.transports.memory import MemoryTransport

    class TestMemoryTransport(TransportContract):
        async def make_transport(self) -> MemoryTransport:
            return MemoryTransport()

Tests read the transport's `TransportFeatures` and skip what it does not claim
(ordering, competing consumers). Every test uses fresh topic and group names
(`unique_name`), so a shared broker needs no cleaning between tests; override
`dispose_transport` for more isolation (deleting streams, purging queues).

Each test is bounded by ``timeout`` seconds; waits for a redelivery after a
consumer stops are bounded by ``redelivery_timeout`` (raise it for brokers that
reclaim abandoned messages after an idle time, like Redis ``XAUTOCLAIM``).

This module imports pytest and pytest-asyncio: import it from tests only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
import pytest_asyncio

from sagaflow.errors import ConfigurationError, MessageTooLargeError, TransportClosedError
from sagaflow.transports.base import Delivery, Message, Transport, TransportFeatures

__all__ = ["TransportContract", "unique_name"]


def unique_name(prefix: str) -> str:
    """Return ``prefix`` followed by a random suffix: a topic or group no test shares."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def _close_iterator(iterator: AsyncIterator[Delivery]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


class TransportContract:
    """Base class of a transport's contract tests; subclass it and implement the factory.

    Attributes:
        timeout: Upper bound in seconds on each test.
        receive_timeout: How long to wait for one expected delivery.
        quiet_period: How long to watch for a delivery that must *not* happen.
        redelivery_timeout: How long to wait for a message abandoned by a stopped
            consumer to be delivered again.
    """

    pytestmark = pytest.mark.asyncio

    timeout: float = 60.0
    receive_timeout: float = 10.0
    quiet_period: float = 0.3
    redelivery_timeout: float = 30.0

    # -- hooks for subclasses ------------------------------------------------------

    async def make_transport(self) -> Transport:
        """Return a fresh, open transport (override this)."""
        raise NotImplementedError("subclasses of TransportContract implement make_transport()")

    async def dispose_transport(self, transport: Transport) -> None:
        """Release a transport after a test (default: close it)."""
        await transport.close()

    async def prepare_group(self, transport: Transport, topic: str, group: str) -> None:
        """Make sure ``group`` exists on ``topic`` before the test publishes.

        Default: call ``transport.declare(topic, group=group)`` when the transport
        has that optional method. Override it for transports that create groups
        another way.
        """
        declare = getattr(transport, "declare", None)
        if declare is not None:
            await declare(topic, group=group)

    async def read_dead_letters(
        self, transport: Transport, topic: str, group: str
    ) -> list[Message] | None:
        """Return the messages dead-lettered by ``group`` on ``topic``.

        Default: ``transport.dead_letters(topic=..., group=...)`` when it exists
        (entries with a ``message`` attribute, or messages), else ``None``, which
        skips the check. Override it to read a broker's dead-letter stream or queue.
        """
        reader = getattr(transport, "dead_letters", None)
        if reader is None:
            return None
        result = reader(topic=topic, group=group)
        if asyncio.iscoroutine(result):
            result = await result
        return [getattr(item, "message", item) for item in result]

    # -- fixtures ------------------------------------------------------------------

    @pytest_asyncio.fixture
    async def transport(self) -> AsyncIterator[Transport]:
        """A fresh transport, disposed of after the test."""
        made = await self.make_transport()
        try:
            yield made
        finally:
            with contextlib.suppress(Exception):
                await self.dispose_transport(made)

    @pytest.fixture
    def topic(self) -> str:
        """A topic name no other test uses."""
        return unique_name("contract-topic")

    @pytest.fixture
    def group(self) -> str:
        """A group name no other test uses."""
        return unique_name("contract-group")

    # -- helpers -------------------------------------------------------------------

    def message(
        self,
        topic: str,
        n: int,
        *,
        key: str | None = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Message:
        """Return test message number ``n`` (its body is ``str(n)``)."""
        return Message(
            id=uuid.uuid4().hex,
            topic=topic,
            body=str(n).encode() if body is None else body,
            headers={"n": str(n), **(headers or {})},
            key=key,
        )

    async def consumer(
        self, transport: Transport, topic: str, group: str
    ) -> AsyncIterator[Delivery]:
        """Prepare ``group`` and return an iterator of its deliveries."""
        await self.prepare_group(transport, topic, group)
        return transport.subscribe(topic, group=group)

    async def receive(
        self, iterator: AsyncIterator[Delivery], within: float | None = None
    ) -> Delivery:
        """Return the next delivery, failing the test after ``within`` seconds."""
        limit = within or self.receive_timeout
        try:
            return await asyncio.wait_for(anext(iterator), limit)
        except TimeoutError:
            pytest.fail(f"no delivery within {limit} s")

    async def receive_until(
        self, iterator: AsyncIterator[Delivery], marker_id: str, *, ack: bool = True
    ) -> list[Delivery]:
        """Receive (and ack) deliveries up to and including the one with ``marker_id``."""
        seen: list[Delivery] = []
        while True:
            delivery = await self.receive(iterator)
            seen.append(delivery)
            if ack:
                await delivery.ack()
            if delivery.message.id == marker_id:
                return seen

    async def assert_quiet(self, iterator: AsyncIterator[Delivery]) -> None:
        """Fail if a delivery arrives within ``quiet_period`` seconds."""
        task = asyncio.ensure_future(anext(iterator))
        await asyncio.wait({task}, timeout=self.quiet_period)
        task.cancel()
        await asyncio.wait({task})  # never raises: the outcome is read below
        if not task.cancelled() and task.exception() is None:
            delivery = task.result()
            pytest.fail(f"unexpected delivery {delivery.message.id} (attempt {delivery.attempt})")

    @staticmethod
    def n(delivery: Delivery) -> int:
        """Return the test number of a delivery's message."""
        return int(delivery.message.body)

    # -- the contract --------------------------------------------------------------

    async def test_declares_features(self, transport: Transport) -> None:
        """The transport satisfies the protocol and declares its features."""
        assert isinstance(transport, Transport)
        assert isinstance(transport.features, TransportFeatures)
        assert transport.features.max_payload > 0

    async def test_publish_and_consume_keep_the_message(
        self, transport: Transport, topic: str, group: str
    ) -> None:
        """Id, topic, body, headers and key arrive unchanged, attempt 1."""
        async with asyncio.timeout(self.timeout):
            consumer = await self.consumer(transport, topic, group)
            sent = self.message(topic, 7, key="k-1", headers={"ce-type": "x.v1", "a": "b"})
            await transport.publish([sent])
            delivery = await self.receive(consumer)
            assert isinstance(delivery, Delivery)
            got = delivery.message
            assert (got.id, got.topic, got.body, got.key) == (sent.id, topic, b"7", "k-1")
            assert dict(got.headers).items() >= dict(sent.headers).items()
            assert delivery.attempt == 1
            await delivery.ack()
            await _close_iterator(consumer)

    async def test_batch_publish(self, transport: Transport, topic: str, group: str) -> None:
        """A batch is delivered whole, in order where the transport is ordered."""
        async with asyncio.timeout(self.timeout):
            consumer = await self.consumer(transport, topic, group)
            await transport.publish([self.message(topic, i) for i in range(20)])
            got = []
            for _ in range(20):
                delivery = await self.receive(consumer)
                got.append(self.n(delivery))
                await delivery.ack()
            if transport.features.ordered:
                assert got == list(range(20))
            else:
                assert sorted(got) == list(range(20))
            await _close_iterator(consumer)

    async def test_fan_out_across_groups(self, transport: Transport, topic: str) -> None:
        """Every group receives every message, once."""
        async with asyncio.timeout(self.timeout):
            groups = [unique_name("fan") for _ in range(3)]
            consumers = [await self.consumer(transport, topic, g) for g in groups]
            await transport.publish([self.message(topic, i) for i in range(5)])
            for consumer in consumers:
                got = []
                for _ in range(5):
                    delivery = await self.receive(consumer)
                    got.append(self.n(delivery))
                    await delivery.ack()
                assert sorted(got) == list(range(5))
                await self.assert_quiet(consumer)
            for consumer in consumers:
                await _close_iterator(consumer)

    async def test_competing_consumers_share_a_group(
        self, transport: Transport, topic: str, group: str
    ) -> None:
        """Consumers of one group share its messages; none is delivered twice."""
        if not transport.features.competing_consumers:
            pytest.skip("transport does not declare competing consumers")
        async with asyncio.timeout(self.timeout):
            total = 20
            consumers = [await self.consumer(transport, topic, group) for _ in range(2)]
            received: list[list[int]] = [[], []]
            remaining = total

            async def work(index: int) -> None:
                nonlocal remaining
                while remaining > 0:
                    try:
                        delivery = await asyncio.wait_for(anext(consumers[index]), 0.5)
                    except (TimeoutError, StopAsyncIteration):
                        continue
                    received[index].append(self.n(delivery))
                    remaining -= 1
                    await asyncio.sleep(0.02)  # simulated work lets the other consumer in
                    await delivery.ack()

            await transport.publish([self.message(topic, i) for i in range(total)])
            await asyncio.gather(work(0), work(1))
            assert sorted(received[0] + received[1]) == list(range(total))
            assert received[0]
            assert received[1]
            for consumer in consumers:
                await _close_iterator(consumer)

    async def test_ack_is_final(self, transport: Transport, topic: str, group: str) -> None:
        """An acked message is not delivered again; settling twice is a no-op."""
        async with asyncio.timeout(self.timeout):
            consumer = await self.consumer(transport, topic, group)
            first = self.message(topic, 1)
            await transport.publish([first])
            delivery = await self.receive(consumer)
            await delivery.ack()
            await delivery.ack()  # settling twice is a no-op
            await delivery.nack()
            marker = self.message(topic, 2)
            await transport.publish([marker])
            seen = await self.receive_until(consumer, marker.id)
            assert first.id not in [d.message.id for d in seen]
            await self.assert_quiet(consumer)
            await _close_iterator(consumer)

    async def test_nack_redelivers_with_growing_attempt(
        self, transport: Transport, topic: str, group: str
    ) -> None:
        """A nacked message comes back with attempt 2, then 3."""
        async with asyncio.timeout(self.timeout):
            consumer = await self.consumer(transport, topic, group)
            sent = self.message(topic, 1)
            await transport.publish([sent])
            for expected in (1, 2, 3):
                delivery = await self.receive(consumer)
                assert delivery.message.id == sent.id
                assert delivery.attempt == expected
                if expected < 3:
                    await delivery.nack()
            await delivery.ack()
            await self.assert_quiet(consumer)
            await _close_iterator(consumer)

    async def test_nack_delay_is_honoured(
        self, transport: Transport, topic: str, group: str
    ) -> None:
        """``nack(delay=d)`` redelivers no sooner than about ``d`` seconds."""
        async with asyncio.timeout(self.timeout):
            consumer = await self.consumer(transport, topic, group)
            sent = self.message(topic, 1)
            await transport.publish([sent])
            delivery = await self.receive(consumer)
            delay = max(0.5, self.quiet_period * 2)
            started = time.monotonic()
            await delivery.nack(delay=delay)
            again = await self.receive(consumer, within=delay + self.receive_timeout)
            waited = time.monotonic() - started
            assert again.message.id == sent.id
            assert again.attempt == 2
            assert waited >= delay * 0.8, f"redelivered after {waited:.3f} s, delay was {delay}"
            await again.ack()
            await _close_iterator(consumer)

    async def test_unsettled_deliveries_return_when_consumer_stops(
        self, transport: Transport, topic: str, group: str
    ) -> None:
        """A consumer that stops without settling loses nothing."""
        async with asyncio.timeout(self.timeout + self.redelivery_timeout):
            first = await self.consumer(transport, topic, group)
            sent = self.message(topic, 1)
            await transport.publish([sent])
            delivery = await self.receive(first)
            assert delivery.attempt == 1
            await _close_iterator(first)  # the consumer dies without settling
            second = await self.consumer(transport, topic, group)
            again = await self.receive(second, within=self.redelivery_timeout)
            assert again.message.id == sent.id
            assert again.attempt == 2
            await again.ack()
            await _close_iterator(second)

    async def test_dead_letter_is_never_redelivered(
        self, transport: Transport, topic: str, group: str
    ) -> None:
        """A dead-lettered message is parked, not redelivered."""
        async with asyncio.timeout(self.timeout):
            consumer = await self.consumer(transport, topic, group)
            doomed = self.message(topic, 1)
            await transport.publish([doomed])
            delivery = await self.receive(consumer)
            await delivery.nack()
            delivery = await self.receive(consumer)
            assert delivery.attempt == 2
            await delivery.dead_letter("handler failed: ValueError")
            await delivery.ack()  # already settled: no-op
            marker = self.message(topic, 2)
            await transport.publish([marker])
            seen = await self.receive_until(consumer, marker.id)
            assert doomed.id not in [d.message.id for d in seen]
            await self.assert_quiet(consumer)
            parked = await self.read_dead_letters(transport, topic, group)
            if parked is not None:
                assert [m.id for m in parked] == [doomed.id]
                assert parked[0].body == doomed.body
            await _close_iterator(consumer)

    async def test_groups_count_deliveries_independently(
        self, transport: Transport, topic: str
    ) -> None:
        """Delivery counts are per group."""
        async with asyncio.timeout(self.timeout):
            a = await self.consumer(transport, topic, unique_name("a"))
            b = await self.consumer(transport, topic, unique_name("b"))
            await transport.publish([self.message(topic, 1)])
            first = await self.receive(a)
            await first.nack()
            second = await self.receive(a)
            assert second.attempt == 2
            await second.ack()
            other = await self.receive(b)
            assert other.attempt == 1
            await other.ack()
            await _close_iterator(a)
            await _close_iterator(b)

    async def test_order_per_key(self, transport: Transport, topic: str, group: str) -> None:
        """An ordered transport keeps publish order per key within a group."""
        if not transport.features.ordered:
            pytest.skip("transport does not declare ordering")
        async with asyncio.timeout(self.timeout):
            consumer = await self.consumer(transport, topic, group)
            sent = [self.message(topic, i, key=f"k{i % 3}") for i in range(30)]
            await transport.publish(sent[:10])
            await transport.publish(sent[10:])
            by_key: dict[str | None, list[int]] = {}
            for _ in sent:
                delivery = await self.receive(consumer)
                by_key.setdefault(delivery.message.key, []).append(self.n(delivery))
                await delivery.ack()
            for key, numbers in by_key.items():
                assert numbers == sorted(numbers), f"key {key} out of order: {numbers}"
            await _close_iterator(consumer)

    async def test_oversized_message_is_refused(
        self, transport: Transport, topic: str, group: str
    ) -> None:
        """A body over ``max_payload`` raises `MessageTooLargeError`, sends nothing."""
        async with asyncio.timeout(self.timeout):
            consumer = await self.consumer(transport, topic, group)
            limit = transport.features.max_payload
            big = self.message(topic, 0, body=b"0" * (limit + 1))
            with pytest.raises(MessageTooLargeError):
                await transport.publish([big])
            marker = self.message(topic, 1)
            await transport.publish([marker])
            delivery = await self.receive(consumer)
            assert delivery.message.id == marker.id
            await delivery.ack()
            await _close_iterator(consumer)

    async def test_message_at_the_size_limit_is_accepted(
        self, transport: Transport, topic: str, group: str
    ) -> None:
        """A body of exactly ``max_payload`` bytes goes through."""
        limit = transport.features.max_payload
        if limit > 8 * 1024 * 1024:
            pytest.skip("size limit too large to test quickly")
        async with asyncio.timeout(self.timeout):
            consumer = await self.consumer(transport, topic, group)
            await transport.publish([self.message(topic, 0, body=b"0" * limit)])
            delivery = await self.receive(consumer)
            assert len(delivery.message.body) == limit
            await delivery.ack()
            await _close_iterator(consumer)

    async def test_invalid_names_are_refused(self, transport: Transport, topic: str) -> None:
        """Unsafe topic and group names raise `ConfigurationError`."""
        async with asyncio.timeout(self.timeout):
            with pytest.raises(ConfigurationError):
                await transport.publish([self.message("bad topic*", 1)])
            with pytest.raises(ConfigurationError):
                await anext(transport.subscribe(topic, group="bad group>"))

    async def test_close_ends_subscriptions_and_refuses_use(
        self, transport: Transport, topic: str, group: str
    ) -> None:
        """``close`` ends iterators, is idempotent, and later calls fail."""
        async with asyncio.timeout(self.timeout):
            consumer = await self.consumer(transport, topic, group)
            waiting = asyncio.ensure_future(anext(consumer))
            await asyncio.sleep(0.05)
            await transport.close()
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(waiting, self.receive_timeout)
            await transport.close()  # idempotent
            with pytest.raises(TransportClosedError):
                await transport.publish([self.message(topic, 1)])
            with pytest.raises(TransportClosedError):
                await anext(transport.subscribe(topic, group=group))

    async def test_persistent_messages_survive_a_reconnect(
        self, transport: Transport, topic: str, group: str
    ) -> None:
        """A persistent transport keeps unconsumed and unsettled messages across connections."""
        if not transport.features.persistent:
            pytest.skip("transport does not declare persistence")
        async with asyncio.timeout(self.timeout + self.redelivery_timeout):
            first = await self.consumer(transport, topic, group)
            taken, waiting = self.message(topic, 1), self.message(topic, 2)
            await transport.publish([taken, waiting])
            delivery = await self.receive(first)
            assert delivery.message.id == taken.id
            await _close_iterator(first)
            await self.dispose_transport(transport)  # the process goes away mid-work
            again = await self.make_transport()
            try:
                consumer = await self.consumer(again, topic, group)
                got = {}
                for _ in range(2):
                    d = await self.receive(consumer, within=self.redelivery_timeout)
                    got[d.message.id] = d.attempt
                    await d.ack()
                assert set(got) == {taken.id, waiting.id}, got
                # A prefetching consumer may have fetched (and counted) both.
                assert got[taken.id] >= 2, got
                assert got[waiting.id] >= 1, got
                await _close_iterator(consumer)
            finally:
                await self.dispose_transport(again)

    async def test_publish_is_task_safe(self, transport: Transport, topic: str, group: str) -> None:
        """Concurrent publishers lose nothing."""
        async with asyncio.timeout(self.timeout):
            consumer = await self.consumer(transport, topic, group)

            async def publisher(base: int) -> None:
                for i in range(10):
                    await transport.publish([self.message(topic, base + i)])

            await asyncio.gather(*(publisher(base) for base in (0, 100, 200)))
            got: list[int] = []
            for _ in range(30):
                delivery = await self.receive(consumer)
                got.append(self.n(delivery))
                await delivery.ack()
            expected: list[Any] = [b + i for b in (0, 100, 200) for i in range(10)]
            assert sorted(got) == sorted(expected)
            await _close_iterator(consumer)
