"""Delete the queues a RabbitMQ test declared.

Every quorum queue is a Raft group on the broker: leaving hundreds behind from
test runs slows a small broker until connections time out. Tests delete what
they made.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable


async def delete_queues(url: str, names: Iterable[str]) -> None:
    """Delete ``names`` (missing ones are fine) over a fresh connection."""
    import aio_pika

    names = sorted(set(names))
    if not names:
        return
    connection = await aio_pika.connect(url, timeout=10)
    try:
        for name in names:
            channel = await connection.channel()
            with contextlib.suppress(Exception):  # already gone: a closed channel
                await channel.queue_delete(name)
            with contextlib.suppress(Exception):
                await channel.close()
    finally:
        await connection.close()
