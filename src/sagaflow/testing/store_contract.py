"""The `SagaStore` contract suite: one set of tests every saga store must pass.

Subclass `SagaStoreContract` in a pytest module and implement `make_store`
(and `dispose_store` if the store needs more cleanup than ``close()``)::

    from sagaflow.stores import MemorySagaStore
    from sagaflow.testing.store_contract import SagaStoreContract

    class TestMemoryStore(SagaStoreContract):
        async def make_store(self, clock):
            return MemorySagaStore(clock=clock)

Every test gets a fresh, empty store driven by a manual clock, so lease expiry
is tested without sleeping. The suite covers optimistic concurrency, fencing,
leases (claim, acquire, renew, release), listing, concurrent writers and
claimers, ``close()``, JSON round-tripping of record data, and a hypothesis
stateful test that compares the store with a simple list model.

This module imports pytest, pytest-asyncio and hypothesis; `import sagaflow`
never imports it.
"""

from __future__ import annotations

import asyncio
import datetime
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    rule,
    run_state_machine_as_test,
)

from sagaflow.clock import Clock
from sagaflow.errors import (
    ConcurrencyError,
    ConfigurationError,
    FencedError,
    SagaAlreadyExistsError,
    SagaNotFoundError,
    SerializationError,
    StoreError,
)
from sagaflow.orchestration.records import (
    Claim,
    RecordKind,
    SagaRecord,
    SagaStatus,
    status_after,
)
from sagaflow.orchestration.store import SagaStore
from sagaflow.stores._common import normalize_data, saga_name_of
from sagaflow.testing.clock import FakeClock

__all__ = ["SagaStoreContract"]

_START = 1_700_000_000.0


def _started(name: str = "order", at: float = _START) -> SagaRecord:
    return SagaRecord(RecordKind.SAGA_STARTED, at=at, data={"saga": name, "version": 1})


def _step(kind: RecordKind, step: str = "reserve", at: float = _START) -> SagaRecord:
    return SagaRecord(kind, step=step, attempt=1, at=at, data={"updates": {"n": 1}})


def _first(name: str = "order", at: float = _START) -> list[SagaRecord]:
    return [_started(name, at), _step(RecordKind.STEP_STARTED, at=at)]


def _json(record: SagaRecord) -> dict[str, Any]:
    return {
        "kind": RecordKind(record.kind).value,
        "step": record.step,
        "attempt": record.attempt,
        "at": float(record.at),
        "data": normalize_data(record.data),
    }


