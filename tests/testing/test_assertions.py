import pytest
from pydantic import BaseModel

import sagaflow.testing as kit
from sagaflow import MemorySagaStore, Orchestrator, RetryPolicy, Saga, SagaStatus, Step
from sagaflow.testing import Fault, assert_compensated_in_reverse, assert_saga, inject_faults


class State(BaseModel):
    n: int = 0


async def act(ctx):
    return None


SAGA = Saga(
    "a",
    state=State,
    retry=RetryPolicy.no_retry(),
    steps=[Step(n, act, compensate=act) for n in ("one", "two", "three")],
)


async def test_assert_saga_passes_and_fails_with_the_timeline():
    store = MemorySagaStore()
    saga = inject_faults(SAGA, steps={"three": Fault.raise_on(1)})
    result = await Orchestrator(store).run(saga, State(), saga_id="s")
    assert_saga(
        result,
        status=SagaStatus.COMPENSATED,
        completed=["one", "two"],
        compensated=["two", "one"],
        error_type="InjectedFault",
        error_step="three",
    )
    assert_saga(await store.load("s"), status=SagaStatus.COMPENSATED, error_step="three")
    assert_compensated_in_reverse(result)
    with pytest.raises(AssertionError, match=r"compensated steps are \['two', 'one'\]") as info:
        assert_saga(result, compensated=["one", "two"])
    assert "saga s: COMPENSATED" in str(info.value)
    with pytest.raises(AssertionError, match="status is compensated, expected completed"):
        assert_saga(result, status=SagaStatus.COMPLETED)
    with pytest.raises(AssertionError, match=r"steps \['three'\] started"):
        assert_saga(result, not_started=["three"])
    with pytest.raises(AssertionError, match="error step is 'three'"):
        assert_saga(result, error_step="two")


def test_the_kit_loads_hypothesis_parts_lazily():
    import subprocess
    import sys

    code = "import sys, sagaflow.testing as t; t.FakeClock; print('hypothesis' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
    assert kit.failure_schedules is not None
    assert sorted(kit.__all__) == sorted(set(kit.__all__))
    for name in kit.__all__:
        assert getattr(kit, name) is not None
