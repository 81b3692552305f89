"""Helpers for PostgreSQL store tests: each test gets its own schema, dropped after."""

from __future__ import annotations

import psycopg
from psycopg import sql


async def drop_schema(url: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )
