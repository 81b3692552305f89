"""Shared fixtures: live-service discovery.

A test that needs a service asks for its fixture. When the service does not
answer, the test is skipped with the reason, unless SAGAFLOW_REQUIRE_SERVICES=1
(set by .ci/run), in which case it fails.
"""

from __future__ import annotations

import os
import socket
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
