"""`sagaflow` run in-process: bad arguments and URLs, empty stores, limits, $SAGAFLOW_STORE.

What test_sagas_cli.py runs in a subprocess (list/show/retry/skip on a parked
saga, unknown scheme, unreachable PostgreSQL, no store, unknown action) is not
repeated here. Every bad input must end with a one-line message and exit code 2
(usage) or 3 (store unavailable), never a traceback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import BaseModel

from sagaflow import Orchestrator, Saga, SagaStatus, Step, StepKind
from sagaflow.stores import open_store


class Order(BaseModel):
    order_id: str = "o"


async def _noop(ctx: object) -> None:
    return None


Cli = Callable[..., tuple[int, str, str]]  # the `cli` fixture of tests/conftest.py

SAGA = Saga("order", state=Order, steps=[Step("reserve", _noop, kind=StepKind.PIVOT)])


@pytest.fixture
def three_sagas(tmp_path: Path) -> str:
    """A SQLite store holding three completed sagas, s1 (oldest) to s3."""
    url = f"sqlite:///{tmp_path}/sagas.db"

    async def fill() -> None:
        store = open_store(url)
        async with Orchestrator(store) as orchestrator:
            for saga_id in ("s1", "s2", "s3"):
                result = await orchestrator.run(SAGA, Order(), saga_id=saga_id)
                assert result.status is SagaStatus.COMPLETED
        await store.close()

    asyncio.run(fill())
    return url


def test_no_command_prints_help_and_exits_2(cli: Cli) -> None:
    code, out, _ = cli()
    assert code == 2
    assert "usage: sagaflow" in out and "sagas" in out


def test_sagas_without_an_action_names_what_is_missing(cli: Cli) -> None:
    code, _, err = cli("sagas")
    assert code == 2
    assert "usage: sagaflow sagas" in err
    assert "required: ACTION" in err


def test_version(cli: Cli) -> None:
    code, out, _ = cli("--version")
    assert code == 0
    assert out.startswith("sagaflow ")


def test_list_on_an_empty_store(cli: Cli) -> None:
    code, out, _ = cli("sagas", "list", "--store", "memory://")
    assert (code, out) == (0, "no sagas\n")
    code, out, _ = cli("sagas", "list", "--store", "memory://", "--json")
    assert (code, out) == (0, "")


def test_list_limit_keeps_the_newest(cli: Cli, three_sagas: str) -> None:
    code, out, _ = cli("sagas", "list", "--store", three_sagas, "--limit", "2", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["saga_id"] for r in rows] == ["s3", "s2"]
    assert {r["status"] for r in rows} == {"completed"}
    code, out, _ = cli("sagas", "list", "--store", three_sagas, "--limit", "1")
    assert code == 0
    header, *lines = out.splitlines()
    assert header.startswith("SAGA ID")
    assert len(lines) == 1 and lines[0].startswith("s3 ")


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ("0", "argument --limit: must be at least 1, got 0"),
        ("-1", "argument --limit: must be at least 1, got -1"),
        ("ten", "argument --limit: not a whole number: 'ten'"),
    ],
)
def test_bad_limit_is_a_usage_error(cli: Cli, three_sagas: str, limit: str, message: str) -> None:
    # Before: 0 listed nothing, -1 listed all (SQLite), all but one (memory) or
    # failed as a "store error" with exit 3 (PostgreSQL).
    code, out, err = cli("sagas", "list", "--store", three_sagas, "--limit", limit)
    assert code == 2
    assert out == ""
    assert message in err


def test_bad_status_and_missing_reason_are_usage_errors(
    cli: Cli,
) -> None:
    code, _, err = cli("sagas", "list", "--store", "memory://", "--status", "lost")
    assert code == 2
    assert "argument --status: invalid choice: 'lost'" in err
    code, _, err = cli("sagas", "skip", "s1", "--store", "memory://")
    assert code == 2
    assert "required: --reason" in err


@pytest.mark.parametrize("action", [["retry"], ["resume"], ["skip", "--reason", "by hand"]])
def test_operating_a_missing_saga_is_refused(cli: Cli, three_sagas: str, action: list[str]) -> None:
    name, *rest = action
    code, out, err = cli("sagas", name, "nope", *rest, "--store", three_sagas)
    assert code == 1
    assert out == ""
    assert err == "sagaflow: no saga with id 'nope'\n"


def test_store_url_from_the_environment(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, three_sagas: str
) -> None:
    monkeypatch.setenv("SAGAFLOW_STORE", three_sagas)
    code, out, _ = cli("sagas", "show", "s2")
    assert code == 0
    assert "s2" in out and "COMPLETED" in out
    # --store wins over the environment.
    code, out, _ = cli("sagas", "list", "--store", "memory://")
    assert (code, out) == (0, "no sagas\n")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not-a-url", "sagaflow: not a store URL: 'not-a-url'"),
        ("sqlite://", "sagaflow: SQLite URL needs a path"),
        ("sqlite:///x.db?inline=maybe", "sagaflow: SQLite URL option inline='maybe'"),
        ("postgresql://u:secret@localhost:port/db", "sagaflow: bad PostgreSQL URL"),
        ("postgresql://u:secret@localhost:70000/db", "sagaflow: bad PostgreSQL URL"),
    ],
)
def test_bad_store_urls_are_usage_errors(cli: Cli, url: str, message: str) -> None:
    code, out, err = cli("sagas", "list", "--store", url)
    assert code == 2
    assert out == ""
    assert err.startswith(message)
    assert len(err.splitlines()) == 1
    assert "secret" not in err


def test_unopenable_sqlite_file_is_unavailable(cli: Cli, tmp_path: Path) -> None:
    code, _, err = cli("sagas", "list", "--store", f"sqlite:///{tmp_path}/no/such/dir.db")
    assert code == 3
    assert err.startswith("sagaflow: store unavailable: ")
    assert len(err.splitlines()) == 1


def test_a_file_that_is_not_a_database_is_a_store_error(cli: Cli, tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a SQLite database, just sixteen+ bytes of text\n" * 20)
    code, _, err = cli("sagas", "list", "--store", f"sqlite:///{junk}")
    assert code == 3
    assert err.startswith("sagaflow: store error: ")
    assert len(err.splitlines()) == 1
