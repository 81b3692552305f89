"""What only the memory store does: bounded retention of finished sagas, JSON fidelity."""

from __future__ import annotations

import datetime

import pytest

from sagaflow.errors import ConfigurationError, SagaNotFoundError
from sagaflow.orchestration.records import JsonRecords, RecordKind, SagaRecord, SagaStatus
from sagaflow.stores import MemorySagaStore


def started(at: float = 1.0) -> SagaRecord:
    return SagaRecord(RecordKind.SAGA_STARTED, at=at, data={"saga": "s", "version": 1, "state": {}})


async def finish(store: MemorySagaStore, saga_id: str, kind: RecordKind) -> None:
    claim = await store.create(saga_id, [started()], owner="w", lease=30)
    await store.append(
        saga_id, [SagaRecord(kind, at=2.0)], expected_version=1, fencing_token=claim.fencing_token
    )


async def test_only_the_newest_finished_sagas_are_kept():
    store = MemorySagaStore(max_finished=2)
    for saga_id in ("a", "b", "c"):
        await finish(store, saga_id, RecordKind.SAGA_COMPLETED)
    with pytest.raises(SagaNotFoundError):
        await store.load("a")
    assert (await store.load("b")).status is SagaStatus.COMPLETED
    assert (await store.load("c")).status is SagaStatus.COMPLETED
    # An evicted id may be used again.
    await store.create("a", [started()], owner="w", lease=30)
    assert (await store.load("a")).status is SagaStatus.RUNNING


async def test_unfinished_and_parked_sagas_are_never_evicted():
    store = MemorySagaStore(max_finished=0)
    await store.create("running", [started()], owner="w", lease=30)
    await finish(store, "parked", RecordKind.SAGA_FAILED)
    await finish(store, "done", RecordKind.SAGA_COMPENSATED)
    assert (await store.load("running")).status is SagaStatus.RUNNING
    assert (await store.load("parked")).status is SagaStatus.FAILED
    with pytest.raises(SagaNotFoundError):
        await store.load("done")


async def test_none_keeps_every_finished_saga_and_the_default_is_bounded():
    store = MemorySagaStore(max_finished=None)
    for number in range(50):
        await finish(store, f"s{number}", RecordKind.SAGA_COMPLETED)
    assert len(await store.list_sagas(limit=100)) == 50

    bounded = MemorySagaStore()
    for number in range(1_005):
        await finish(bounded, f"s{number}", RecordKind.SAGA_COMPLETED)
    assert len(await bounded.list_sagas(limit=2_000)) == 1_000
    with pytest.raises(SagaNotFoundError):
        await bounded.load("s4")
    assert (await bounded.load("s5")).version == 2


def test_a_negative_bound_is_refused():
    with pytest.raises(ConfigurationError, match="max_finished"):
        MemorySagaStore(max_finished=-1)


async def test_records_from_callers_come_back_as_json_values():
    store = MemorySagaStore()
    when = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
    data = {"saga": "s", "version": 1, "state": {"at": when, "tags": ("a", "b")}}
    await store.create("x", [SagaRecord(RecordKind.SAGA_STARTED, data=data)], owner="w", lease=30)
    data["state"]["tags"] = ("changed",)  # the caller's object is not the stored one
    stored = (await store.load("x")).records[0].data
    assert stored["state"] == {"at": "2026-01-02T00:00:00Z", "tags": ["a", "b"]}


async def test_the_orchestrators_json_records_are_kept_as_they_are():
    store = MemorySagaStore()
    record = started()
    await store.create("x", JsonRecords([record]), owner="w", lease=30)
    assert (await store.load("x")).records[0] is record
