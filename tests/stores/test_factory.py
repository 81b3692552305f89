"""open_store URLs, lazy imports of the durable stores, and URL masking."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sagaflow._urls import mask_url
from sagaflow.errors import ConfigurationError
from sagaflow.stores import MemorySagaStore, PostgresSagaStore, SQLiteSagaStore, open_store


async def test_memory_url() -> None:
    store = open_store("memory://")
    assert isinstance(store, MemorySagaStore)
    await store.close()


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///sagas.db", "sagas.db"),
        ("sqlite:////var/lib/app/sagas.db", "/var/lib/app/sagas.db"),
        ("sqlite:///dir%20x/s.db", "dir x/s.db"),
        ("sqlite://:memory:", ":memory:"),
    ],
)
async def test_sqlite_urls(url: str, path: str) -> None:
    store = open_store(url)
    assert isinstance(store, SQLiteSagaStore)
    assert store.path == path
    await store.close()


async def test_sqlite_url_passes_options(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/s.db", synchronous="NORMAL", table_prefix="x_")
    assert isinstance(store, SQLiteSagaStore)
    await store.list_sagas()
    await store.close()


async def test_sqlite_url_query_options(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db?inline=1&synchronous=normal&busy_timeout=2.5&table_prefix=x_"
    store = open_store(url)
    assert isinstance(store, SQLiteSagaStore)
    assert store.path == f"{tmp_path}/s.db"
    worker = store._worker
    assert (worker._inline, worker._synchronous, worker._busy_timeout) == (True, "NORMAL", 2.5)
    assert store._prefix == "x_"
    await store.list_sagas()
    await store.close()
    # A keyword given to open_store wins over the URL.
    explicit = open_store("sqlite://:memory:?inline=true", inline=False)
    assert isinstance(explicit, SQLiteSagaStore)
    assert explicit._worker._inline is False
    await explicit.close()


@pytest.mark.parametrize(
    "query", ["inline=maybe", "synchronous=OFF", "busy_timeout=soon", "journal=delete"]
)
def test_unknown_sqlite_url_options_are_refused(query: str) -> None:
    with pytest.raises(ConfigurationError, match="not understood"):
        open_store(f"sqlite:///s.db?{query}")


async def test_postgres_url_with_schema() -> None:
    store = open_store("postgresql://u:secret@db.example:5432/app?schema=orders&sslmode=prefer")
    assert isinstance(store, PostgresSagaStore)
    assert store.schema == "orders"
    assert "secret" not in repr(store)
    assert "sslmode=prefer" in repr(store)
    await store.close()


@pytest.mark.parametrize(
    "url", ["redis://u:pw@localhost/0", "mysql://x", "no-scheme-here", "sqlite://", "sqlite:/x"]
)
def test_bad_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        open_store(url)
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pw@h:port/db",
        "postgresql://u:pw@h:0/db",
        "postgresql://u:pw@h:65536/db",
        "postgresql://h1:5432,h2:x/db",
        "postgresql://u:pw@[::1]:port/db",
    ],
)
def test_bad_postgres_ports_are_refused_before_connecting(url: str) -> None:
    with pytest.raises(ConfigurationError, match="is not a number from 1 to 65535") as caught:
        open_store(url)
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:pw@h:5432/db",
        "postgresql://h/db",
        "postgresql://h:/db",
        "postgresql://h1:5432,h2,h3:6543/db",
        "postgresql://u@[::1]:5432/db",
        "postgresql:///db?host=/var/run/postgresql",
    ],
)
async def test_good_postgres_ports_are_accepted(url: str) -> None:
    store = open_store(url)
    assert isinstance(store, PostgresSagaStore)
    await store.close()


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:s3cret@h:port/db", "postgresql://u:***@h:port/db"),  # bad port
        ("postgresql://u:s3:c@r@[::1]:5432,h2/db", "postgresql://u:***@[::1]:5432,h2/db"),
        ("postgresql://u@h/db?password=s3cret&x=1", "postgresql://u@h/db?password=***&x=1"),
        ("host=h password=s3cret user=u", "host=h password=*** user=u"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_importing_stores_does_not_import_drivers() -> None:
    code = textwrap.dedent(
        """
        import sys
        import sagaflow.stores
        assert "psycopg" not in sys.modules, "psycopg imported"
        assert "psycopg_pool" not in sys.modules, "psycopg_pool imported"
        assert "sagaflow.stores.sqlite" not in sys.modules
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_psycopg_names_the_extra() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["psycopg"] = None  # as if not installed
        from sagaflow.errors import MissingDependencyError
        import sagaflow.stores
        try:
            sagaflow.stores.PostgresSagaStore
        except MissingDependencyError as exc:
            assert exc.extra == "postgres", exc.extra
            assert 'sagaflow[postgres]' in str(exc)
        else:
            raise AssertionError("no MissingDependencyError")
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)
