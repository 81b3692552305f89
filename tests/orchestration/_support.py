"""Step actions and log checks shared by the orchestration tests."""

from __future__ import annotations

from sagaflow import RecordKind, SagaStatus


async def nothing(ctx):
    """A step action or compensation that does nothing."""
    return


def raising(kind: type[Exception], message: str):
    """A step action that raises ``kind(message)`` on every attempt."""

    async def action(ctx):
        raise kind(message)

    return action


async def turned_back_on(store, saga_id):
    """Check the saga ended COMPENSATED; return the error it turned back on."""
    log = await store.load(saga_id)
    assert log.status is SagaStatus.COMPENSATED
    return next(r for r in log.records if r.kind is RecordKind.SAGA_COMPENSATING).data["error"]
