"""A consumer SIGKILLed while holding unacked messages loses nothing.

The consumer runs in a subprocess, receives some messages without settling them, and
is killed with SIGKILL. Another consumer of the same group (in this process) must
then receive and handle every published message, the killed consumer's included.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sagaflow.transports import open_transport
from sagaflow.transports.base import Message

from . import _scenarios as sc

pytestmark = pytest.mark.services

SCRIPT = Path(__file__).with_name("_crash_consumer.py")

# Short recovery windows so the test is quick: how soon each broker gives a dead
# consumer's messages to another one.
BROKERS: dict[str, tuple[str, dict[str, Any]]] = {
    "redis": ("redis_url", {"claim_min_idle": 1.5, "claim_interval": 0.5, "block": 0.1}),
    "nats": ("nats_url", {"ack_wait": 2.0, "block": 0.2}),
    "rabbitmq": ("rabbitmq_url", {"block": 0.2}),
    "postgres": ("postgres_url", {"lease": 2.0, "poll_interval": 0.2}),
}


async def _read_line(proc: asyncio.subprocess.Process, within: float) -> str:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), within)
    return line.decode().strip()


@pytest.mark.parametrize("broker", sorted(BROKERS))
async def test_sigkilled_consumer_loses_nothing(
    broker: str, request: pytest.FixtureRequest
) -> None:
    fixture, options = BROKERS[broker]
    url = request.getfixturevalue(fixture)
    topic, group = sc.name("crash"), sc.name("g")
    total, hold = 30, 5
    publisher = open_transport(url, **options)
    await publisher.declare(topic, group=group)  # type: ignore[attr-defined]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        url,
        json.dumps(options),
        topic,
        group,
        str(hold),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert await _read_line(proc, 20) == "SUBSCRIBED"
        sent = [Message(id=f"{topic}-{i}", topic=topic, body=str(i).encode()) for i in range(total)]
        await publisher.publish(sent)
        held = []
        while (line := await _read_line(proc, 20)) != "READY":
            held.append(line.split()[1])
        assert len(held) == hold
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL

    survivor = open_transport(url, **options)
    consumer = survivor.subscribe(topic, group=group)
    handled: dict[str, int] = {}
    deadline = time.monotonic() + 30
    try:
        while len(handled) < total and time.monotonic() < deadline:
            try:
                delivery = await asyncio.wait_for(anext(consumer), 1.0)
            except TimeoutError:
                continue
            handled.setdefault(delivery.message.id, delivery.attempt)
            await delivery.ack()
    finally:
        await survivor.close()
        await publisher.close()
    assert set(handled) == {m.id for m in sent}, sorted({m.id for m in sent} - set(handled))
    # The killed consumer's messages come back as redeliveries.
    assert all(handled[i] >= 2 for i in held), {i: handled[i] for i in held}
