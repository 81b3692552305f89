from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sagaflow.transports.redis import RedisStreamsTransport

from . import _scenarios as sc

pytestmark = pytest.mark.services


class TestRedisStreamsTransportContract(sc.BrokerTests):
    url_fixture = "redis_url"

    async def make_transport(self) -> RedisStreamsTransport:
        return RedisStreamsTransport(self.url, block=0.1, claim_min_idle=30.0)

    async def make_capped_transport(self, max_deliveries: int) -> RedisStreamsTransport:
        return RedisStreamsTransport(self.url, block=0.1, max_deliveries=max_deliveries)


async def test_trimming_never_drops_unacknowledged_entries(redis_url: str) -> None:
    import redis.asyncio as redis

    t = RedisStreamsTransport(redis_url, block=0.1, max_len=20)
    topic, fast, slow = sc.name("trim"), sc.name("fast"), sc.name("slow")
    raw = redis.Redis.from_url(redis_url)
    try:
        await t.declare(topic, group=fast)
        await t.declare(topic, group=slow)
        await t.publish([sc.msg(topic, i) for i in range(100)])
        fast_it = t.subscribe(topic, group=fast)
        for d in await sc.take(fast_it, 100):
            await d.ack()
        await asyncio.sleep(0.2)  # acks are written behind
        await t.publish([sc.msg(topic, 100 + i) for i in range(10)])  # triggers a trim
        await asyncio.sleep(0.5)
        # The slow group has read nothing: every entry must still be there.
        assert await raw.xlen(t.stream_key(topic)) == 110
        slow_it = t.subscribe(topic, group=slow)
        got = await sc.take(slow_it, 110)
        for d in got:
            await d.ack()
        for d in await sc.take(fast_it, 10):
            await d.ack()
        await asyncio.sleep(0.2)
        await t.publish([sc.msg(topic, 200 + i) for i in range(10)])
        deadline = asyncio.get_running_loop().time() + 5
        while await raw.xlen(t.stream_key(topic)) > 20:
            assert asyncio.get_running_loop().time() < deadline, "acked entries were not trimmed"
            await t.publish([sc.msg(topic, 300)])
            await asyncio.sleep(0.1)
    finally:
        await t.close()
        await raw.delete(t.stream_key(topic))
        await raw.aclose()


async def test_delayed_retry_survives_the_consumer(redis_url: str) -> None:
    """A nack(delay) is kept in Redis: another transport delivers it when due."""
    t1 = RedisStreamsTransport(redis_url, block=0.1)
    topic, group = sc.name("delay"), sc.name("g")
    await t1.declare(topic, group=group)
    m = sc.msg(topic, 1)
    await t1.publish([m])
    (d,) = await sc.take(t1.subscribe(topic, group=group), 1)
    await d.nack(delay=1.0)
    await t1.close()
    t2 = RedisStreamsTransport(redis_url, block=0.1)
    try:
        it = t2.subscribe(topic, group=group)
        started = asyncio.get_running_loop().time()
        (again,) = await sc.take(it, 1)
        assert again.message.id == m.id
        assert again.attempt == 2
        assert asyncio.get_running_loop().time() - started >= 0.5
        await again.ack()
    finally:
        await t2.close()


async def test_restarted_consumer_reads_its_own_pending_first(redis_url: str) -> None:
    """With a stable consumer name, a restarted process gets its pending entries at once."""
    import json
    import os
    import signal
    import sys
    from pathlib import Path

    topic, group = sc.name("own"), sc.name("g")
    options = {"consumer_name": sc.name("pod"), "claim_min_idle": 600.0, "block": 0.1}
    t = RedisStreamsTransport(redis_url, **options)  # type: ignore[arg-type]
    await t.declare(topic, group=group)
    script = Path(__file__).with_name("_crash_consumer.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        redis_url,
        json.dumps(options),
        topic,
        group,
        "3",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    assert (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() == b"SUBSCRIBED"
    sent = [sc.msg(topic, i) for i in range(3)]
    await t.publish(sent)
    while (await asyncio.wait_for(proc.stdout.readline(), 20)).strip() != b"READY":
        pass
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    try:
        # Same consumer name (subscription #1 in both processes): no XAUTOCLAIM wait.
        got = await sc.take(t.subscribe(topic, group=group), 3, within=5)
        assert sorted(d.message.id for d in got) == sorted(m.id for m in sent)
        assert all(d.attempt == 2 for d in got)
        for d in got:
            await d.ack()
    finally:
        await t.close()


async def test_reclaim_leaves_delayed_retries_alone(redis_url: str) -> None:
    """XAUTOCLAIM passes neither deliver a delayed entry early nor inflate its attempt."""
    options: dict[str, Any] = {"block": 0.05, "claim_min_idle": 0.2, "claim_interval": 0.1}
    t = RedisStreamsTransport(redis_url, **options)
    topic, group = sc.name("delay"), sc.name("g")
    try:
        await t.declare(topic, group=group)
        it = t.subscribe(topic, group=group)
        await t.publish([sc.msg(topic, 1)])
        (d,) = await sc.take(it, 1)
        started = asyncio.get_running_loop().time()
        await d.nack(delay=1.5)
        (again,) = await sc.take(it, 1)  # many reclaim passes run meanwhile
        assert asyncio.get_running_loop().time() - started >= 1.2
        assert again.attempt == 2
        await again.ack()
    finally:
        await t.close()
