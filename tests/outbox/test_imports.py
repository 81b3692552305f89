"""The SQLite outbox and inbox never import psycopg; the PostgreSQL ones name the extra."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_sqlite_modules_do_not_import_psycopg():
    done = _run(
        "import sys\n"
        "import sagaflow.choreography.outbox, sagaflow.choreography.outbox_sqlite\n"
        "import sagaflow.choreography.inbox_sqlite\n"
        "sys.exit(1 if 'psycopg' in sys.modules else 0)"
    )
    assert done.returncode == 0, done.stderr


def test_postgres_modules_name_the_extra_when_psycopg_is_missing():
    for module in ("outbox_postgres", "inbox_postgres"):
        done = _run(
            "import sys\n"
            "sys.modules['psycopg'] = None\n"
            "from sagaflow.errors import MissingDependencyError\n"
            "try:\n"
            f"    import sagaflow.choreography.{module}\n"
            "except MissingDependencyError as exc:\n"
            "    assert exc.extra == 'postgres', exc.extra\n"
            "else:\n"
            "    sys.exit(1)\n"
        )
        assert done.returncode == 0, done.stderr
