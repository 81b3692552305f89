"""Helpers for PostgreSQL store tests: each test gets its own schema, dropped after."""

from __future__ import annotations


async def drop_schema(url: str, schema: str) -> None:
    # Imported here so that the memory and SQLite tests run without psycopg.
    import psycopg
    from psycopg import sql

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )
