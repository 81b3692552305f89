"""Small helpers shared by the observability tests."""

from __future__ import annotations

from sagaflow.observability import EntryKind, JournalEntry


def published(cid: str, event_type: str, at: float) -> JournalEntry:
    """A journal entry: flow ``cid`` published ``event_type`` at ``at``."""
    return JournalEntry(
        correlation_id=cid,
        kind=EntryKind.PUBLISH,
        at=at,
        event_id=f"{cid}-{at}",
        event_type=event_type,
    )


async def drop_table(url: str, table: str) -> None:
    """Drop a PostgreSQL journal table a test made."""
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
