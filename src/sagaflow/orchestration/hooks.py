"""Lifecycle hooks: how tracing, metrics and journals watch sagas run.

Subclass `SagaHooks`, override the methods you need, and pass instances to the
`Orchestrator`. Hooks are plain synchronous calls made on the event loop, so they
must be quick; an exception raised by a hook is logged and swallowed, never
allowed to change a saga's outcome. Only overridden methods are called.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sagaflow.orchestration.result import SagaResult

__all__ = ["SagaHooks"]

_log = logging.getLogger("sagaflow.orchestration")


class SagaHooks:
    """Base class of saga lifecycle callbacks; every method is a no-op here."""

    def saga_started(self, saga_id: str, saga_name: str) -> None:
        """A saga instance was created (or resumed by recovery)."""

    def saga_finished(self, result: SagaResult[Any]) -> None:
        """A saga reached COMPLETED, COMPENSATED or FAILED."""

    def step_started(self, saga_id: str, step: str, attempt: int) -> None:
        """An attempt of a step's action is about to run (already logged as STARTED)."""

    def step_succeeded(self, saga_id: str, step: str, attempt: int) -> None:
        """A step's action completed."""

    def step_failed(
        self, saga_id: str, step: str, attempt: int, error: BaseException, will_retry: bool
    ) -> None:
        """An attempt of a step's action failed; ``will_retry`` says whether another follows."""

    def compensation_started(self, saga_id: str, step: str, attempt: int) -> None:
        """An attempt of a step's compensation is about to run."""

    def step_compensated(self, saga_id: str, step: str, attempt: int) -> None:
        """A step's compensation completed."""

    def compensation_failed(
        self, saga_id: str, step: str, attempt: int, error: BaseException, will_retry: bool
    ) -> None:
        """An attempt of a compensation failed."""


_HOOK_NAMES = (
    "saga_started",
    "saga_finished",
    "step_started",
    "step_succeeded",
    "step_failed",
    "compensation_started",
    "step_compensated",
    "compensation_failed",
)


class HookDispatcher:
    """The overridden hook methods of several `SagaHooks`, one tuple per hook name.

    The orchestrator checks a tuple before building arguments, so hooks nobody
    overrides cost one attribute read.
    """

    __slots__ = ("enabled", *_HOOK_NAMES)

    saga_started: tuple[Callable[..., None], ...]
    saga_finished: tuple[Callable[..., None], ...]
    step_started: tuple[Callable[..., None], ...]
    step_succeeded: tuple[Callable[..., None], ...]
    step_failed: tuple[Callable[..., None], ...]
    compensation_started: tuple[Callable[..., None], ...]
    step_compensated: tuple[Callable[..., None], ...]
    compensation_failed: tuple[Callable[..., None], ...]

    def __init__(self, hooks: Sequence[SagaHooks]) -> None:
        self.enabled = False
        for name in _HOOK_NAMES:
            base = getattr(SagaHooks, name)
            bound = tuple(
                getattr(hook, name) for hook in hooks if getattr(type(hook), name, base) is not base
            )
            setattr(self, name, bound)
            self.enabled = self.enabled or bool(bound)


def fire(callbacks: tuple[Callable[..., None], ...], *args: Any) -> None:
    """Call each callback with ``args``; log and swallow what they raise."""
    for callback in callbacks:
        try:
            callback(*args)
        except Exception:  # a broken hook must never change a saga's outcome
            _log.exception("saga hook %s raised; ignored", getattr(callback, "__name__", "?"))
