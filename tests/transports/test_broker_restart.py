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
import signal
import socket
import subprocess
import tempfile
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

    def __init__(
        self,
        command: Callable[[], list[str]],
        port: int,
        *,
        stop_signal: int = signal.SIGTERM,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> None:
        self.command = command
        self.port = port
        self.stop_signal = stop_signal
        self.env = env
        self.user = user
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, **(self.env or {})},
            user=self.user,
            group=self.user,
            extra_groups=[] if self.user else None,
        )
        _wait_port(self.port, within=60)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(self.stop_signal)
            self.proc.wait(30)
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


# PostgreSQL refuses to run as root; CI runs the tests as root.
_PG_USER = "postgres" if os.geteuid() == 0 else None


@pytest.fixture
def postgres_server() -> Iterator[PrivateServer]:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        _binary("postgres")  # skips (or fails under SAGAFLOW_REQUIRE_SERVICES=1)
    bindir = found[-1].parent
    data = Path(tempfile.mkdtemp(prefix="sagaflow-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    subprocess.run(
        [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        user=_PG_USER,
        group=_PG_USER,
        extra_groups=[] if _PG_USER else None,
    )
    port = _free_port()
    server = PrivateServer(
        lambda: (
            [
                str(bindir / "postgres"),
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(data),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ]
        ),
        port,
        stop_signal=signal.SIGINT,  # fast shutdown: SIGTERM would wait for clients
        user=_PG_USER,
    )
    server.start()
    yield server
    server.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def rabbitmq_server() -> Iterator[PrivateServer]:
    # The packaged script itself (not the /usr/sbin wrapper, which switches user with
    # `su` and does not pass signals on): it stops the node cleanly on SIGTERM.
    script = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    binary = str(script) if script.exists() else _binary("rabbitmq-server")
    user = "rabbitmq" if os.geteuid() == 0 else None
    base = Path(tempfile.mkdtemp(prefix="sagaflow-rmq-"))
    port = _free_port()
    (base / "enabled_plugins").write_text("[].\n")
    (base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{port}\n")
    for sub in ("mnesia", "log"):
        (base / sub).mkdir()
    if user:
        for path in (base, *base.iterdir()):
            shutil.chown(path, user, user)
    server = PrivateServer(
        lambda: [binary],
        port,
        user=user,
        env={
            "HOME": "/var/lib/rabbitmq" if user else os.environ.get("HOME", str(base)),
            "RABBITMQ_NODENAME": f"sagaflow{port}@localhost",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(_free_port()),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "feature_flags"),
        },
    )
    server.start()
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


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


async def test_postgres_restart_mid_stream(postgres_server: PrivateServer) -> None:
    url = f"postgresql://postgres@127.0.0.1:{postgres_server.port}/postgres"
    await _run_through_restart(url, {"lease": 2.0, "poll_interval": 0.2}, postgres_server)


async def test_rabbitmq_restart_mid_stream(rabbitmq_server: PrivateServer) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{rabbitmq_server.port}/"
    await _run_through_restart(url, {"block": 0.2}, rabbitmq_server)
