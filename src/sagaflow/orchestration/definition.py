"""Saga definitions: named, versioned sequences of steps, checked when built.

A `Saga` is a definition, made once and run many times by an `Orchestrator`.
Its steps come in three kinds (`StepKind`):

* **compensatable**: can be undone by its compensation if a later step fails;
* **pivot**: the point of no return; once it completes the saga only goes forward;
* **retriable**: after the pivot; retried until it succeeds, never compensated.

So a valid saga reads ``compensatable* [pivot] retriable*``. Consecutive steps can
be grouped into a `Parallel` stage whose branches run concurrently.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

from pydantic import BaseModel

from sagaflow.errors import ConfigurationError
from sagaflow.orchestration.context import StepContext
from sagaflow.retry import RetryPolicy

__all__ = [
    "DEFAULT_COMPENSATION_RETRY",
    "DEFAULT_STEP_RETRY",
    "Parallel",
    "Saga",
    "Step",
    "StepFunction",
    "StepKind",
    "StepResult",
]

S = TypeVar("S", bound=BaseModel)

StepResult: TypeAlias = Mapping[str, Any] | BaseModel | None
"""What an action or compensation returns: state updates, a whole new state, or nothing."""

StepFunction: TypeAlias = Callable[[StepContext[Any]], Awaitable[StepResult] | StepResult]
"""An action or compensation: sync or async, taking a `StepContext`."""

DEFAULT_STEP_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.1, max_delay=5.0)
"""Default retry policy for compensatable and pivot steps."""

DEFAULT_RETRIABLE_RETRY = RetryPolicy.forever(initial_delay=0.1, max_delay=30.0)
"""Default retry policy for retriable steps: until they succeed."""

DEFAULT_COMPENSATION_RETRY = RetryPolicy(max_attempts=5, initial_delay=0.1, max_delay=10.0)
"""Default retry policy for compensations."""

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def check_name(kind: str, name: object) -> str:
    """Validate a saga or step name: safe inside store keys, subjects and routing keys."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigurationError(
            f"invalid {kind} name {name!r}: use 1-64 characters, letters, digits, '_' or '-', "
            "starting with a letter"
        )
    return name


class StepKind(enum.StrEnum):
    """How a step behaves when the saga has to turn back."""

    COMPENSATABLE = "compensatable"
    """Undone by its compensation when a later step fails."""
    PIVOT = "pivot"
    """The point of no return: never compensated; steps after it only go forward."""
    RETRIABLE = "retriable"
    """After the pivot: retried until it succeeds, never compensated."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a saga: an action, maybe its compensation, and how to run them.

    An action receives a `StepContext` and returns state updates (a mapping of
    field names to values), a whole new state model, or ``None``. Raising means
    the action failed *without effect*; a timeout or cancellation leaves its
    outcome unknown, so such a step is compensated like a completed one
    (compensations must therefore tolerate "nothing to undo").

    Example:
        ``Step("charge", charge_card, compensate=refund, timeout=10)``
    """

    name: str
    """Unique within the saga; letters, digits, ``_`` and ``-``."""
    action: StepFunction
    """The forward action, sync (run in a worker thread) or async."""
    _: KW_ONLY
    compensate: StepFunction | None = None
    """Undoes the action; required for compensatable steps, refused for the others."""
    kind: StepKind = StepKind.COMPENSATABLE
    """See `StepKind`."""
    retry: RetryPolicy | None = None
    """Retry policy of the action; ``None`` takes the saga's default for this kind."""
    timeout: float | None = None
    """Seconds allowed for each attempt of the action; ``None`` means no limit."""
    compensation_retry: RetryPolicy | None = None
    """Retry policy of the compensation; ``None`` takes the saga's default."""
    compensation_timeout: float | None = None
    """Seconds allowed for each attempt of the compensation."""
    idempotent: bool = True
    """Whether running the action twice with one idempotency key is harmless."""
    action_is_async: bool = field(init=False, repr=False, compare=False)
    compensate_is_async: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_name("step", self.name)
        if not callable(self.action):
            raise ConfigurationError(f"step {self.name!r}: action must be callable")
        if self.compensate is not None and not callable(self.compensate):
            raise ConfigurationError(f"step {self.name!r}: compensate must be callable")
        for label, value in (
            ("timeout", self.timeout),
            ("compensation_timeout", self.compensation_timeout),
        ):
            if value is not None and value <= 0:
                raise ConfigurationError(f"step {self.name!r}: {label} must be > 0, got {value}")
        self._check_kind()
        object.__setattr__(self, "action_is_async", _is_async(self.action))
        object.__setattr__(
            self, "compensate_is_async", self.compensate is not None and _is_async(self.compensate)
        )

    def _check_kind(self) -> None:
        kind = StepKind(self.kind)
        if kind is StepKind.COMPENSATABLE and self.compensate is None:
            raise ConfigurationError(
                f"step {self.name!r} is compensatable but has no compensation: pass "
                "compensate=..., or mark it kind=StepKind.PIVOT / StepKind.RETRIABLE"
            )
        if kind is not StepKind.COMPENSATABLE and self.compensate is not None:
            raise ConfigurationError(
                f"step {self.name!r} is {kind.value} and is never compensated: "
                "remove compensate=... or make it compensatable"
            )


