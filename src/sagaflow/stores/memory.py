"""`MemorySagaStore`: the in-process saga store, faithful to the store contract.

It keeps logs in a dict and enforces every rule the durable stores enforce
(versions, leases, fencing tokens, the same errors), so a flow tested against it
behaves the same on SQLite or PostgreSQL. Like them it keeps record data as
JSON values (a ``datetime`` comes back as an ISO string, a tuple as a list) and
refuses data that has no JSON form. Nothing survives the process.

Unlike them it hands out the stored records themselves, not copies: the
records of a `load` (and of an orchestrator's `SagaResult`) are immutable, but
their ``data`` dicts are shared with the store, so treat them as read-only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sagaflow.clock import Clock, SystemClock
from sagaflow.errors import (
    ConcurrencyError,
    ConfigurationError,
    FencedError,
    SagaAlreadyExistsError,
    SagaNotFoundError,
    StoreError,
)
from sagaflow.orchestration.records import (
    Claim,
    JsonRecords,
    SagaLog,
    SagaRecord,
    SagaStatus,
    SagaSummary,
    status_after,
)
from sagaflow.stores._common import check_create_records, normalize_data, saga_name_of

__all__ = ["MemorySagaStore"]


@dataclass(slots=True)
class _Entry:
    records: list[SagaRecord]
    status: SagaStatus
    token: int = 1
    owner: str | None = None
    lease_expires: float | None = None
    updated_at: float = 0.0
    saga_name: str = ""
    touched: int = field(default=0)


class MemorySagaStore:
    """An in-memory `SagaStore`.

    Unfinished sagas are always kept. Finished ones (COMPLETED or COMPENSATED) are
    kept up to ``max_finished``, oldest evicted first, so a long-running process
    does not grow without bound; an evicted saga is no longer found by `load`
    (and its id may be used again). Parked (FAILED) sagas are never evicted: they
    wait for an operator.

    The default keeps the last 1,000 finished sagas: enough to inspect what a
    test or a burst just ran, while a busy process does not pay for more. Every
    kept saga is a few dozen objects that Python's garbage collector walks on
    each full collection: on the development machine, keeping 10,000 made
    every saga 10-20% slower than keeping 1,000 (compare
    ``benchmarks/bench_orchestrator.py --max-finished 10000`` with the default).

    Args:
        clock: Time source for leases (inject a fake clock in tests).
        max_finished: How many finished sagas to keep; ``None`` keeps all.
    """

    def __init__(self, *, clock: Clock | None = None, max_finished: int | None = 1_000) -> None:
        if max_finished is not None and max_finished < 0:
            raise ConfigurationError("max_finished must be >= 0 or None")
        self._clock = clock or SystemClock()
        self._sagas: dict[str, _Entry] = {}
        self._finished: deque[str] = deque()  # oldest first
        self._max_finished = max_finished
        self._seq = 0
        self._closed = False

    # -- writing ---------------------------------------------------------------------

    async def create(
        self, saga_id: str, records: Sequence[SagaRecord], *, owner: str, lease: float
    ) -> Claim:
        """Create a saga leased to ``owner`` (see `SagaStore.create`)."""
        return self._create_now(saga_id, records, owner=owner, lease=lease)

    def _create_now(
        self, saga_id: str, records: Sequence[SagaRecord], *, owner: str, lease: float
    ) -> Claim:
        # `create` without a coroutine: the orchestrator calls this directly when
        # `create` is not overridden (see Orchestrator's _direct_store).
        self._check_open()
        check_create_records(records)
        records = records if type(records) is JsonRecords else _as_stored(records)
        if saga_id in self._sagas:
            raise SagaAlreadyExistsError(saga_id)
        self._seq += 1
        expires = self._clock.now() + lease
        self._sagas[saga_id] = _Entry(
            records=list(records),
            status=status_after(None, records),
            owner=owner,
            lease_expires=expires,
            updated_at=records[-1].at,
            saga_name=saga_name_of(records),
            touched=self._seq,
        )
        return Claim(saga_id, 1, expires)

    async def append(
        self,
        saga_id: str,
        records: Sequence[SagaRecord],
        *,
        expected_version: int,
        fencing_token: int,
    ) -> int:
        """Append atomically with version and fencing checks (see `SagaStore.append`)."""
        return self._append_now(saga_id, records, expected_version, fencing_token)

    def _append_now(
        self, saga_id: str, records: Sequence[SagaRecord], expected_version: int, fencing_token: int
    ) -> int:
        # `append` without a coroutine, for the orchestrator as `_create_now`. Every
        # check comes before the first change, so a refused append changes nothing;
        # the records are copied, so the caller may reuse its list.
        if self._closed:
            raise StoreError("the store is closed")
        if type(records) is not JsonRecords:  # the orchestrator's own are JSON already
            records = _as_stored(records)
        entry = self._sagas.get(saga_id)
        if entry is None:
            raise SagaNotFoundError(saga_id)
        if fencing_token != entry.token:
            raise FencedError(saga_id, fencing_token=fencing_token, current_token=entry.token)
        stored = entry.records
        version = len(stored)
        if expected_version != version:
            raise ConcurrencyError(
                saga_id, expected_version=expected_version, actual_version=version
            )
        if not records:
            return version
        stored.extend(records)
        status = status_after(entry.status, records)
        if status is not entry.status:
            entry.status = status
            if status in _EVICTABLE:
                self._note_finished(saga_id)
        entry.updated_at = records[-1].at
        self._seq += 1
        entry.touched = self._seq
        return version + len(records)

    # -- reading ---------------------------------------------------------------------

    async def load(self, saga_id: str) -> SagaLog:
        """Return the saga's log (see `SagaStore.load`)."""
        self._check_open()
        entry = self._entry(saga_id)
        return SagaLog(
            saga_id=saga_id,
            records=tuple(entry.records),
            status=entry.status,
            fencing_token=entry.token,
            owner=entry.owner,
            lease_expires=entry.lease_expires,
        )

    async def list_sagas(
        self, *, status: SagaStatus | None = None, limit: int = 100
    ) -> Sequence[SagaSummary]:
        """List sagas, most recently updated first (see `SagaStore.list_sagas`)."""
        self._check_open()
        entries = [
            (saga_id, e)
            for saga_id, e in self._sagas.items()
            if status is None or e.status is status
        ]
        entries.sort(key=lambda item: item[1].touched, reverse=True)
        return [
            SagaSummary(
                saga_id=saga_id,
                saga_name=e.saga_name,
                status=e.status,
                version=len(e.records),
                updated_at=e.updated_at,
                owner=e.owner,
            )
            for saga_id, e in entries[:limit]
        ]

    # -- leases ----------------------------------------------------------------------

    async def claim(self, *, owner: str, lease: float, limit: int) -> Sequence[Claim]:
        """Lease unfinished sagas whose lease lapsed (see `SagaStore.claim`)."""
        self._check_open()
        now = self._clock.now()
        candidates = [
            (saga_id, e)
            for saga_id, e in self._sagas.items()
            if e.status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING)
            and (e.lease_expires is None or e.lease_expires <= now)
        ]
        candidates.sort(key=lambda item: item[1].touched)
        return [self._grant(saga_id, e, owner, now + lease) for saga_id, e in candidates[:limit]]

    async def acquire(self, saga_id: str, *, owner: str, lease: float) -> Claim:
        """Lease one saga by id (see `SagaStore.acquire`)."""
        self._check_open()
        entry = self._entry(saga_id)
        now = self._clock.now()
        live = entry.lease_expires is not None and entry.lease_expires > now
        if live and entry.owner != owner:
            raise ConcurrencyError(
                saga_id, message=f"saga {saga_id!r} is leased by {entry.owner!r}"
            )
        return self._grant(saga_id, entry, owner, now + lease)

    async def renew(self, *, owner: str, claims: Sequence[Claim], lease: float) -> Sequence[Claim]:
        """Extend leases still held (see `SagaStore.renew`)."""
        self._check_open()
        expires = self._clock.now() + lease
        renewed: list[Claim] = []
        for claim in claims:
            entry = self._sagas.get(claim.saga_id)
            if entry is None or entry.token != claim.fencing_token or entry.owner != owner:
                continue
            entry.lease_expires = expires
            renewed.append(Claim(claim.saga_id, claim.fencing_token, expires))
        return renewed

    async def release(self, saga_id: str, *, fencing_token: int) -> None:
        """Drop a lease early; a stale token is ignored (see `SagaStore.release`)."""
        self._check_open()
        entry = self._sagas.get(saga_id)
        if entry is not None and entry.token == fencing_token:
            entry.owner = None
            entry.lease_expires = None

    async def close(self) -> None:
        """Mark the store closed; idempotent."""
        self._closed = True

    # -- helpers ---------------------------------------------------------------------

    def _grant(self, saga_id: str, entry: _Entry, owner: str, expires: float) -> Claim:
        entry.token += 1
        entry.owner = owner
        entry.lease_expires = expires
        return Claim(saga_id, entry.token, expires)

    def _entry(self, saga_id: str) -> _Entry:
        try:
            return self._sagas[saga_id]
        except KeyError:
            raise SagaNotFoundError(saga_id) from None

    def _note_finished(self, saga_id: str) -> None:
        limit = self._max_finished
        if limit is None:
            return
        self._finished.append(saga_id)
        while len(self._finished) > limit:
            oldest = self._finished.popleft()
            entry = self._sagas.get(oldest)
            # Resumed by an operator since, or finished twice in the queue: keep it.
            if entry is not None and entry.status in _EVICTABLE:
                del self._sagas[oldest]

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the store is closed")


_EVICTABLE = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED})
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _as_stored(records: Sequence[SagaRecord]) -> list[SagaRecord]:
    """Return the records as a durable store would hand them back (data as JSON values)."""
    return [
        r if r.data is None else SagaRecord(r.kind, r.step, r.attempt, r.at, _normalized(r.data))
        for r in records
    ]


def _normalized(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    # Fast path for the common shape written by the orchestrator: a dict of JSON
    # scalars or of one level of such dicts. Anything else takes the full route.
    if type(data) is dict:
        for value in data.values():
            kind = type(value)
            if kind in _SCALARS:
                continue
            if kind is dict and all(type(v) in _SCALARS for v in value.values()):
                continue
            return normalize_data(data)
        return {k: v.copy() if type(v) is dict else v for k, v in data.items()}
    return normalize_data(data)
