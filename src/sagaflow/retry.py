"""Retry policies shared by saga steps, compensations, bus handlers and transports.

A `RetryPolicy` is a frozen, keyword-only value: build it once and share it.
Delays use exponential backoff capped at ``max_delay`` with *full jitter*
(a uniform draw between 0 and the capped delay), which spreads retries of many
clients instead of synchronising them.

Example:
    >>> policy = RetryPolicy(max_attempts=5, initial_delay=0.2, retry_on=(ConnectionError,))
    >>> policy.should_retry(ConnectionError("reset"), attempt=1, elapsed=0.0)
    True
    >>> policy.should_retry(ValueError("bad input"), attempt=1, elapsed=0.0)
    False
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from sagaflow.errors import ConfigurationError, NonRetryableError

__all__ = ["RetryPolicy"]

_DEFAULT_RANDOM = random.Random()
_log = logging.getLogger("sagaflow.retry")


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """When and how long to wait before trying a failed operation again.

    Every field is keyword-only and the policy is immutable.
    """

    max_attempts: int | None = 3
    """Total attempts including the first; ``None`` retries until the deadline (or forever)."""

    initial_delay: float = 0.1
    """Delay in seconds before the second attempt, before jitter."""

    backoff: float = 2.0
    """Multiplier applied to the delay after each failed attempt (>= 1)."""

    max_delay: float = 30.0
    """Upper bound in seconds on any single delay, before jitter."""

    jitter: bool = True
    """Use full jitter: each delay is drawn uniformly from ``[0, capped delay]``."""

    deadline: float | None = None
    """Overall budget in seconds from the first attempt; no retry starts past it."""

    retry_on: tuple[type[BaseException], ...] = (Exception,)
    """Only errors that are instances of one of these are retried."""

    give_up_on: tuple[type[BaseException], ...] = ()
    """Errors that are never retried, even when they match ``retry_on``."""

    retry_if: Callable[[BaseException], bool] | None = field(default=None, compare=False)
    """Optional extra predicate; the error is retried only if it returns true.

    A predicate that raises counts as "do not retry" (and is logged as an
    error): the failure then takes its final path (a step's saga turns back, a
    handler's event is dead-lettered) instead of being lost with the predicate's
    own error."""

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigurationError(
                f"RetryPolicy.max_attempts must be >= 1 or None, got {self.max_attempts}"
            )
        if self.initial_delay < 0 or self.max_delay < 0:
            raise ConfigurationError("RetryPolicy delays must be >= 0")
        if self.backoff < 1:
            raise ConfigurationError(f"RetryPolicy.backoff must be >= 1, got {self.backoff}")
        if self.deadline is not None and self.deadline <= 0:
            raise ConfigurationError(f"RetryPolicy.deadline must be > 0, got {self.deadline}")

    @classmethod
    def no_retry(cls) -> RetryPolicy:
        """Return a policy that makes exactly one attempt."""
        return _NO_RETRY

    @classmethod
    def forever(cls, *, initial_delay: float = 0.1, max_delay: float = 30.0) -> RetryPolicy:
        """Return a policy that retries any `Exception` without limit (for retriable steps)."""
        return cls(max_attempts=None, initial_delay=initial_delay, max_delay=max_delay)

    def is_retryable(self, error: BaseException) -> bool:
        """Return whether ``error`` is of a kind this policy retries (ignoring counts)."""
        if isinstance(error, NonRetryableError) or not isinstance(error, self.retry_on):
            return False
        if self.give_up_on and isinstance(error, self.give_up_on):
            return False
        if self.retry_if is None:
            return True
        try:
            return bool(self.retry_if(error))
        except Exception:
            _log.exception(
                "RetryPolicy.retry_if raised while judging a %s; not retrying",
                type(error).__name__,
            )
            return False

    def should_retry(self, error: BaseException, *, attempt: int, elapsed: float) -> bool:
        """Decide whether to make another attempt after ``error``.

        Args:
            error: The error raised by attempt number ``attempt``.
            attempt: The 1-based number of the attempt that just failed.
            elapsed: Seconds since the first attempt started.
        """
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return False
        if self.deadline is not None and elapsed >= self.deadline:
            return False
        return self.is_retryable(error)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Return the seconds to wait after failed attempt number ``attempt`` (1-based).

        Args:
            attempt: The attempt that just failed.
            rng: Random source for jitter; pass a seeded one for reproducible tests.
        """
        exponent = max(attempt - 1, 0)
        try:
            raw = self.initial_delay * self.backoff**exponent
        except OverflowError:
            raw = self.max_delay
        capped = min(raw, self.max_delay)
        if not self.jitter or capped == 0:
            return capped
        return (rng or _DEFAULT_RANDOM).uniform(0.0, capped)


_NO_RETRY = RetryPolicy(max_attempts=1)
