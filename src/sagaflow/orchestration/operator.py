"""Operator actions on parked sagas, written to the log so any worker can act on them.

A saga is *parked* (status FAILED) when a compensation failed beyond its retry
policy, or a step after the pivot did. An operator can then:

* **resume** it: the failed compensation (or forward step) is tried again;
* **skip** the failed compensation, with a reason that stays in the log, and let
  the saga compensate the rest.

These functions only write records (and release the lease), so the CLI can use
them without the saga's code: the next worker that claims the saga continues it.
`Orchestrator.resume` / `Orchestrator.skip` do the same and continue at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from sagaflow.clock import Clock, SystemClock
from sagaflow.errors import SagaStateError
from sagaflow.orchestration.records import Claim, RecordKind, SagaLog, SagaRecord, SagaStatus
from sagaflow.orchestration.store import SagaStore

__all__ = ["ParkedSaga", "inspect_parked", "resume_parked"]


@dataclass(frozen=True, slots=True)
class ParkedSaga:
    """Where a parked saga stopped.

    Attributes:
        saga_id: The saga.
        phase: ``"compensating"`` if a compensation failed, ``"forward"`` if a step
            after the pivot did.
        step: The step whose action or compensation failed.
        error: The final error, as data.
    """

    saga_id: str
    phase: str
    step: str
    error: dict[str, str]


def inspect_parked(log: SagaLog) -> ParkedSaga:
    """Describe where a parked saga stopped.

    Raises:
        SagaStateError: The saga is not parked (its status is not FAILED).
    """
    if log.status is not SagaStatus.FAILED:
        raise SagaStateError(
            f"saga {log.saga_id!r} is {log.status.value}, not parked (failed)",
            saga_id=log.saga_id,
            status=log.status.value,
        )
    phase = "forward"
    error: dict[str, str] = {}
    for record in log.records:
        if record.kind is RecordKind.SAGA_COMPENSATING:
            phase = "compensating"
        elif record.kind is RecordKind.SAGA_RESUMED:
            phase = str((record.data or {}).get("phase", phase))
        elif record.kind is RecordKind.SAGA_FAILED:
            error = dict((record.data or {}).get("error", {}))
    return ParkedSaga(log.saga_id, phase, error.get("step", ""), error)


async def resume_parked(
    store: SagaStore,
    saga_id: str,
    *,
    owner: str,
    lease: float,
    skip_reason: str | None = None,
    release: bool = True,
    clock: Clock | None = None,
) -> tuple[Claim, SagaLog]:
    """Mark a parked saga to continue; optionally skip its failed compensation.

    Args:
        store: The saga store.
        saga_id: The parked saga.
        owner: Who does it (recorded as the lease owner).
        lease: Lease length while writing.
        skip_reason: Skip the failed compensation, recording this reason. Only for
            sagas parked while compensating.
        release: Release the lease afterwards so any worker may claim the saga.
        clock: Time source for the records.

    Returns:
        The claim used and the log after the change.

    Raises:
        SagaStateError: The saga is not parked, or ``skip_reason`` was given for a
            saga parked going forward (nothing to skip: resume it instead).
    """
    clock = clock or SystemClock()
    inspect_parked(await store.load(saga_id))  # refuse early, before taking any lease
    claim = await store.acquire(saga_id, owner=owner, lease=lease)
    done = False
    try:
        log = await store.load(saga_id)
        parked = inspect_parked(log)
        now = clock.now()
        records: list[SagaRecord] = []
        if skip_reason is not None:
            if parked.phase != "compensating":
                raise SagaStateError(
                    f"saga {saga_id!r} is parked going forward at {parked.step!r}; "
                    "there is no compensation to skip: resume it",
                    saga_id=saga_id,
                    status=log.status.value,
                )
            records.append(
                SagaRecord(
                    RecordKind.COMPENSATION_SKIPPED,
                    parked.step,
                    0,
                    now,
                    {"reason": skip_reason, "by": owner},
                )
            )
        action = "skip" if skip_reason is not None else "retry"
        records.append(
            SagaRecord(
                RecordKind.SAGA_RESUMED,
                None,
                0,
                now,
                {"phase": parked.phase, "action": action, "by": owner},
            )
        )
        await store.append(
            saga_id, records, expected_version=log.version, fencing_token=claim.fencing_token
        )
        log = await store.load(saga_id)
        done = True
    finally:
        if release or not done:
            await store.release(saga_id, fencing_token=claim.fencing_token)
    return claim, log
