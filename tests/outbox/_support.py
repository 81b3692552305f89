"""Shared pieces of the outbox tests: events, a recording transport, PostgreSQL schemas."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence

from sagaflow.clock import SystemClock
from sagaflow.errors import PublishError, TransportUnavailableError
from sagaflow.events import Event, EventRegistry
from sagaflow.transports.base import Delivery, Message, TransportFeatures

registry = EventRegistry()


class ItemAdded(Event, type="outbox-test.item-added.v1", registry=registry):
    """What the tests record."""

    key: str
    n: int
    blob: str = ""


class RecordingTransport:
    """Records confirmed publishes; can be slow, flaky or refuse big bodies."""

    def __init__(
        self,
        *,
        max_payload: int = 1024 * 1024,
        delay: float = 0.0,
        fail_rate: float = 0.0,
        seed: int = 0,
        down: bool = False,
    ) -> None:
        self.features = TransportFeatures(
            persistent=True,
            ordered=True,
            competing_consumers=True,
            native_delay=False,
            native_dead_letter=False,
            max_payload=max_payload,
        )
        self.published: list[Message] = []
        self.calls: list[list[Message]] = []
        self.delay = delay
        self.fail_rate = fail_rate
        self.down = down
        self._rng = random.Random(seed)

    async def publish(self, messages: Sequence[Message]) -> None:
        self.calls.append(list(messages))
        if self.delay:
            await asyncio.sleep(self._rng.uniform(0, self.delay))
        if self.down:
            raise TransportUnavailableError("broker down")
        if self.fail_rate and self._rng.random() < self.fail_rate:
            raise PublishError("flaky broker")
        self.published.extend(messages)

    def subscribe(self, topic: str, *, group: str) -> AsyncIterator[Delivery]:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class OffsetClock(SystemClock):
    """Wall time plus a manual offset: leases, retry times and retention can be skipped."""

    def __init__(self) -> None:
        self.offset = 0.0

    def now(self) -> float:
        return super().now() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


def numbers_by_key(messages: Sequence[Message], decode) -> dict[str, list[int]]:
    """Return, per key, the ``n`` of each published message in publish order."""
    found: dict[str, list[int]] = defaultdict(list)
    for message in messages:
        event = decode(message).event
        found[event.key].append(event.n)
    return dict(found)


def assert_ordered(sequence: list[int], expected: int) -> None:
    """Every number was published, and each first appears after all smaller ones."""
    firsts: list[int] = []
    for n in sequence:
        if n not in firsts:
            firsts.append(n)
    assert firsts == list(range(expected)), firsts


def new_schema() -> str:
    return f"outbox_test_{uuid.uuid4().hex[:10]}"


async def drop_schema(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )
