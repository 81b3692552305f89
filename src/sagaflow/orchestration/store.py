"""The `SagaStore` protocol: where saga logs live.

Implementations: `sagaflow.stores.MemorySagaStore` (in-process),
`SQLiteSagaStore` and `PostgresSagaStore` (durable). All of them pass the store
contract suite in `sagaflow.testing` and raise the same errors for the same
situations, so code tested against the memory store means the same thing on
PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from sagaflow.orchestration.records import Claim, SagaLog, SagaRecord, SagaStatus, SagaSummary

__all__ = ["SagaStore"]


@runtime_checkable
class SagaStore(Protocol):
    """Append-only saga logs with optimistic concurrency, leases and fencing.

    Contract shared by every implementation:

    * **Atomic appends.** The records of one `append`/`create` call are stored
      all together or not at all, in order.
    * **Optimistic concurrency.** A saga's version is its record count. `append`
      succeeds only if ``expected_version`` equals the stored version; otherwise
      it raises `ConcurrencyError` and stores nothing.
    * **Leases and fencing.** Each saga has at most one owner at a time, holding
      a lease identified by a fencing token that only grows. `create` and
      `claim` grant a lease; a write that presents a token other than the current
      one raises `FencedError` (a subclass of `ConcurrencyError`).
    * **Durability.** When a write method returns, the records survive a crash of
      this process (and, for durable stores, of the machine, per the database's
      own guarantees).
    * **Errors.** Driver errors come out as `sagaflow.errors.StoreError`
      subclasses; a lost connection is `StoreUnavailableError`.
    * **Task safety.** Methods may be called concurrently from many tasks of one
      event loop.
    * **close()** is idempotent; it waits for calls in flight and then releases
      connections. Calls after ``close()`` raise `StoreError`.
    """

    async def create(
        self, saga_id: str, records: Sequence[SagaRecord], *, owner: str, lease: float
    ) -> Claim:
        """Create a saga whose log starts with ``records``, leased to ``owner``.

        Args:
            saga_id: The new instance's id.
            records: The first records (the first one is ``SAGA_STARTED``).
            owner: The creating worker's id.
            lease: Lease length in seconds.

        Returns:
            The lease, with fencing token 1.

        Raises:
            SagaAlreadyExistsError: A saga with this id exists already (nothing written).
        """
        ...

    async def append(
        self,
        saga_id: str,
        records: Sequence[SagaRecord],
        *,
        expected_version: int,
        fencing_token: int,
    ) -> int:
        """Append ``records`` to a saga's log atomically.

        Args:
            saga_id: The saga.
            records: The records to append, in order (at least one).
            expected_version: The version the caller last saw.
            fencing_token: The caller's lease token.

        Returns:
            The new version.

        Raises:
            SagaNotFoundError: No such saga.
            FencedError: ``fencing_token`` is not the current token.
            ConcurrencyError: ``expected_version`` is not the stored version.
        """
        ...

    async def load(self, saga_id: str) -> SagaLog:
        """Return a saga's whole log and bookkeeping.

        Raises:
            SagaNotFoundError: No such saga.
        """
        ...

    async def claim(self, *, owner: str, lease: float, limit: int) -> Sequence[Claim]:
        """Lease up to ``limit`` unfinished sagas whose lease has lapsed.

        Sagas that are RUNNING or COMPENSATING and not leased (or whose lease
        expired) are granted to ``owner``, oldest update first, each with a new,
        larger fencing token. Terminal and parked (FAILED) sagas are never claimed.
        Two concurrent callers never receive the same saga.
        """
        ...

    async def acquire(self, saga_id: str, *, owner: str, lease: float) -> Claim:
        """Lease one saga, whatever its status, if nobody else holds a live lease.

        Used by operators (retry, skip, resume a parked saga) and to recover one
        saga by id. The new claim has a new, larger fencing token.

        Raises:
            SagaNotFoundError: No such saga.
            ConcurrencyError: Another owner holds a lease that has not expired.
        """
        ...

    async def renew(self, *, owner: str, claims: Sequence[Claim], lease: float) -> Sequence[Claim]:
        """Extend the leases ``owner`` still holds; return the renewed claims.

        A claim whose token is no longer current is left out of the result: the
        caller has lost that saga and must stop working on it.
        """
        ...

    async def release(self, saga_id: str, *, fencing_token: int) -> None:
        """Give up a lease early (for example after the saga finished).

        A stale token is ignored: there is nothing left to release.
        """
        ...

    async def list_sagas(
        self, *, status: SagaStatus | None = None, limit: int = 100
    ) -> Sequence[SagaSummary]:
        """List sagas, most recently updated first, optionally only those in ``status``."""
        ...

    async def close(self) -> None:
        """Release resources; idempotent."""
        ...