def _is_async(fn: Callable[..., Any]) -> bool:
    call = getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


@dataclass(frozen=True, slots=True, init=False)
class Parallel:
    """A stage whose branches (steps) run concurrently.

    If one branch fails, the others are cancelled, and every branch that
    completed or whose outcome is unknown is compensated (in reverse order of
    completion). Branches see the state as it was when the stage began; their
    updates are applied in completion order.
    """

    name: str
    branches: tuple[Step, ...]

    def __init__(self, name: str, *branches: Step) -> None:
        check_name("parallel group", name)
        if len(branches) < 2:
            raise ConfigurationError(f"parallel group {name!r} needs at least two branches")
        for branch in branches:
            if not isinstance(branch, Step):
                raise ConfigurationError(
                    f"parallel group {name!r}: branches must be Step, got {type(branch).__name__}"
                )
            if branch.kind is StepKind.PIVOT:
                raise ConfigurationError(
                    f"parallel group {name!r}: the pivot {branch.name!r} cannot be a branch; "
                    "a saga has one point of no return"
                )
        kinds = {branch.kind for branch in branches}
        if len(kinds) > 1:
            raise ConfigurationError(
                f"parallel group {name!r} mixes compensatable and retriable branches"
            )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "branches", tuple(branches))


@dataclass(frozen=True, slots=True)
class _Plan:
    """A step with the policies the saga resolved for it."""

    step: Step
    stage: int
    retry: RetryPolicy
    compensation_retry: RetryPolicy


