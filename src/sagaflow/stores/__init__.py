"""Saga stores: where saga logs live.

`MemorySagaStore` is always available; the durable stores import their drivers
only when used.
"""

from sagaflow.stores.memory import MemorySagaStore

__all__ = ["MemorySagaStore"]
