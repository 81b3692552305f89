"""The broker restarts mid-stream: publishing and consuming resume, nothing acknowledged is lost.

Each test runs its own private server (another port, a temporary data directory) so
the shared services other tests use are never disturbed. Without the server binary
the test is skipped (failed under SAGAFLOW_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sagaflow.errors import TransportError
from sagaflow.transports import open_transport
from sagaflow.transports.base import Message

from . import _scenarios as sc

pytestmark = [pytest.mark.services, pytest.mark.slow]


def _binary(name: str) -> str:
    path = shutil.which(name) or (
        f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None
    )
    if path is None:
        reason = f"{name} is not installed"
        if os.environ.get("SAGAFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


class PrivateServer:
    """A broker process we own: start, stop (gracefully), start again on the same data."""

    def __init__(self, command: Callable[[], list[str]], port: int) -> None:
        self.command = command
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(15)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[PrivateServer]:
    binary = _binary("redis-server")
    port = _free_port()
    server = PrivateServer(
        lambda: [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(tmp_path),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
        ],
        port,
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[PrivateServer]:
    binary = _binary("nats-server")
    port = _free_port()
    server = PrivateServer(
        lambda: [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path)], port
    )
    server.start()
    yield server
    server.stop()


async def _run_through_restart(url: str, options: dict[str, Any], server: PrivateServer) -> None:
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


async def test_redis_restart_mid_stream(redis_server: PrivateServer) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    options = {"block": 0.1, "claim_min_idle": 2.0, "claim_interval": 0.5, "persistent": True}
    await _run_through_restart(url, options, redis_server)


async def test_nats_restart_mid_stream(nats_server: PrivateServer) -> None:
    url = f"nats://127.0.0.1:{nats_server.port}"
    await _run_through_restart(url, {"block": 0.2, "ack_wait": 2.0}, nats_server)