class Saga(Generic[S]):
    """A named, versioned saga definition.

    Args:
        name: Saga name (letters, digits, ``_``, ``-``).
        state: The pydantic model holding the saga's state.
        steps: The stages in order: `Step` or `Parallel`.
        version: Definition version, recorded in every instance's log. Bump it
            when a change would confuse instances already running.
        retry: Default retry policy for compensatable and pivot actions.
        retriable_retry: Default retry policy for retriable actions.
        compensation_retry: Default retry policy for compensations.
        deadline: Seconds the forward path may take before the saga turns back.

    Raises:
        ConfigurationError: The definition is invalid; the message says what to fix.
    """

    def __init__(
        self,
        name: str,
        *,
        state: type[S],
        steps: Sequence[Step | Parallel],
        version: int = 1,
        retry: RetryPolicy = DEFAULT_STEP_RETRY,
        retriable_retry: RetryPolicy = DEFAULT_RETRIABLE_RETRY,
        compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY,
        deadline: float | None = None,
    ) -> None:
        self.name = check_name("saga", name)
        if not (isinstance(state, type) and issubclass(state, BaseModel)):
            raise ConfigurationError(f"saga {name!r}: state must be a pydantic model class")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigurationError(f"saga {name!r}: version must be an int >= 1")
        if deadline is not None and deadline <= 0:
            raise ConfigurationError(f"saga {name!r}: deadline must be > 0")
        if not steps:
            raise ConfigurationError(f"saga {name!r} needs at least one step")
        self.state_type: type[S] = state
        self.version = version
        self.deadline = deadline
        self.stages: tuple[tuple[Step, ...], ...] = tuple(_stage(name, s) for s in steps)
        _check_order(name, self.stages)
        defaults = {
            StepKind.COMPENSATABLE: retry,
            StepKind.PIVOT: retry,
            StepKind.RETRIABLE: retriable_retry,
        }
        self._plans: dict[str, _Plan] = {}
        for index, stage in enumerate(self.stages):
            for step in stage:
                self._plans[step.name] = _Plan(
                    step=step,
                    stage=index,
                    retry=step.retry or defaults[step.kind],
                    compensation_retry=step.compensation_retry or compensation_retry,
                )

    @property
    def key(self) -> str:
        """``name@version``, as recorded in logs."""
        return f"{self.name}@{self.version}"

    def steps(self) -> Iterator[Step]:
        """Iterate every step in definition order (parallel branches in their order)."""
        for stage in self.stages:
            yield from stage

    def plan(self, step: str) -> _Plan:
        """Return the resolved policies of ``step``."""
        try:
            return self._plans[step]
        except KeyError:
            raise ConfigurationError(f"saga {self.name!r} has no step {step!r}") from None

    def map_steps(self, change: Callable[[Step], Step]) -> Saga[S]:
        """Return a copy whose every step went through ``change`` (same name, version, policies).

        Testing tools use it to wrap actions (fault injection, counting runs); the
        copy runs and recovers exactly like the original otherwise.
        """
        stages: list[Step | Parallel] = []
        for index, stage in enumerate(self.stages):
            if len(stage) == 1:
                stages.append(change(stage[0]))
            else:
                stages.append(Parallel(f"group{index}", *map(change, stage)))
        copy: Saga[S] = Saga(
            self.name,
            state=self.state_type,
            steps=stages,
            version=self.version,
            deadline=self.deadline,
        )
        for step in copy.steps():
            original = self._plans.get(step.name)
            if original is not None:
                copy._plans[step.name] = dataclasses.replace(original, step=step)
        return copy

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, version={self.version}, steps={len(self._plans)})"


def _stage(saga: str, item: Step | Parallel) -> tuple[Step, ...]:
    if isinstance(item, Step):
        return (item,)
    if isinstance(item, Parallel):
        return item.branches
    raise ConfigurationError(
        f"saga {saga!r}: steps must be Step or Parallel, got {type(item).__name__}"
    )


def _check_order(saga: str, stages: Sequence[tuple[Step, ...]]) -> None:
    """Enforce unique names and the shape ``compensatable* [pivot] retriable*``."""
    seen: set[str] = set()
    phase = StepKind.COMPENSATABLE
    pivot: str | None = None
    for stage in stages:
        for step in stage:
            if step.name in seen:
                raise ConfigurationError(f"saga {saga!r}: duplicate step name {step.name!r}")
            seen.add(step.name)
        kind = stage[0].kind
        if kind is StepKind.COMPENSATABLE and phase is not StepKind.COMPENSATABLE:
            where = f"after the pivot {pivot!r}" if pivot else "after a retriable step"
            raise ConfigurationError(
                f"saga {saga!r}: compensatable step {stage[0].name!r} comes {where}; "
                "nothing can be undone past the point of no return; move it before, "
                "or make it retriable"
            )
        if kind is StepKind.PIVOT:
            if pivot is not None:
                raise ConfigurationError(
                    f"saga {saga!r}: two pivots ({pivot!r}, {stage[0].name!r}); a saga has one"
                )
            if phase is StepKind.RETRIABLE:
                raise ConfigurationError(
                    f"saga {saga!r}: pivot {stage[0].name!r} comes after a retriable step"
                )
            pivot = stage[0].name
        phase = kind if kind is not StepKind.PIVOT else StepKind.RETRIABLE
