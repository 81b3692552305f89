"""Subprocess consumer for crash tests: receives, never settles, reports, waits to be killed.

Usage: python _crash_consumer.py URL OPTIONS_JSON TOPIC GROUP HOLD
"""

from __future__ import annotations

import asyncio
import json
import sys

from sagaflow.transports import open_transport


async def main() -> None:
    url, options, topic, group, hold = sys.argv[1:6]
    transport = open_transport(url, **json.loads(options))
    consumer = transport.subscribe(topic, group=group)
    held = []
    print("SUBSCRIBED", flush=True)
    while len(held) < int(hold):
        delivery = await anext(consumer)
        held.append(delivery)  # never settled
        print("GOT", delivery.message.id, flush=True)
    print("READY", flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
