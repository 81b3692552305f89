"""`open_store(url)`: build a saga store from a URL (used by the CLI and by apps)."""

from __future__ import annotations

import importlib
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from sagaflow.clock import Clock
from sagaflow.errors import ConfigurationError
from sagaflow.orchestration.store import SagaStore
from sagaflow.stores._common import mask_url

__all__ = ["open_store"]

_SCHEMES = "memory://, sqlite:///path/to/file.db, sqlite://:memory:, postgresql://..."


def open_store(url: str, *, clock: Clock | None = None, **options: Any) -> SagaStore:
    """Build the saga store a URL names.

    Accepted forms:

    * ``memory://`` — a new `MemorySagaStore`.
    * ``sqlite:///relative/or/absolute.db`` — a `SQLiteSagaStore` on that file
      (``sqlite:////abs/path.db`` and ``sqlite:///rel.db`` follow SQLAlchemy's
      convention: the path is everything after ``sqlite:///``), or
      ``sqlite://:memory:`` for a throwaway database. Query options:
      ``inline=1`` (see `SQLiteSagaStore`), ``synchronous=NORMAL``,
      ``busy_timeout=<seconds>``, ``table_prefix=<name>``.
    * ``postgresql://user:password@host:port/db`` (or ``postgres://``) — a
      `PostgresSagaStore`; add ``?schema=name`` to choose its schema. Needs the
      ``postgres`` extra.

    Args:
        url: The store URL.
        clock: Time source for leases.
        **options: Extra keyword arguments for the store's constructor.

    Raises:
        ConfigurationError: The scheme is unknown or the URL is malformed.
        MissingDependencyError: The store's driver is not installed.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError(f"not a store URL: {mask_url(url)!r}; use one of {_SCHEMES}")
    scheme = scheme.lower()
    if scheme == "memory":
        from sagaflow.stores.memory import MemorySagaStore

        return MemorySagaStore(clock=clock, **options)
    if scheme == "sqlite":
        return _sqlite(rest, clock, options)
    if scheme in ("postgresql", "postgres"):
        return _postgres(url, clock, options)
    raise ConfigurationError(
        f"unknown store URL scheme {scheme!r} in {mask_url(url)!r}; use one of {_SCHEMES}"
    )


def _sqlite(rest: str, clock: Clock | None, options: dict[str, Any]) -> SagaStore:
    location, _, query = rest.partition("?")
    if location == ":memory:":
        path = ":memory:"
    elif location.startswith("/") and len(location) > 1:
        path = unquote(location[1:])
    else:
        raise ConfigurationError(
            f"SQLite URL needs a path: sqlite:///file.db or sqlite://:memory:, got sqlite://{rest}"
        )
    for key, value in parse_qsl(query, keep_blank_values=True):
        options.setdefault(key, _sqlite_option(key, value))
    module = importlib.import_module("sagaflow.stores.sqlite")
    store: SagaStore = module.SQLiteSagaStore(path, clock=clock, **options)
    return store


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _sqlite_option(key: str, value: str) -> Any:
    """Convert one ``?key=value`` of a SQLite URL to the store's keyword argument."""
    if key == "inline" and value.lower() in (*_TRUE, *_FALSE):
        return value.lower() in _TRUE
    if key == "synchronous" and value.upper() in ("FULL", "NORMAL"):
        return value.upper()
    if key == "busy_timeout":
        try:
            return float(value)
        except ValueError:
            pass
    if key == "table_prefix":
        return value
    raise ConfigurationError(
        f"SQLite URL option {key}={value!r} is not understood; use inline=1|0, "
        "synchronous=FULL|NORMAL, busy_timeout=<seconds> or table_prefix=<name>"
    )


def _postgres(url: str, clock: Clock | None, options: dict[str, Any]) -> SagaStore:
    parts = urlsplit(url)
    _check_ports(parts.netloc, url)
    query = [p for p in parts.query.split("&") if p]
    kept = []
    for item in query:
        key, _, value = item.partition("=")
        if key == "schema":
            options.setdefault("schema", unquote(value))
        else:
            kept.append(item)
    conninfo = parts._replace(query="&".join(kept)).geturl()
    module = importlib.import_module("sagaflow.stores.postgres")
    store: SagaStore = module.PostgresSagaStore(conninfo, clock=clock, **options)
    return store


def _check_ports(netloc: str, url: str) -> None:
    """Refuse a port that is not 1-65535 now: the driver would only fail when connecting."""
    for host in netloc.rpartition("@")[2].split(","):  # libpq allows host1:port1,host2:port2
        if host.startswith("["):  # [IPv6]:port
            port = host.partition("]")[2].removeprefix(":")
        else:
            port = host.partition(":")[2]
        if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise ConfigurationError(
                f"bad PostgreSQL URL {mask_url(url)!r}: port {port!r} is not a number "
                "from 1 to 65535"
            )