class SagaStoreContract:
    """Tests every `SagaStore` must pass; subclass and implement `make_store`.

    Attributes:
        stateful_examples: Examples the hypothesis stateful test runs.
        stateful_steps: Most rule calls per stateful example.
    """

    stateful_examples: ClassVar[int] = 30
    stateful_steps: ClassVar[int] = 25

    async def make_store(self, clock: Clock) -> SagaStore:
        """Return a new, empty store that reads lease time from ``clock``."""
        raise NotImplementedError

    async def dispose_store(self, store: SagaStore) -> None:
        """Release ``store`` and anything `make_store` created for it."""
        await store.close()

    # -- fixtures --------------------------------------------------------------------

    @pytest.fixture
    def clock(self) -> FakeClock:
        """A manual clock, advanced by the tests."""
        return FakeClock(start=_START)

    @pytest_asyncio.fixture
    async def store(self, clock: FakeClock) -> AsyncIterator[SagaStore]:
        """A fresh store on the manual clock, disposed of after the test."""
        store = await self.make_store(clock)
        try:
            yield store
        finally:
            await self.dispose_store(store)

    # -- create and load -------------------------------------------------------------

    async def test_create_then_load(self, store: SagaStore, clock: FakeClock) -> None:
        """Create then load."""
        claim = await store.create("s1", _first(), owner="w1", lease=10)
        assert claim == Claim("s1", 1, clock.now() + 10)
        log = await store.load("s1")
        assert [_json(r) for r in log.records] == [_json(r) for r in _first()]
        assert log.version == 2
        assert log.status is SagaStatus.RUNNING
        assert (log.fencing_token, log.owner, log.lease_expires) == (1, "w1", clock.now() + 10)
        assert log.saga_name == "order"

    async def test_create_existing_id_raises_and_writes_nothing(self, store: SagaStore) -> None:
        """Create existing id raises and writes nothing."""
        await store.create("s1", _first(), owner="w1", lease=10)
        with pytest.raises(SagaAlreadyExistsError) as caught:
            await store.create("s1", [_started("other")], owner="w2", lease=10)
        assert caught.value.saga_id == "s1"
        log = await store.load("s1")
        assert (log.version, log.owner, log.saga_name) == (2, "w1", "order")

    async def test_create_without_records_is_refused(self, store: SagaStore) -> None:
        """Create without records is refused."""
        with pytest.raises(ConfigurationError):
            await store.create("s1", [], owner="w1", lease=10)
        with pytest.raises(SagaNotFoundError):
            await store.load("s1")

    async def test_unknown_saga_is_not_found(self, store: SagaStore) -> None:
        """Unknown saga is not found."""
        with pytest.raises(SagaNotFoundError) as caught:
            await store.load("nope")
        assert caught.value.saga_id == "nope"
        assert isinstance(caught.value, KeyError)
        with pytest.raises(SagaNotFoundError):
            await store.append("nope", _first(), expected_version=0, fencing_token=1)
        with pytest.raises(SagaNotFoundError):
            await store.acquire("nope", owner="w1", lease=10)

    async def test_data_is_kept_as_json_values(self, store: SagaStore) -> None:
        """Data is kept as json values."""
        when = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC)
        ident = uuid.UUID(int=7)
        data = {
            "when": when,
            "id": ident,
            "pair": (1, 2),
            "nested": {"x": [1.5, None, True]},
            "nul\x00key": "a\x00b",  # PostgreSQL's jsonb/text refuse NUL; the store must not
        }
        record = SagaRecord(RecordKind.SAGA_STARTED, at=1.25, data={"saga": "x", **data})
        await store.create("s1", [record], owner="w1", lease=10)
        (loaded,) = (await store.load("s1")).records
        assert loaded.data == {
            "saga": "x",
            "when": "2024-05-01T12:30:00Z",
            "id": str(ident),
            "pair": [1, 2],
            "nested": {"x": [1.5, None, True]},
            "nul\x00key": "a\x00b",
        }
        assert (loaded.kind, loaded.step, loaded.attempt, loaded.at) == (
            RecordKind.SAGA_STARTED,
            None,
            0,
            1.25,
        )

    async def test_unserializable_data_is_refused_and_nothing_written(
        self, store: SagaStore
    ) -> None:
        """Unserializable data is refused and nothing written."""
        await store.create("s1", _first(), owner="w1", lease=10)
        bad = SagaRecord(RecordKind.STEP_COMPLETED, "reserve", 1, data={"x": object()})
        with pytest.raises(SerializationError):
            await store.append("s1", [bad], expected_version=2, fencing_token=1)
        with pytest.raises(SerializationError):
            await store.create("s2", [bad], owner="w1", lease=10)
        assert (await store.load("s1")).version == 2
        with pytest.raises(SagaNotFoundError):
            await store.load("s2")

    # -- append ----------------------------------------------------------------------

    async def test_append_returns_new_version(self, store: SagaStore) -> None:
        """Append returns new version."""
        await store.create("s1", _first(), owner="w1", lease=10)
        batch = [_step(RecordKind.STEP_COMPLETED), _step(RecordKind.STEP_STARTED, "charge")]
        assert await store.append("s1", batch, expected_version=2, fencing_token=1) == 4
        log = await store.load("s1")
        assert [_json(r) for r in log.records] == [_json(r) for r in [*_first(), *batch]]

    async def test_append_nothing_checks_and_returns_version(self, store: SagaStore) -> None:
        """Append nothing checks and returns version."""
        await store.create("s1", _first(), owner="w1", lease=10)
        assert await store.append("s1", [], expected_version=2, fencing_token=1) == 2
        with pytest.raises(ConcurrencyError):
            await store.append("s1", [], expected_version=1, fencing_token=1)

    @pytest.mark.parametrize("expected", [0, 1, 3, 10])
    async def test_append_at_wrong_version_raises_and_writes_nothing(
        self, store: SagaStore, expected: int
    ) -> None:
        """Append at wrong version raises and writes nothing."""
        await store.create("s1", _first(), owner="w1", lease=10)
        with pytest.raises(ConcurrencyError) as caught:
            await store.append(
                "s1", [_step(RecordKind.STEP_COMPLETED)], expected_version=expected, fencing_token=1
            )
        assert not isinstance(caught.value, FencedError)
        assert (caught.value.expected_version, caught.value.actual_version) == (expected, 2)
        assert (await store.load("s1")).version == 2

    async def test_status_follows_the_records(self, store: SagaStore) -> None:
        """Status follows the records."""
        await store.create("s1", _first(), owner="w1", lease=10)
        steps = [
            ([_step(RecordKind.STEP_FAILED)], SagaStatus.RUNNING),
            ([SagaRecord(RecordKind.SAGA_COMPENSATING)], SagaStatus.COMPENSATING),
            ([SagaRecord(RecordKind.SAGA_FAILED)], SagaStatus.FAILED),
            ([SagaRecord(RecordKind.SAGA_RESUMED, data={"phase": "forward"})], SagaStatus.RUNNING),
            ([SagaRecord(RecordKind.SAGA_COMPLETED)], SagaStatus.COMPLETED),
        ]
        version = 2
        for batch, status in steps:
            version = await store.append("s1", batch, expected_version=version, fencing_token=1)
            assert (await store.load("s1")).status is status

    # -- fencing ---------------------------------------------------------------------

    async def test_stale_writer_is_fenced_after_another_claim(
        self, store: SagaStore, clock: FakeClock
    ) -> None:
        """Stale writer is fenced after another claim."""
        await store.create("s1", _first(), owner="w1", lease=10)
        await clock.advance(11)
        (claim,) = await store.claim(owner="w2", lease=10, limit=5)
        assert claim.fencing_token == 2
        with pytest.raises(FencedError) as caught:
            await store.append(
                "s1", [_step(RecordKind.STEP_COMPLETED)], expected_version=2, fencing_token=1
            )
        assert isinstance(caught.value, ConcurrencyError)
        assert (caught.value.fencing_token, caught.value.current_token) == (1, 2)
        assert (
            await store.append(
                "s1", [_step(RecordKind.STEP_COMPLETED)], expected_version=2, fencing_token=2
            )
            == 3
        )

    async def test_fencing_is_checked_before_the_version(self, store: SagaStore) -> None:
        """Fencing is checked before the version."""
        await store.create("s1", _first(), owner="w1", lease=10)
        with pytest.raises(FencedError):
            await store.append(
                "s1", [_step(RecordKind.STEP_COMPLETED)], expected_version=0, fencing_token=7
            )

    # -- claim -----------------------------------------------------------------------

    async def test_claim_takes_only_lapsed_unfinished_sagas(
        self, store: SagaStore, clock: FakeClock
    ) -> None:
        """Claim takes only lapsed unfinished sagas."""
        await store.create("live", _first(), owner="w1", lease=100)
        await store.create("lapsed", _first(), owner="w1", lease=5)
        for saga_id, end in [
            ("done", RecordKind.SAGA_COMPLETED),
            ("undone", RecordKind.SAGA_COMPENSATED),
            ("parked", RecordKind.SAGA_FAILED),
        ]:
            await store.create(saga_id, _first(), owner="w1", lease=5)
            await store.append(saga_id, [SagaRecord(end)], expected_version=2, fencing_token=1)
        await store.create("undoing", _first(), owner="w1", lease=5)
        await store.append(
            "undoing",
            [SagaRecord(RecordKind.SAGA_COMPENSATING)],
            expected_version=2,
            fencing_token=1,
        )
        assert await store.claim(owner="w2", lease=10, limit=10) == []
        await clock.advance(5)  # a lease lapses at its expiry time exactly
        claims = await store.claim(owner="w2", lease=10, limit=10)
        assert [(c.saga_id, c.fencing_token) for c in claims] == [("lapsed", 2), ("undoing", 2)]
        assert all(c.lease_expires == clock.now() + 10 for c in claims)
        log = await store.load("lapsed")
        assert (log.owner, log.fencing_token, log.lease_expires) == ("w2", 2, clock.now() + 10)
        assert await store.claim(owner="w3", lease=10, limit=10) == []

    async def test_claim_takes_oldest_update_first_up_to_limit(
        self, store: SagaStore, clock: FakeClock
    ) -> None:
        """Claim takes oldest update first up to limit."""
        for saga_id in ["a", "b", "c", "d"]:
            await store.create(saga_id, _first(), owner="w1", lease=1)
        # Touch "a" and "c": they become the most recently updated.
        for saga_id in ["c", "a"]:
            await store.append(
                saga_id, [_step(RecordKind.STEP_COMPLETED)], expected_version=2, fencing_token=1
            )
        await clock.advance(2)
        first = await store.claim(owner="w2", lease=10, limit=3)
        assert [c.saga_id for c in first] == ["b", "d", "c"]
        await clock.advance(20)
        # Claims do not count as updates: the order stays by last append.
        again = await store.claim(owner="w3", lease=10, limit=10)
        assert [(c.saga_id, c.fencing_token) for c in again] == [
            ("b", 3),
            ("d", 3),
            ("c", 3),
            ("a", 2),
        ]

    async def test_concurrent_claimers_never_share_a_saga(
        self, store: SagaStore, clock: FakeClock
    ) -> None:
        """Concurrent claimers never share a saga."""
        ids = [f"s{i:02d}" for i in range(24)]
        for saga_id in ids:
            await store.create(saga_id, _first(), owner="w0", lease=1)
        await clock.advance(2)
        results = await asyncio.gather(
            *(store.claim(owner=f"w{i}", lease=30, limit=8) for i in range(1, 7))
        )
        claimed = [c.saga_id for claims in results for c in claims]
        assert len(claimed) == len(set(claimed))
        assert set(claimed) <= set(ids)
        rest = await store.claim(owner="w9", lease=30, limit=100)
        assert sorted(claimed + [c.saga_id for c in rest]) == ids
        for owner_index, claims in enumerate(results, start=1):
            for c in claims:
                log = await store.load(c.saga_id)
                assert (log.owner, log.fencing_token) == (f"w{owner_index}", c.fencing_token)

    # -- acquire, renew, release -----------------------------------------------------

    async def test_acquire_respects_live_leases(self, store: SagaStore, clock: FakeClock) -> None:
        """Acquire respects live leases."""
        await store.create("s1", _first(), owner="w1", lease=10)
        with pytest.raises(ConcurrencyError) as caught:
            await store.acquire("s1", owner="w2", lease=10)
        assert not isinstance(caught.value, FencedError)
        again = await store.acquire("s1", owner="w1", lease=10)
        assert again.fencing_token == 2
        await clock.advance(10)
        taken = await store.acquire("s1", owner="w2", lease=7)
        assert taken == Claim("s1", 3, clock.now() + 7)
        assert (await store.load("s1")).owner == "w2"

    async def test_acquire_takes_a_parked_saga(self, store: SagaStore) -> None:
        """Acquire takes a parked saga."""
        await store.create("s1", _first(), owner="w1", lease=10)
        await store.append(
            "s1", [SagaRecord(RecordKind.SAGA_FAILED)], expected_version=2, fencing_token=1
        )
        await store.release("s1", fencing_token=1)
        claim = await store.acquire("s1", owner="operator", lease=10)
        assert claim.fencing_token == 2
        assert (await store.load("s1")).status is SagaStatus.FAILED

    async def test_renew_extends_only_current_leases_of_the_owner(
        self, store: SagaStore, clock: FakeClock
    ) -> None:
        """Renew extends only current leases of the owner."""
        a = await store.create("a", _first(), owner="w1", lease=10)
        b = await store.create("b", _first(), owner="w1", lease=10)
        c = await store.create("c", _first(), owner="w2", lease=10)
        await clock.advance(11)
        b2 = await store.acquire("b", owner="w3", lease=10)
        renewed = await store.renew(owner="w1", claims=[a, b, c], lease=20)
        assert renewed == [Claim("a", 1, clock.now() + 20)]
        assert (await store.load("a")).lease_expires == clock.now() + 20
        assert (await store.load("b")).lease_expires == b2.lease_expires
        assert await store.renew(owner="w1", claims=[Claim("zz", 1, 0.0)], lease=5) == []

    async def test_release_frees_the_saga_and_ignores_stale_tokens(
        self, store: SagaStore, clock: FakeClock
    ) -> None:
        """Release frees the saga and ignores stale tokens."""
        await store.create("s1", _first(), owner="w1", lease=100)
        await store.release("s1", fencing_token=5)  # stale: ignored
        assert (await store.load("s1")).owner == "w1"
        await store.release("s1", fencing_token=1)
        log = await store.load("s1")
        assert (log.owner, log.lease_expires, log.fencing_token) == (None, None, 1)
        # A released saga is claimable at once, with a larger token.
        (claim,) = await store.claim(owner="w2", lease=10, limit=1)
        assert (claim.saga_id, claim.fencing_token) == ("s1", 2)
        with pytest.raises(FencedError):
            await store.append(
                "s1", [_step(RecordKind.STEP_COMPLETED)], expected_version=2, fencing_token=1
            )
        await store.release("missing", fencing_token=1)  # nothing to release: no error

    # -- listing ---------------------------------------------------------------------

    async def test_list_sagas_most_recent_first_with_filter_and_limit(
        self, store: SagaStore
    ) -> None:
        """List sagas most recent first with filter and limit."""
        await store.create("a", _first("alpha", at=1.0), owner="w1", lease=10)
        await store.create("b", _first("beta", at=2.0), owner="w1", lease=10)
        await store.create("c", _first("gamma", at=3.0), owner="w2", lease=10)
        done = SagaRecord(RecordKind.SAGA_COMPLETED, at=9.5)
        await store.append("a", [done], expected_version=2, fencing_token=1)
        listed = await store.list_sagas()
        assert [s.saga_id for s in listed] == ["a", "c", "b"]
        top = listed[0]
        assert (top.saga_name, top.status, top.version, top.updated_at, top.owner) == (
            "alpha",
            SagaStatus.COMPLETED,
            3,
            9.5,
            "w1",
        )
        running = await store.list_sagas(status=SagaStatus.RUNNING)
        assert [s.saga_id for s in running] == ["c", "b"]
        assert [s.saga_id for s in await store.list_sagas(limit=1)] == ["a"]
        assert await store.list_sagas(status=SagaStatus.FAILED) == []

    # -- concurrency -----------------------------------------------------------------

    async def test_concurrent_appends_at_one_version_exactly_one_wins(
        self, store: SagaStore
    ) -> None:
        """Concurrent appends at one version exactly one wins."""
        await store.create("s1", _first(), owner="w1", lease=10)

        async def write(i: int) -> int | BaseException:
            record = _step(RecordKind.STEP_COMPLETED, step=f"writer{i}")
            try:
                return await store.append("s1", [record], expected_version=2, fencing_token=1)
            except ConcurrencyError as exc:
                return exc

        outcomes = await asyncio.gather(*(write(i) for i in range(16)))
        wins = [o for o in outcomes if o == 3]
        assert len(wins) == 1
        assert all(isinstance(o, ConcurrencyError) for o in outcomes if o != 3)
        assert (await store.load("s1")).version == 3

    async def test_concurrent_creates_of_one_id_exactly_one_wins(self, store: SagaStore) -> None:
        """Concurrent creates of one id exactly one wins."""

        async def create(i: int) -> Claim | BaseException:
            try:
                return await store.create("s1", _first(f"n{i}"), owner=f"w{i}", lease=10)
            except SagaAlreadyExistsError as exc:
                return exc

        outcomes = await asyncio.gather(*(create(i) for i in range(8)))
        assert sum(isinstance(o, Claim) for o in outcomes) == 1
        assert (await store.load("s1")).version == 2

    async def test_many_sagas_written_concurrently_are_all_kept(self, store: SagaStore) -> None:
        """Many sagas written concurrently are all kept."""

        async def run(i: int) -> None:
            claim = await store.create(f"s{i}", _first(), owner="w", lease=10)
            version = 2
            for step in ("a", "b", "c"):
                batch = [_step(RecordKind.STEP_COMPLETED, step), _step(RecordKind.STEP_STARTED)]
                version = await store.append(
                    f"s{i}", batch, expected_version=version, fencing_token=claim.fencing_token
                )

        await asyncio.gather(*(run(i) for i in range(40)))
        for i in range(40):
            assert (await store.load(f"s{i}")).version == 8

    # -- close -----------------------------------------------------------------------

    async def test_close_is_idempotent_and_later_calls_fail(self, store: SagaStore) -> None:
        """Close is idempotent and later calls fail."""
        await store.create("s1", _first(), owner="w1", lease=10)
        await store.close()
        await store.close()
        with pytest.raises(StoreError):
            await store.load("s1")
        with pytest.raises(StoreError):
            await store.create("s2", _first(), owner="w1", lease=10)

    async def test_close_waits_for_calls_in_flight(self, store: SagaStore) -> None:
        """Close waits for calls in flight."""
        writes = [
            asyncio.ensure_future(store.create(f"s{i}", _first(), owner="w", lease=10))
            for i in range(10)
        ]
        await asyncio.sleep(0)
        await store.close()
        claims = await asyncio.gather(*writes)
        assert [c.fencing_token for c in claims] == [1] * 10

    # -- the model -------------------------------------------------------------------

    def test_behaves_like_a_list_model(self) -> None:
        """Random sequences of calls give the same answers as a plain Python model."""
        contract = self

        class Machine(_StoreMachine):
            def __init__(self) -> None:
                super().__init__(contract)

        run_state_machine_as_test(
            Machine,
            settings=settings(
                max_examples=self.stateful_examples,
                stateful_step_count=self.stateful_steps,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            ),
        )


