import pytest
from pydantic import BaseModel

from sagaflow import Parallel, Saga, Step, StepKind
from sagaflow.errors import ConfigurationError


class State(BaseModel):
    n: int = 0


async def act(ctx):
    return None


async def undo(ctx):
    return None


def comp(name):
    return Step(name, act, compensate=undo)


def pivot(name):
    return Step(name, act, kind=StepKind.PIVOT)


def retriable(name):
    return Step(name, act, kind=StepKind.RETRIABLE)


def test_valid_saga_with_every_kind():
    saga = Saga(
        "order",
        state=State,
        version=2,
        steps=[comp("a"), Parallel("both", comp("b"), comp("c")), pivot("d"), retriable("e")],
    )
    assert [s.name for s in saga.steps()] == ["a", "b", "c", "d", "e"]
    assert saga.key == "order@2"
    assert len(saga.stages) == 4


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        ([comp("a"), comp("a")], "duplicate step name 'a'"),
        ([pivot("p"), comp("a")], "comes after the pivot 'p'"),
        ([retriable("r"), comp("a")], "after a retriable step"),
        ([pivot("p"), pivot("q")], "two pivots"),
        ([retriable("r"), pivot("p")], "pivot 'p' comes after a retriable step"),
        ([], "at least one step"),
        (["not a step"], "must be Step or Parallel"),
    ],
)
def test_invalid_orders_are_refused_with_a_fix(steps, message):
    with pytest.raises(ConfigurationError, match=message):
        Saga("s", state=State, steps=steps)


def test_compensatable_step_needs_a_compensation():
    with pytest.raises(ConfigurationError, match="has no compensation"):
        Step("a", act)


def test_pivot_and_retriable_refuse_a_compensation():
    with pytest.raises(ConfigurationError, match="never compensated"):
        Step("a", act, compensate=undo, kind=StepKind.PIVOT)
    with pytest.raises(ConfigurationError, match="never compensated"):
        Step("a", act, compensate=undo, kind=StepKind.RETRIABLE)


@pytest.mark.parametrize("name", ["", "1abc", "has space", "dot.ted", "a:b", "x" * 65, "ü"])
def test_bad_step_names(name):
    with pytest.raises(ConfigurationError, match="invalid step name"):
        Step(name, act, compensate=undo)


@pytest.mark.parametrize("name", ["", "bad name", "a.b"])
def test_bad_saga_names(name):
    with pytest.raises(ConfigurationError, match="invalid saga name"):
        Saga(name, state=State, steps=[comp("a")])


def test_bad_saga_options():
    with pytest.raises(ConfigurationError, match="pydantic model"):
        Saga("s", state=dict, steps=[comp("a")])  # type: ignore[type-var]
    with pytest.raises(ConfigurationError, match="version"):
        Saga("s", state=State, steps=[comp("a")], version=0)
    with pytest.raises(ConfigurationError, match="deadline"):
        Saga("s", state=State, steps=[comp("a")], deadline=0)


def test_bad_step_options():
    with pytest.raises(ConfigurationError, match="timeout must be > 0"):
        Step("a", act, compensate=undo, timeout=0)
    with pytest.raises(ConfigurationError, match="callable"):
        Step("a", "nope", compensate=undo)  # type: ignore[arg-type]


def test_parallel_group_rules():
    with pytest.raises(ConfigurationError, match="at least two branches"):
        Parallel("g", comp("a"))
    with pytest.raises(ConfigurationError, match="cannot be a branch"):
        Parallel("g", comp("a"), pivot("p"))
    with pytest.raises(ConfigurationError, match="mixes"):
        Parallel("g", comp("a"), retriable("r"))
    with pytest.raises(ConfigurationError, match="duplicate step name"):
        Saga("s", state=State, steps=[comp("a"), Parallel("g", comp("a"), comp("b"))])


def test_retry_defaults_follow_the_kind():
    saga = Saga("s", state=State, steps=[comp("a"), pivot("p"), retriable("r")])
    assert saga.plan("a").retry.max_attempts == 3
    assert saga.plan("r").retry.max_attempts is None
    with pytest.raises(ConfigurationError, match="no step 'zz'"):
        saga.plan("zz")
