"""`StepContext`: what a step's action or compensation is told about its run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

__all__ = ["StepContext"]

S = TypeVar("S", bound=BaseModel)


@dataclass(slots=True)
class StepContext(Generic[S]):
    """The run of one attempt of an action or compensation. Treat it as read-only.

    Attributes:
        saga_id: The saga instance.
        saga_name: The saga definition's name.
        step: The step's name.
        attempt: 1 on the first attempt, then 2, 3, ...
        state: The saga state when the attempt began (immutable: return updates).
        compensating: True when this is the step's compensation.
    """

    saga_id: str
    saga_name: str
    step: str
    attempt: int
    state: S
    compensating: bool = False

    @property
    def idempotency_key(self) -> str:
        """``saga_id:step``: the same on every attempt, so services can deduplicate.

        A compensation gets ``saga_id:step:compensate``.
        """
        key = f"{self.saga_id}:{self.step}"
        return f"{key}:compensate" if self.compensating else key
