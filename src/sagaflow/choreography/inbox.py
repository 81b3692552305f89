"""The inbox: remembers which events each consumer group has handled, to drop duplicates.

Delivery is at-least-once, so a handler may see an event again (a redelivery after
a crash, a broker retry, a producer publishing twice). The bus asks the inbox
before calling the handler and tells it after the handler succeeded:

1. ``await inbox.seen(group, event_id)``: true means the group already handled
   this event; the delivery is acked without calling the handler.
2. the handler runs (with its retries);
3. ``await inbox.mark(group, event_id)`` after success, then the delivery is acked.

Marking *after* success means a crash between the handler and the mark runs the
handler again on redelivery: effects must still be idempotent, or a durable inbox
must record the mark in the same transaction as the handler's writes (the SQLite
and PostgreSQL inboxes do that). Two consumers of one group handling the same
redelivered event at the same moment may both run the handler; the inbox narrows
duplicates, it does not make them impossible.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from sagaflow.errors import ConfigurationError

__all__ = ["Inbox", "MemoryInbox"]


@runtime_checkable
class Inbox(Protocol):
    """Remembers the (group, event id) pairs whose handling succeeded.

    Implementations must be safe to call from many tasks at once. ``mark`` is
    idempotent. An inbox may forget old entries (a dedupe window), which only
    matters for events redelivered after the window.
    """

    async def seen(self, group: str, event_id: str) -> bool:
        """Return whether ``group`` already handled the event ``event_id``."""
        ...

    async def mark(self, group: str, event_id: str) -> None:
        """Record that ``group`` handled the event ``event_id`` successfully."""
        ...


class MemoryInbox:
    """An in-process inbox remembering the most recent ``max_entries`` marks.

    Args:
        max_entries: Size of the dedupe window; the oldest marks are forgotten
            first. ``None`` remembers everything (memory grows without bound).
    """

    __slots__ = ("_entries", "max_entries")

    def __init__(self, *, max_entries: int | None = 100_000) -> None:
        if max_entries is not None and max_entries < 1:
            raise ConfigurationError(f"max_entries must be >= 1 or None, got {max_entries}")
        self.max_entries = max_entries
        # A plain dict keeps insertion order: the first key is the oldest mark.
        self._entries: dict[tuple[str, str], None] = {}

    async def seen(self, group: str, event_id: str) -> bool:
        """Return whether ``group`` already handled ``event_id``."""
        return (group, event_id) in self._entries

    async def mark(self, group: str, event_id: str) -> None:
        """Remember that ``group`` handled ``event_id``, forgetting the oldest if full."""
        self.mark_nowait(group, event_id)

    def seen_nowait(self, group: str, event_id: str) -> bool:
        """`seen` without a coroutine: the bus calls this on its hot path."""
        return (group, event_id) in self._entries

    def mark_nowait(self, group: str, event_id: str) -> None:
        """`mark` without a coroutine: the bus calls this on its hot path."""
        entries = self._entries
        entries[(group, event_id)] = None
        if self.max_entries is not None and len(entries) > self.max_entries:
            del entries[next(iter(entries))]

    def __len__(self) -> int:
        return len(self._entries)
