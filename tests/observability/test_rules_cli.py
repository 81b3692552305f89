"""Observability commands: usage errors and exit codes no other test exercised.

Exit codes (see `sagaflow.cli`): 0 shown, 1 refused/nothing found, 2 bad usage,
3 unreachable. Every bad input ends with a one-line message, never a traceback.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from sagaflow.observability import EntryKind, JournalEntry
from sagaflow.observability.sqlite import SqliteJournal

SAGA = "sagaflow.examples.ecommerce.orchestrated:definition"


@pytest.fixture
def journal_url(tmp_path) -> str:
    path = tmp_path / "journal.db"
    journal = SqliteJournal(str(path))
    entry = JournalEntry(
        correlation_id="o1",
        kind=EntryKind.PUBLISH,
        at=1_700_000_000.0,
        service="orders",
        event_id="e1",
        event_type="shop.order.placed.v1",
    )
    asyncio.run(journal.write([entry]))
    asyncio.run(journal.close())
    return f"sqlite:///{path}"


def test_flows_without_an_action_names_what_is_missing(cli):
    code, out, err = cli("flows")
    assert code == 2
    assert "usage: sagaflow flows" in err
    assert "required: ACTION" in err
    assert out == ""  # not the top-level help


def test_trace_as_svg_alone(cli, journal_url):
    code, out, _ = cli("trace", "o1", "--journal", journal_url, "--format", "svg")
    assert code == 0
    assert out.startswith('<svg xmlns="http://www.w3.org/2000/svg"')
    assert out.rstrip().endswith("</svg>") and "<html" not in out
    assert "published shop.order.placed.v1" in out


def test_trace_on_a_file_that_is_not_a_journal_is_unavailable(cli, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("just some notes\n" * 100)
    code, _, err = cli("trace", "o1", "--journal", f"sqlite:///{path}")
    assert code == 3
    assert err.startswith("sagaflow: journal ") and len(err.strip().splitlines()) == 1


def test_trace_on_a_foreign_table_is_unavailable(cli, tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE sagaflow_journal (x INTEGER)")
    conn.commit()
    conn.close()
    code, _, err = cli("flows", "list", "--journal", f"sqlite:///{path}")
    assert code == 3
    assert "journal error: OperationalError" in err


@pytest.mark.parametrize("target", ["no_colon", ":attr", "module:", ""])
def test_topology_and_diagram_need_module_colon_attr(cli, target):
    for command in ("topology", "diagram"):
        code, _, err = cli(command, target)
        assert code == 2
        assert f"expected MODULE:ATTR, got {target!r}" in err


def test_diagram_of_something_that_is_not_a_saga(cli):
    code, _, err = cli("diagram", "sagaflow.examples.ecommerce.choreographed:topology")
    assert code == 2
    assert "is not a Saga" in err


def test_diagram_saga_id_needs_a_store(cli, monkeypatch):
    monkeypatch.delenv("SAGAFLOW_STORE", raising=False)  # read when main builds the parser
    code, out, err = cli("diagram", SAGA, "--saga-id", "o1")
    assert code == 2 and out == ""
    assert "--saga-id needs --store URL" in err


def test_diagram_with_an_unreachable_store_is_unavailable(cli, tmp_path):
    store = f"sqlite:///{tmp_path}/no/such/dir/sagas.db"
    code, out, err = cli("diagram", SAGA, "--store", store, "--saga-id", "o1")
    assert code == 3 and out == ""
    assert err.startswith("sagaflow: store unavailable:")


def test_diagram_with_a_bad_store_url_is_usage(cli):
    code, _, err = cli("diagram", SAGA, "--store", "nosuch://x", "--saga-id", "o1")
    assert code == 2
    assert err.startswith("sagaflow: ")


def test_diagram_with_a_store_that_cannot_be_read_is_unavailable_not_refused(cli, tmp_path):
    # Exit 1 means "no such saga"; a store that is not a database is exit 3, as for `sagas`.
    path = tmp_path / "sagas.db"
    path.write_bytes(b"not a database" * 100)
    store = f"sqlite:///{path}"
    code, out, err = cli("diagram", SAGA, "--store", store, "--saga-id", "o1")
    assert code == 3 and out == ""
    assert err.startswith("sagaflow: store error:")
    assert cli("sagas", "show", "o1", "--store", store)[0] == 3
