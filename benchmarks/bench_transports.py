"""End-to-end throughput of each broker transport next to a raw-client baseline.

For every broker reachable on this machine: publish N messages (in batches), then
consume and acknowledge them all; msgs/s = N / (publish time + consume time).
Each case runs ``--runs`` times; the table shows medians and the ratio of the
sagaflow transport to the raw client measured in the same run. For Redis it also
runs FastStream's Redis stream subscriber (``pip install "sagaflow[bench]"``).

    .venv/bin/python benchmarks/bench_transports.py [--runs 3] [--only redis,nats]

Baselines (hand-written, best practice for each client):
* Redis: pipelined XADD, XREADGROUP COUNT 500 with batched XACK (redis-py).
* NATS: JetStream async publishes awaited per batch; pull fetch(500), ack each.
* RabbitMQ: publisher confirms awaited per batch; manual ack, prefetch 500 (aio-pika).
* PostgreSQL: executemany INSERT; DELETE ... WHERE id IN (SELECT ... FOR UPDATE
  SKIP LOCKED LIMIT 500) RETURNING (psycopg 3).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sagaflow.transports import open_transport
from sagaflow.transports.base import Message

URLS = {
    "redis": os.environ.get("SAGAFLOW_TEST_REDIS", "redis://127.0.0.1:6379/0"),
    "nats": os.environ.get("SAGAFLOW_TEST_NATS", "nats://127.0.0.1:4222"),
    "rabbitmq": os.environ.get("SAGAFLOW_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/"),
    "postgres": os.environ.get(
        "SAGAFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
    ),
}
COUNTS = {"redis": 20_000, "nats": 20_000, "rabbitmq": 10_000, "postgres": 10_000}
OPTIONS: dict[str, dict[str, Any]] = {
    "redis": {"batch_size": 500},
    "nats": {"batch_size": 500},
    "rabbitmq": {"prefetch": 500, "batch_size": 500},
    "postgres": {"batch_size": 500, "poll_interval": 0.2},
}
BATCH = 500
BODY = b'{"order_id": "4f9c2a", "amount": 1999, "currency": "EUR"}'


def _name(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


# --- sagaflow --------------------------------------------------------------------------


async def sagaflow_run(broker: str, n: int) -> float:
    transport: Any = open_transport(URLS[broker], **OPTIONS[broker])
    topic, group = _name("t"), _name("g")
    await transport.declare(topic, group=group)
    messages = [
        Message(id=uuid.uuid4().hex, topic=topic, body=BODY, headers={"type": "order.v1"})
        for _ in range(n)
    ]
    started = time.perf_counter()
    for i in range(0, n, BATCH):
        await transport.publish(messages[i : i + BATCH])
    consumer = transport.subscribe(topic, group=group)
    for _ in range(n):
        delivery = await anext(consumer)
        await delivery.ack()
    elapsed = time.perf_counter() - started
    await transport.close()
    return n / elapsed


async def bus_run(broker: str, n: int) -> float:
    """The same through the EventBus: typed events, JSON envelopes, inbox, pipeline."""
    from sagaflow.choreography.bus import EventBus
    from sagaflow.events import Event, EventRegistry

    registry = EventRegistry()
    suffix = uuid.uuid4().hex[:8]

    class OrderPlaced(Event, type=f"bench.order{suffix}.v1", registry=registry):
        order_id: str
        amount: int

    transport: Any = open_transport(URLS[broker], **OPTIONS[broker])
    handled = 0
    finished = asyncio.Event()
    bus = EventBus(transport, registry=registry, close_transport=True)

    @bus.handler(OrderPlaced, group=f"bench-{suffix}")
    async def on_order(event: OrderPlaced) -> None:
        nonlocal handled
        handled += 1
        if handled == n:
            finished.set()

    await bus.start()
    events = [OrderPlaced(order_id=str(i), amount=1999) for i in range(n)]
    started = time.perf_counter()
    for i in range(0, n, BATCH):
        await bus.publish_many(events[i : i + BATCH])
    await asyncio.wait_for(finished.wait(), 300)
    elapsed = time.perf_counter() - started
    await bus.stop()
    return n / elapsed


# --- raw clients -----------------------------------------------------------------------


async def raw_redis(n: int) -> float:
    import redis.asyncio as redis

    client = redis.Redis.from_url(URLS["redis"])
    stream, group = _name("raw"), "g"
    await client.xgroup_create(stream, group, id="$", mkstream=True)
    started = time.perf_counter()
    for i in range(0, n, BATCH):
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(min(BATCH, n - i)):
                pipe.xadd(stream, {"id": uuid.uuid4().hex, "body": BODY, "headers": "{}"})
            await pipe.execute()
    done = 0
    while done < n:
        reply = await client.xreadgroup(group, "c", {stream: ">"}, count=BATCH, block=1000)
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        if entries:
            await client.xack(stream, group, *[entry_id for entry_id, _ in entries])
            done += len(entries)
    elapsed = time.perf_counter() - started
    await client.delete(stream)
    await client.aclose()
    return n / elapsed


async def raw_nats(n: int) -> float:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(URLS["nats"])
    js = nc.jetstream()
    name = _name("raw").replace("-", "_")
    subject = f"rawbench.{name}"
    await js.add_stream(name=name, subjects=[subject])
    psub = await js.pull_subscribe(
        subject,
        durable="g",
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.NEW),
    )
    started = time.perf_counter()
    for i in range(0, n, BATCH):
        futures = [
            await js.publish_async(subject, BODY, headers={"Nats-Msg-Id": uuid.uuid4().hex})
            for _ in range(min(BATCH, n - i))
        ]
        await asyncio.gather(*futures)
    done = 0
    while done < n:
        for msg in await psub.fetch(BATCH, timeout=2):
            await msg.ack()
            done += 1
    elapsed = time.perf_counter() - started
    await js.delete_stream(name)
    await nc.close()
    return n / elapsed


async def raw_rabbitmq(n: int) -> float:
    import aio_pika

    connection = await aio_pika.connect_robust(URLS["rabbitmq"])
    channel = await connection.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange("rawbench", aio_pika.ExchangeType.TOPIC)
    queue_name = _name("raw")
    queue = await channel.declare_queue(
        queue_name, durable=True, arguments={"x-queue-type": "quorum"}
    )
    await queue.bind(exchange, routing_key=queue_name)
    started = time.perf_counter()
    for i in range(0, n, BATCH):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        BODY,
                        message_id=uuid.uuid4().hex,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=queue_name,
                    mandatory=True,
                )
                for _ in range(min(BATCH, n - i))
            )
        )
    consume_channel = await connection.channel()
    await consume_channel.set_qos(prefetch_count=BATCH)
    consume_queue = await consume_channel.get_queue(queue_name)
    done = 0
    async with consume_queue.iterator() as iterator:
        async for message in iterator:
            await message.ack()
            done += 1
            if done == n:
                break
    elapsed = time.perf_counter() - started
    await channel.queue_delete(queue_name)
    await connection.close()
    return n / elapsed


async def raw_postgres(n: int) -> float:
    import psycopg

    conn = await psycopg.AsyncConnection.connect(URLS["postgres"], autocommit=True)
    table = _name("raw").replace("-", "_")
    await conn.execute(
        f"CREATE TABLE {table} (id bigserial PRIMARY KEY, msg_id text, body bytea, "
        "visible_at timestamptz NOT NULL DEFAULT now())"
    )
    started = time.perf_counter()
    for i in range(0, n, BATCH):
        async with conn.transaction(), conn.cursor() as cur:
            await cur.executemany(
                f"INSERT INTO {table} (msg_id, body) VALUES (%s, %s)",
                [(uuid.uuid4().hex, BODY) for _ in range(min(BATCH, n - i))],
            )
    done = 0
    while done < n:
        cur = await conn.execute(
            f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE visible_at <= now() "
            f"ORDER BY id LIMIT {BATCH} FOR UPDATE SKIP LOCKED) RETURNING id, msg_id, body"
        )
        done += len(await cur.fetchall())
    elapsed = time.perf_counter() - started
    await conn.execute(f"DROP TABLE {table}")
    await conn.close()
    return n / elapsed


async def faststream_redis(n: int) -> float:
    from faststream.redis import RedisBroker, StreamSub

    broker = RedisBroker(URLS["redis"], logger=None)
    stream = _name("fs")
    handled = 0
    finished = asyncio.Event()

    @broker.subscriber(stream=StreamSub(stream, group="g", consumer="c1"))
    async def handle(body: dict[str, Any]) -> None:
        nonlocal handled
        handled += 1
        if handled == n:
            finished.set()

    await broker.start()
    started = time.perf_counter()
    for _ in range(n):
        await broker.publish(BODY, stream=stream)
    await asyncio.wait_for(finished.wait(), 120)
    elapsed = time.perf_counter() - started
    await broker.stop()
    import redis.asyncio as redis

    client = redis.Redis.from_url(URLS["redis"])
    await client.delete(stream)
    await client.aclose()
    return n / elapsed


RAW: dict[str, Callable[[int], Awaitable[float]]] = {
    "redis": raw_redis,
    "nats": raw_nats,
    "rabbitmq": raw_rabbitmq,
    "postgres": raw_postgres,
}


async def _reachable(broker: str) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(URLS[broker])
    port = parts.port or {"redis": 6379, "nats": 4222, "rabbitmq": 5672, "postgres": 5432}[broker]
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(parts.hostname or "127.0.0.1", port), 1
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="redis,nats,rabbitmq,postgres")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply message counts")
    parser.add_argument("--bus", action="store_true", help="also measure through the EventBus")
    args = parser.parse_args()
    rows = []
    for broker in args.only.split(","):
        if not await _reachable(broker):
            print(f"{broker}: not reachable, skipped")
            continue
        n = int(COUNTS[broker] * args.scale)
        ours, raw, fast, bus = [], [], [], []
        for _ in range(args.runs):
            # Alternate so that drift on a shared machine hits both alike.
            raw.append(await RAW[broker](n))
            ours.append(await sagaflow_run(broker, n))
            if args.bus:
                bus.append(await bus_run(broker, n))
            if broker == "redis":
                with contextlib.suppress(ImportError):
                    fast.append(await faststream_redis(max(1000, n // 4)))
        row = (broker, n, statistics.median(ours), statistics.median(raw))
        rows.append(
            (
                *row,
                statistics.median(fast) if fast else None,
                statistics.median(bus) if bus else None,
            )
        )
        print(f"{broker}: sagaflow {row[2]:,.0f} msgs/s, raw {row[3]:,.0f} msgs/s", flush=True)
    print()
    print(
        "| transport | N | sagaflow msgs/s | raw client msgs/s | sagaflow/raw "
        "| FastStream msgs/s | sagaflow/FastStream | via EventBus msgs/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for broker, n, ours_m, raw_m, fast_m, bus_m in rows:
        cells = f"{fast_m:,.0f} | {ours_m / fast_m:.1f}x" if fast_m else "- | -"
        cells += f" | {bus_m:,.0f}" if bus_m else " | -"
        ratio = ours_m / raw_m
        print(f"| {broker} | {n} | {ours_m:,.0f} | {raw_m:,.0f} | {ratio:.2f} | {cells} |")


if __name__ == "__main__":
    asyncio.run(main())
