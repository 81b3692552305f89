from __future__ import annotations

import subprocess
import sys

import pytest

from sagaflow._urls import mask_url
from sagaflow.errors import ConfigurationError, MissingDependencyError
from sagaflow.transports import MemoryTransport, open_transport

BROKER_MODULES = ("redis", "nats", "aio_pika", "aiormq", "psycopg", "psycopg_pool")


def test_import_sagaflow_imports_no_broker_client() -> None:
    code = (
        "import sys, sagaflow, sagaflow.transports\n"
        f"loaded = [m for m in {BROKER_MODULES!r} if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_memory_url() -> None:
    transport = open_transport("memory://")
    assert isinstance(transport, MemoryTransport)
    await transport.close()


@pytest.mark.parametrize(
    ("url", "cls"),
    [
        ("redis://127.0.0.1:6379/0", "RedisStreamsTransport"),
        ("rediss://u:p@example.com:6380/0", "RedisStreamsTransport"),
        ("nats://127.0.0.1:4222", "NatsJetStreamTransport"),
        ("tls://127.0.0.1:4222", "NatsJetStreamTransport"),
        ("amqp://guest:guest@127.0.0.1:5672/", "RabbitMQTransport"),
        ("amqps://guest:guest@127.0.0.1:5671/", "RabbitMQTransport"),
        ("postgresql://postgres@127.0.0.1:5432/test", "PostgresTransport"),
        ("postgres://postgres@127.0.0.1:5432/test", "PostgresTransport"),
    ],
)
async def test_broker_urls(url: str, cls: str) -> None:
    transport = open_transport(url)
    assert type(transport).__name__ == cls
    await transport.close()


@pytest.mark.parametrize("url", ["kafka://x:9092", "no-scheme", "http://x"])
def test_unknown_scheme(url: str) -> None:
    with pytest.raises(ConfigurationError):
        open_transport(url)


def test_unknown_scheme_error_masks_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        open_transport("kafka://user:hunter2@host:9092")
    assert "hunter2" not in str(info.value)


def test_mask_url() -> None:
    assert mask_url("amqp://guest:secret@h:5672/v") == "amqp://guest:***@h:5672/v"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
    assert "pw" not in mask_url("postgresql://u:pw@[::1]:5432/db")


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("sagaflow.transports.redis", "redis", "redis"),
        ("sagaflow.transports.nats", "nats", "nats"),
        ("sagaflow.transports.rabbitmq", "aio_pika", "rabbitmq"),
        ("sagaflow.transports.postgres", "psycopg", "postgres"),
    ],
)
def test_missing_client_names_the_extra(module: str, blocked: str, extra: str) -> None:
    code = (
        "import sys\n"
        f"sys.modules[{blocked!r}] = None\n"
        "from sagaflow.errors import MissingDependencyError\n"
        "try:\n"
        f"    __import__({module!r})\n"
        "except MissingDependencyError as e:\n"
        f"    assert e.extra == {extra!r}, e.extra\n"
        "    print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "ok"
    assert issubclass(MissingDependencyError, ImportError)


@pytest.mark.parametrize(
    "url",
    [
        "redis://user:topsecret@127.0.0.1:1/0",
        "nats://user:topsecret@127.0.0.1:1",
        "amqp://user:topsecret@127.0.0.1:1/",
        "postgresql://user:topsecret@127.0.0.1:1/db",
    ],
)
async def test_unreachable_broker_is_translated_and_masked(url: str) -> None:
    from sagaflow.errors import TransportUnavailableError
    from sagaflow.transports.base import Message

    options = {"connect_timeout": 1.0} if url.startswith("postgresql") else {}
    transport = open_transport(url, **options)
    assert "topsecret" not in repr(transport)
    with pytest.raises(TransportUnavailableError) as info:
        await transport.publish([Message(id="1", topic="t", body=b"x")])
    assert "topsecret" not in str(info.value)
    assert info.value.__cause__ is not None
    await transport.close()
