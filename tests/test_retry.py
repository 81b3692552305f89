import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sagaflow import RetryPolicy
from sagaflow.errors import ConfigurationError, NonRetryableError


def test_defaults_retry_exceptions_three_times():
    policy = RetryPolicy()
    assert policy.should_retry(RuntimeError(), attempt=1, elapsed=0)
    assert policy.should_retry(RuntimeError(), attempt=2, elapsed=0)
    assert not policy.should_retry(RuntimeError(), attempt=3, elapsed=0)


def test_predicates_separate_retryable_errors():
    policy = RetryPolicy(retry_on=(ConnectionError,), give_up_on=(ConnectionRefusedError,))
    assert policy.should_retry(ConnectionResetError(), attempt=1, elapsed=0)
    assert not policy.should_retry(ConnectionRefusedError(), attempt=1, elapsed=0)
    assert not policy.should_retry(ValueError(), attempt=1, elapsed=0)


def test_retry_if_predicate_and_non_retryable_error():
    policy = RetryPolicy(retry_if=lambda e: "transient" in str(e))
    assert policy.should_retry(RuntimeError("transient glitch"), attempt=1, elapsed=0)
    assert not policy.should_retry(RuntimeError("permanent"), attempt=1, elapsed=0)
    assert not RetryPolicy().should_retry(NonRetryableError("no"), attempt=1, elapsed=0)


def test_deadline_stops_retries():
    policy = RetryPolicy(max_attempts=None, deadline=10)
    assert policy.should_retry(RuntimeError(), attempt=50, elapsed=9.9)
    assert not policy.should_retry(RuntimeError(), attempt=2, elapsed=10)


def test_no_retry_and_forever():
    assert not RetryPolicy.no_retry().should_retry(RuntimeError(), attempt=1, elapsed=0)
    assert RetryPolicy.forever().should_retry(RuntimeError(), attempt=10_000, elapsed=1e9)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"initial_delay": -1},
        {"max_delay": -1},
        {"backoff": 0.5},
        {"deadline": 0},
    ],
)
def test_invalid_policies_are_refused(kwargs):
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)


def test_policy_is_frozen_and_keyword_only():
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.max_attempts = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[misc]


def test_delay_without_jitter_is_exponential_and_capped():
    policy = RetryPolicy(initial_delay=1, backoff=2, max_delay=5, jitter=False)
    assert [policy.delay(n) for n in range(1, 6)] == [1, 2, 4, 5, 5]


@given(
    attempt=st.integers(min_value=1, max_value=10_000),
    initial=st.floats(min_value=0, max_value=100),
    backoff=st.floats(min_value=1, max_value=10),
    cap=st.floats(min_value=0, max_value=1000),
    seed=st.integers(),
)
def test_full_jitter_stays_within_the_capped_delay(attempt, initial, backoff, cap, seed):
    policy = RetryPolicy(initial_delay=initial, backoff=backoff, max_delay=cap)
    delay = policy.delay(attempt, random.Random(seed))
    assert 0 <= delay <= cap


def test_a_retry_if_that_raises_means_do_not_retry_and_is_logged(caplog):
    def broken(error):
        raise KeyError("bug in the predicate")

    policy = RetryPolicy(retry_if=broken)
    with caplog.at_level("ERROR", logger="sagaflow.retry"):
        assert policy.should_retry(ConnectionError("reset"), attempt=1, elapsed=0.0) is False
    assert "retry_if raised while judging a ConnectionError; not retrying" in caplog.text
    assert "KeyError" in caplog.text  # the predicate's own error, with its traceback
