"""Small shared definitions for the testing-kit tests."""

from pydantic import BaseModel

from sagaflow import Saga, Step, StepKind


class State(BaseModel):
    n: int = 0


async def act(ctx):
    return None


def sample_saga() -> Saga[State]:
    return Saga(
        "sample",
        state=State,
        steps=[
            Step("reserve", act, compensate=act, timeout=1),
            Step("no_timeout", act, compensate=act),
            Step("ship", act, kind=StepKind.PIVOT, timeout=1),
            Step("notify", act, kind=StepKind.RETRIABLE, timeout=1),
        ],
    )