# -- stateful model ------------------------------------------------------------------


@dataclass
class _ModelSaga:
    records: list[dict[str, Any]]
    status: SagaStatus
    name: str
    updated_at: float
    touched: int
    token: int = 1
    owner: str | None = None
    expires: float | None = None


_IDS = st.sampled_from(["s0", "s1", "s2", "s3"])
_OWNERS = st.sampled_from(["w1", "w2"])
_LEASES = st.sampled_from([1.0, 2.5, 5.0])
_DELTAS = st.sampled_from([0, 0, 0, -1, 1])
_JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=6)
)
_JSON = st.recursive(
    _JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
_RECORDS = st.builds(
    SagaRecord,
    kind=st.sampled_from(list(RecordKind)),
    step=st.none() | st.sampled_from(["reserve", "charge", "ship"]),
    attempt=st.integers(0, 3),
    at=st.floats(0, 2e9, allow_nan=False),
    data=st.none() | st.dictionaries(st.text(max_size=4), _JSON, max_size=3),
)


class _StoreMachine(RuleBasedStateMachine):
    """Drives a real store and a dict-of-lists model with the same calls."""

    def __init__(self, contract: SagaStoreContract) -> None:
        super().__init__()
        self.contract = contract
        self.runner = asyncio.Runner()
        self.clock = FakeClock(start=_START)
        self.store = self.runner.run(contract.make_store(self.clock))
        self.model: dict[str, _ModelSaga] = {}
        self.touch = 0

    def teardown(self) -> None:
        try:
            self.runner.run(self.contract.dispose_store(self.store))
        finally:
            self.runner.close()

    def _run(self, coro: Any) -> Any:
        return self.runner.run(coro)

    def _expect(self, error: type[BaseException], coro: Any) -> BaseException:
        with pytest.raises(error) as caught:
            self._run(coro)
        return caught.value

    def _bump(self) -> int:
        self.touch += 1
        return self.touch

    @initialize(records=st.lists(_RECORDS, min_size=1, max_size=2), lease=_LEASES)
    def two_sagas_of_one_owner(self, records: list[SagaRecord], lease: float) -> None:
        # Start from a state where leases, renewals and claims have work to do.
        self.create("s0", records, "w1", lease)
        self.create("s1", [_started()], "w1", lease)

    @rule(
        saga_id=_IDS,
        records=st.lists(_RECORDS, min_size=1, max_size=3),
        owner=_OWNERS,
        lease=_LEASES,
    )
    def create(self, saga_id: str, records: list[SagaRecord], owner: str, lease: float) -> None:
        call = self.store.create(saga_id, records, owner=owner, lease=lease)
        if saga_id in self.model:
            self._expect(SagaAlreadyExistsError, call)
            return
        claim = self._run(call)
        expires = self.clock.now() + lease
        assert claim == Claim(saga_id, 1, expires)
        self.model[saga_id] = _ModelSaga(
            records=[_json(r) for r in records],
            status=status_after(None, records),
            name=saga_name_of(records),
            updated_at=float(records[-1].at),
            touched=self._bump(),
            owner=owner,
            expires=expires,
        )

    @rule(
        saga_id=_IDS,
        records=st.lists(_RECORDS, max_size=3),
        version_delta=_DELTAS,
        token_delta=_DELTAS,
    )
    def append(
        self, saga_id: str, records: list[SagaRecord], version_delta: int, token_delta: int
    ) -> None:
        saga = self.model.get(saga_id)
        version = len(saga.records) if saga else 0
        token = (saga.token if saga else 1) + token_delta
        call = self.store.append(
            saga_id, records, expected_version=version + version_delta, fencing_token=token
        )
        if saga is None:
            self._expect(SagaNotFoundError, call)
        elif token_delta:
            self._expect(FencedError, call)
        elif version_delta:
            error = self._expect(ConcurrencyError, call)
            assert not isinstance(error, FencedError)
        else:
            assert self._run(call) == version + len(records)
            if records:
                saga.records.extend(_json(r) for r in records)
                saga.status = status_after(saga.status, records)
                saga.updated_at = float(records[-1].at)
                saga.touched = self._bump()

    @rule(saga_id=_IDS)
    def load(self, saga_id: str) -> None:
        saga = self.model.get(saga_id)
        if saga is None:
            self._expect(SagaNotFoundError, self.store.load(saga_id))
            return
        log = self._run(self.store.load(saga_id))
        assert [_json(r) for r in log.records] == saga.records
        assert log.status is saga.status
        assert (log.fencing_token, log.owner, log.lease_expires) == (
            saga.token,
            saga.owner,
            saga.expires,
        )

    @rule(owner=_OWNERS, lease=_LEASES, limit=st.integers(1, 3))
    def claim(self, owner: str, lease: float, limit: int) -> None:
        now = self.clock.now()
        lapsed = sorted(
            (
                (saga.touched, saga_id)
                for saga_id, saga in self.model.items()
                if saga.status in (SagaStatus.RUNNING, SagaStatus.COMPENSATING)
                and (saga.expires is None or saga.expires <= now)
            ),
        )[:limit]
        expected = [self._grant(saga_id, owner, now + lease) for _, saga_id in lapsed]
        assert list(self._run(self.store.claim(owner=owner, lease=lease, limit=limit))) == expected

    @rule(saga_id=_IDS, owner=_OWNERS, lease=_LEASES)
    def acquire(self, saga_id: str, owner: str, lease: float) -> None:
        saga = self.model.get(saga_id)
        call = self.store.acquire(saga_id, owner=owner, lease=lease)
        now = self.clock.now()
        if saga is None:
            self._expect(SagaNotFoundError, call)
        elif saga.expires is not None and saga.expires > now and saga.owner != owner:
            self._expect(ConcurrencyError, call)
        else:
            assert self._run(call) == self._grant(saga_id, owner, now + lease)

    @rule(
        owner=_OWNERS,
        mine=st.booleans(),
        picks=st.lists(st.tuples(_IDS, _DELTAS), max_size=3),
        lease=_LEASES,
    )
    def renew(self, owner: str, mine: bool, picks: list[tuple[str, int]], lease: float) -> None:
        # ``mine``: renew every lease the model says the owner holds, as a heartbeat does.
        held = [(i, 0) for i, saga in self.model.items() if saga.owner == owner] if mine else []
        claims = [
            Claim(saga_id, (self.model[saga_id].token if saga_id in self.model else 1) + delta, 0.0)
            for saga_id, delta in [*held, *picks]
        ]
        expires = self.clock.now() + lease
        expected = []
        for claim in claims:
            saga = self.model.get(claim.saga_id)
            if saga and saga.token == claim.fencing_token and saga.owner == owner:
                saga.expires = expires
                expected.append(Claim(claim.saga_id, claim.fencing_token, expires))
        assert (
            list(self._run(self.store.renew(owner=owner, claims=claims, lease=lease))) == expected
        )

    @rule(saga_id=_IDS, token_delta=_DELTAS)
    def release(self, saga_id: str, token_delta: int) -> None:
        saga = self.model.get(saga_id)
        token = (saga.token if saga else 1) + token_delta
        self._run(self.store.release(saga_id, fencing_token=token))
        if saga and token == saga.token:
            saga.owner = None
            saga.expires = None

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 6.0]))
    def advance(self, seconds: float) -> None:
        self._run(self.clock.advance(seconds))

    @rule(status=st.none() | st.sampled_from(list(SagaStatus)), limit=st.integers(1, 5))
    def list_sagas(self, status: SagaStatus | None, limit: int) -> None:
        chosen = sorted(
            (
                (saga_id, saga)
                for saga_id, saga in self.model.items()
                if status is None or saga.status is status
            ),
            key=lambda item: item[1].touched,
            reverse=True,
        )[:limit]
        listed = self._run(self.store.list_sagas(status=status, limit=limit))
        assert [
            (s.saga_id, s.saga_name, s.status, s.version, s.updated_at, s.owner) for s in listed
        ] == [
            (saga_id, saga.name, saga.status, len(saga.records), saga.updated_at, saga.owner)
            for saga_id, saga in chosen
        ]

    def _grant(self, saga_id: str, owner: str, expires: float) -> Claim:
        saga = self.model[saga_id]
        saga.token += 1
        saga.owner = owner
        saga.expires = expires
        return Claim(saga_id, saga.token, expires)
