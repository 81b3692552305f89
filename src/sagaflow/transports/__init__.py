"""Transports: move messages between services (in-memory, Redis, NATS, RabbitMQ, PostgreSQL).

* `MemoryTransport` — in-process; the default for tests and single-process apps.
* `RedisStreamsTransport` — Redis Streams consumer groups (``sagaflow[redis]``).
* `NatsJetStreamTransport` — NATS JetStream durable pull consumers (``sagaflow[nats]``).
* `RabbitMQTransport` — RabbitMQ quorum queues (``sagaflow[rabbitmq]``).
* `PostgresTransport` — a PostgreSQL table queue (``sagaflow[postgres]``).

`open_transport` builds one from a URL. Broker transports are imported lazily:
``import sagaflow.transports`` never imports a broker client.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sagaflow._urls import mask_url
from sagaflow.errors import ConfigurationError
from sagaflow.transports._common import BrokerDeadLetter
from sagaflow.transports.base import Delivery, Message, Transport, TransportFeatures
from sagaflow.transports.memory import MemoryTransport

if TYPE_CHECKING:
    from sagaflow.transports.nats import NatsJetStreamTransport
    from sagaflow.transports.postgres import PostgresTransport
    from sagaflow.transports.rabbitmq import RabbitMQTransport
    from sagaflow.transports.redis import RedisStreamsTransport

__all__ = [
    "BrokerDeadLetter",
    "Delivery",
    "MemoryTransport",
    "Message",
    "NatsJetStreamTransport",
    "PostgresTransport",
    "RabbitMQTransport",
    "RedisStreamsTransport",
    "Transport",
    "TransportFeatures",
    "open_transport",
]

_LAZY = {
    "RedisStreamsTransport": "sagaflow.transports.redis",
    "NatsJetStreamTransport": "sagaflow.transports.nats",
    "RabbitMQTransport": "sagaflow.transports.rabbitmq",
    "PostgresTransport": "sagaflow.transports.postgres",
}

_SCHEMES = {
    "redis": "RedisStreamsTransport",
    "rediss": "RedisStreamsTransport",
    "nats": "NatsJetStreamTransport",
    "tls": "NatsJetStreamTransport",
    "amqp": "RabbitMQTransport",
    "amqps": "RabbitMQTransport",
    "postgresql": "PostgresTransport",
    "postgres": "PostgresTransport",
}

_ACCEPTED = "memory://, redis://, rediss://, nats://, tls://, amqp://, amqps://, postgresql://"


def open_transport(url: str, **options: Any) -> Transport:
    """Build the transport a URL names; the broker client is imported only now.

    Accepted forms: ``memory://``; ``redis://``/``rediss://`` (Redis Streams);
    ``nats://``/``tls://`` (NATS JetStream; comma-separate several servers);
    ``amqp://``/``amqps://`` (RabbitMQ); ``postgresql://``/``postgres://``
    (PostgreSQL table queue). Credentials and TLS parameters in the URL are passed
    to the client and never logged.

    Args:
        url: The broker URL.
        **options: Keyword arguments for the transport's constructor.

    Raises:
        ConfigurationError: The scheme is unknown or the URL is malformed.
        MissingDependencyError: The broker's client (its extra) is not installed.
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigurationError(f"not a transport URL: {mask_url(url)!r}; use one of {_ACCEPTED}")
    scheme = scheme.lower()
    if scheme == "memory":
        return MemoryTransport(**options)
    name = _SCHEMES.get(scheme)
    if name is None:
        raise ConfigurationError(
            f"unknown transport URL scheme {scheme!r} in {mask_url(url)!r}; use one of {_ACCEPTED}"
        )
    cls = getattr(importlib.import_module(_LAZY[name]), name)
    transport: Transport = cls(url, **options)
    return transport


def __getattr__(name: str) -> Any:
    """Import a broker transport's module on first use of its name."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
