"""The broker restarts mid-stream: publishing and consuming resume, nothing acknowledged is lost.

Each test runs its own private server (another port, a temporary data directory) so
the shared services other tests use are never disturbed. Without the server binary
the test is skipped (failed under SAGAFLOW_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from sagaflow.errors import TransportError
from sagaflow.transports import open_transport
from sagaflow.transports.base import Message

from . import _scenarios as sc

pytestmark = [pytest.mark.services, pytest.mark.slow]


async def _run_through_restart(url: str, options: dict[str, Any], server: Any) -> None:
    topic, group = sc.name("restart"), sc.name("g")
    transport = open_transport(url, **options)
    await transport.declare(topic, group=group)  # type: ignore[attr-defined]
    published: set[str] = set()
    handled: dict[str, int] = {}
    total = 300

    async def publish() -> None:
        for start in range(0, total, 10):
            batch = [
                Message(id=f"{topic}-{i}", topic=topic, body=str(i).encode())
                for i in range(start, start + 10)
            ]
            while True:
                try:
                    await transport.publish(batch)
                    break
                except TransportError:
                    await asyncio.sleep(0.2)  # broker down: the caller retries
            published.update(m.id for m in batch)
            await asyncio.sleep(0.01)

    async def consume() -> None:
        async for delivery in transport.subscribe(topic, group=group):
            handled[delivery.message.id] = handled.get(delivery.message.id, 0) + 1
            with contextlib.suppress(TransportError):
                await delivery.ack()

    consumer = asyncio.create_task(consume())
    publisher = asyncio.create_task(publish())
    while len(published) < total // 3:
        await asyncio.sleep(0.01)
    await asyncio.to_thread(server.stop)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(server.start)
    await asyncio.wait_for(publisher, 60)
    deadline = time.monotonic() + 60
    while not published <= set(handled) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    consumer.cancel()
    await transport.close()
    missing = published - set(handled)
    assert not missing, f"{len(missing)} acknowledged publishes never handled"
    assert len(published) == total


async def test_redis_restart_mid_stream(redis_server: Any) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    options = {"block": 0.1, "claim_min_idle": 2.0, "claim_interval": 0.5, "persistent": True}
    await _run_through_restart(url, options, redis_server)


async def test_nats_restart_mid_stream(nats_server: Any) -> None:
    url = f"nats://127.0.0.1:{nats_server.port}"
    await _run_through_restart(url, {"block": 0.2, "ack_wait": 2.0}, nats_server)


async def test_postgres_restart_mid_stream(postgres_server: Any) -> None:
    url = f"postgresql://postgres@127.0.0.1:{postgres_server.port}/postgres"
    await _run_through_restart(url, {"lease": 2.0, "poll_interval": 0.2}, postgres_server)


async def test_rabbitmq_restart_mid_stream(rabbitmq_server: Any) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{rabbitmq_server.port}/"
    await _run_through_restart(url, {"block": 0.2}, rabbitmq_server)
