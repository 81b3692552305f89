"""Delete RabbitMQ queues left behind by earlier test runs (CI housekeeping).

Each quorum queue is a Raft group; hundreds of leftovers from interrupted runs
slow a small broker until connections time out. Only names that sagaflow's
tests create (a test prefix and a random suffix) are touched.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

TEST_QUEUE = re.compile(
    r"^sagaflow(\.dlq)?:(contract-|topic-|crash-|restart-|bench|t[0-9a-f]{8}|demo[0-9a-f]{10}\.)"
    r"|^(sftest-|crashpts_)[0-9a-f]{8}(\.dlq)?:"
)


def leftover_queues() -> list[str]:
    """Names of the test queues on the broker (via rabbitmqctl)."""
    try:
        done = subprocess.run(
            ["rabbitmqctl", "list_queues", "-q", "name"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"cannot list RabbitMQ queues ({exc}); skipping the purge")
        return []
    names = [line.strip() for line in done.stdout.splitlines()]
    return [name for name in names if TEST_QUEUE.match(name)]


async def purge(url: str, names: list[str]) -> None:
    """Delete ``names`` over one AMQP connection."""
    import aio_pika

    connection = await aio_pika.connect(url, timeout=30)
    try:
        for name in names:
            channel = await connection.channel()
            try:
                await channel.queue_delete(name)
            except Exception:  # gone already: the channel is closed, open another
                continue
            await channel.close()
    finally:
        await connection.close()


def main() -> None:
    """Purge the leftovers of the broker at argv[1] (default: the CI broker)."""
    url = sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1:5672/"
    names = leftover_queues()
    print(f"deleting {len(names)} leftover test queues")
    if names:
        asyncio.run(purge(url, names))


if __name__ == "__main__":
    main()
