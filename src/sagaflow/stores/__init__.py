"""Saga stores: where saga logs live.

* `MemorySagaStore` — in-process, nothing survives the process; for tests and demos.
* `SQLiteSagaStore` — one durable file, no server; one machine.
* `PostgresSagaStore` — PostgreSQL (``pip install "sagaflow[postgres]"``); many machines.

`open_store` builds one from a URL (``memory://``, ``sqlite:///path``,
``postgresql://...``). The durable stores are imported lazily: ``import
sagaflow.stores`` never imports ``sqlite3`` or ``psycopg``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sagaflow.stores._factory import open_store
from sagaflow.stores.memory import MemorySagaStore

if TYPE_CHECKING:
    from sagaflow.stores.postgres import PostgresSagaStore
    from sagaflow.stores.sqlite import SQLiteSagaStore

__all__ = ["MemorySagaStore", "PostgresSagaStore", "SQLiteSagaStore", "open_store"]

_LAZY = {
    "SQLiteSagaStore": "sagaflow.stores.sqlite",
    "PostgresSagaStore": "sagaflow.stores.postgres",
}


def __getattr__(name: str) -> Any:
    """Import a durable store's module on first use of its name."""
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
