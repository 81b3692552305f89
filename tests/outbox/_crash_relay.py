"""A relay process for the crash tests: publishes an outbox to a file, slowly.

Usage: ``python _crash_relay.py sqlite PATH OUT`` or ``python _crash_relay.py
postgres URL SCHEMA OUT``. Every confirmed publish appends one JSON line per
message to OUT (written before ``publish`` returns, as a broker's confirmation
would be). The parent kills this process with SIGKILL mid-batch.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import Sequence

from sagaflow.choreography.outbox import OutboxRelay
from sagaflow.transports.base import Message, TransportFeatures

LEASE = 1.0
BATCH = 12


class FileTransport:
    features = TransportFeatures(
        persistent=True,
        ordered=True,
        competing_consumers=False,
        native_delay=False,
        native_dead_letter=False,
        max_payload=1 << 20,
    )

    def __init__(self, path: str, by: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._by = by

    async def publish(self, messages: Sequence[Message]) -> None:
        # A slow broker: the batch is mostly in flight, and the confirmation
        # reaches the relay a while after the broker stored the messages.
        await asyncio.sleep(0.01)
        lines = "".join(json.dumps({**to_json(m), "by": self._by}) + "\n" for m in messages)
        os.write(self._fd, lines.encode())
        await asyncio.sleep(0.01)

    def subscribe(self, topic, *, group):  # pragma: no cover - publish only
        raise NotImplementedError

    async def close(self) -> None:
        os.close(self._fd)


def to_json(message: Message) -> dict[str, object]:
    return {
        "id": message.id,
        "topic": message.topic,
        "key": message.key,
        "headers": dict(message.headers),
        "body": base64.b64encode(message.body).decode(),
    }


def from_json(data: dict) -> Message:
    return Message(
        id=data["id"],
        topic=data["topic"],
        key=data["key"],
        headers=data["headers"],
        body=base64.b64decode(data["body"]),
    )


async def main(argv: list[str]) -> None:
    if argv[0] == "sqlite":
        from sagaflow.choreography.outbox_sqlite import SQLiteOutbox

        outbox = SQLiteOutbox(argv[1])
        out = argv[2]
    else:
        from sagaflow.choreography.outbox_postgres import PostgresOutbox

        outbox = PostgresOutbox(argv[1], schema=argv[2])
        out = argv[3]
    relay = OutboxRelay(
        outbox,
        FileTransport(out, "doomed"),
        batch_size=BATCH,
        lease=LEASE,
        poll_interval=0.05,
        owner="doomed",
    )
    await relay.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
