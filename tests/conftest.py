"""Shared fixtures: live-service discovery.

A test that needs a service asks for its fixture. When the service does not
answer, the test is skipped with the reason, unless SAGAFLOW_REQUIRE_SERVICES=1
(set by .ci/run), in which case it fails.
"""

from __future__ import annotations

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
from urllib.parse import urlsplit

import pytest

SERVICE_URLS = {
    "postgres": os.environ.get(
        "SAGAFLOW_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
    ),
    "redis": os.environ.get("SAGAFLOW_TEST_REDIS", "redis://127.0.0.1:6379/0"),
    "nats": os.environ.get("SAGAFLOW_TEST_NATS", "nats://127.0.0.1:4222"),
    "rabbitmq": os.environ.get("SAGAFLOW_TEST_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/"),
}
_DEFAULT_PORTS = {"postgres": 5432, "redis": 6379, "nats": 4222, "rabbitmq": 5672}


def services_required() -> bool:
    return os.environ.get("SAGAFLOW_REQUIRE_SERVICES") == "1"


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1.0
        ):
            return True
    except OSError:
        return False


def service_url(name: str) -> str:
    """Return the URL of a live service, or skip/fail the calling test."""
    url = SERVICE_URLS[name]
    if not _answers(url, _DEFAULT_PORTS[name]):
        reason = f"{name} is not reachable at {url}"
        if services_required():
            pytest.fail(f"{reason} and SAGAFLOW_REQUIRE_SERVICES=1")
        pytest.skip(reason)
    return url


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run `sagaflow ARGV...` in process; return (exit code, stdout, stderr).

    Whatever the input, the command must exit with a code and print no traceback.
    """
    from sagaflow.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exited:
            main(list(argv))
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        code = exited.value.code
        assert isinstance(code, int)
        return code, out, err

    return run


@pytest.fixture
def postgres_url() -> str:
    return service_url("postgres")


@pytest.fixture
def redis_url() -> str:
    return service_url("redis")


@pytest.fixture
def nats_url() -> str:
    return service_url("nats")


@pytest.fixture
def rabbitmq_url() -> str:
    return service_url("rabbitmq")


# -- private servers: restart tests never disturb the shared services --------------------


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
