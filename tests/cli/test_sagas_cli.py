"""The `sagaflow sagas ...` operator commands, against a real SQLite store."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from pydantic import BaseModel

from sagaflow import Orchestrator, RetryPolicy, Saga, SagaStatus, Step, StepKind
from sagaflow.cli import main
from sagaflow.stores import open_store


class Order(BaseModel):
    order_id: str = "o"


BROKEN: set[str] = set()


async def act(ctx):
    if ctx.step in BROKEN:
        raise RuntimeError(f"{ctx.step} is down")


async def undo(ctx):
    if f"undo_{ctx.step}" in BROKEN:
        raise RuntimeError(f"cannot undo {ctx.step}")


ONCE = RetryPolicy.no_retry()
SAGA = Saga(
    "order",
    state=Order,
    retry=ONCE,
    compensation_retry=ONCE,
    steps=[
        Step("reserve", act, compensate=undo),
        Step("charge", act, compensate=undo),
        Step("ship", act, kind=StepKind.PIVOT),
    ],
)


def run_cli(*args: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, "-m", "sagaflow.cli", *args], capture_output=True, text=True, timeout=60
    )
    return done.returncode, done.stdout, done.stderr


@pytest.fixture
async def parked(tmp_path):
    """A SQLite store with one completed and one parked saga."""
    url = f"sqlite:///{tmp_path}/sagas.db"
    store = open_store(url)
    BROKEN.clear()
    BROKEN.update({"ship", "undo_charge"})
    async with Orchestrator(store) as orchestrator:
        parked = await orchestrator.run(SAGA, Order(), saga_id="parked-1")
        BROKEN.clear()
        done = await orchestrator.run(SAGA, Order(), saga_id="done-1")
    assert parked.status is SagaStatus.FAILED
    assert done.status is SagaStatus.COMPLETED
    await store.close()
    return url


async def test_list_and_show(parked):
    code, out, _ = run_cli("sagas", "list", "--store", parked)
    assert code == 0
    assert "parked-1" in out and "failed" in out and "done-1" in out
    code, out, _ = run_cli("sagas", "list", "--store", parked, "--status", "failed", "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["saga_id"] for r in rows] == ["parked-1"]
    code, out, _ = run_cli("sagas", "show", "parked-1", "--store", parked)
    assert code == 0
    assert "FAILED" in out
    assert "compensation failed charge (attempt 1): RuntimeError: cannot undo charge" in out
    code, out, _ = run_cli("sagas", "show", "parked-1", "--store", parked, "--json")
    assert json.loads(out)["status"] == "failed"


async def test_skip_then_a_worker_finishes(parked):
    code, out, err = run_cli(
        "sagas", "skip", "parked-1", "--reason", "refunded by hand", "--store", parked
    )
    assert code == 0, err
    assert "compensating" in out
    store = open_store(parked)
    async with Orchestrator(store, sagas=[SAGA]) as worker:
        report = await worker.recover()
    [result] = report.finished
    assert result.status is SagaStatus.COMPENSATED
    assert result.compensated_steps() == ["reserve"]
    await store.close()


async def test_retry_then_a_worker_finishes(parked):
    code, _, err = run_cli("sagas", "retry", "parked-1", "--store", parked)
    assert code == 0, err
    store = open_store(parked)
    async with Orchestrator(store, sagas=[SAGA]) as worker:
        report = await worker.recover()
    assert report.finished[0].status is SagaStatus.COMPENSATED
    assert report.finished[0].compensated_steps() == ["charge", "reserve"]
    await store.close()


async def test_exit_codes(parked):
    code, _, err = run_cli("sagas", "resume", "done-1", "--store", parked)
    assert code == 1
    assert "not parked" in err
    code, _, err = run_cli("sagas", "show", "nope", "--store", parked)
    assert code == 1
    assert "no saga with id 'nope'" in err
    code, _, err = run_cli("sagas", "list", "--store", "mysql://user:secret@h/db")
    assert code == 2
    assert "unknown store URL scheme" in err
    assert "secret" not in err
    code, _, err = run_cli("sagas", "list", "--store", "postgresql://postgres:pw@127.0.0.1:1/x")
    assert code == 3
    assert "pw" not in err
    code, _, err = run_cli("sagas", "list")
    assert code == 2
    code, _, err = run_cli("sagas", "frobnicate")
    assert code == 2


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "sagas" in out
