import math
import random

import pytest

from userflow.actors.retry import PermanentError, RetryPolicy


class Unfixable(Exception):
    pass


class UnfixableChild(Unfixable):
    pass


def test_backoff_grows_exponentially_without_jitter() -> None:
    policy = RetryPolicy(max_attempts=10, initial_backoff=0.5, coefficient=2.0, max_backoff=1000, jitter=0)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]


def test_backoff_with_other_coefficient() -> None:
    policy = RetryPolicy(initial_backoff=1.0, coefficient=3.0, max_backoff=1000, jitter=0)
    assert [policy.backoff(n) for n in range(1, 5)] == [1.0, 3.0, 9.0, 27.0]


def test_coefficient_one_gives_constant_backoff() -> None:
    policy = RetryPolicy(initial_backoff=0.25, coefficient=1.0, max_backoff=10, jitter=0)
    assert {policy.backoff(n) for n in (1, 2, 50, 10**9)} == {0.25}


def test_backoff_is_capped_at_max_backoff() -> None:
    policy = RetryPolicy(initial_backoff=1.0, coefficient=2.0, max_backoff=5.0, jitter=0)
    assert [policy.backoff(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_initial_backoff_above_the_cap_is_capped() -> None:
    policy = RetryPolicy(initial_backoff=10.0, max_backoff=3.0, jitter=0)
    assert policy.backoff(1) == 3.0
    assert policy.backoff(2) == 3.0


@pytest.mark.parametrize("attempt", [64, 1025, 10_000, 10**9, 10**30])
def test_huge_attempt_numbers_do_not_overflow(attempt: int) -> None:
    policy = RetryPolicy(initial_backoff=0.5, coefficient=2.0, max_backoff=60.0, jitter=0)
    assert policy.backoff(attempt) == 60.0
    jittered = RetryPolicy(initial_backoff=0.5, coefficient=10.0, max_backoff=60.0, jitter=0.5)
    delay = jittered.backoff(attempt, random.Random(attempt))
    assert math.isfinite(delay) and 30.0 <= delay <= 60.0


def test_jitter_stays_within_bounds_and_varies() -> None:
    policy = RetryPolicy(initial_backoff=1.0, coefficient=2.0, max_backoff=100.0, jitter=0.1)
    rng = random.Random(1234)
    for attempt, base in [(1, 1.0), (3, 4.0), (5, 16.0)]:
        draws = [policy.backoff(attempt, rng) for _ in range(500)]
        assert all(base * 0.9 <= d <= base * 1.1 for d in draws), (min(draws), max(draws))
        assert len(set(draws)) > 400  # really random, not a constant
        # both sides of the base are used, and the spread covers most of the band
        assert min(draws) < base * 0.95 and max(draws) > base * 1.05


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy(initial_backoff=1.0, jitter=0.3)
    first = [policy.backoff(2, random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1
    assert policy.backoff(2, random.Random(7)) != policy.backoff(2, random.Random(8))


def test_jitter_never_exceeds_the_cap() -> None:
    policy = RetryPolicy(initial_backoff=1.0, coefficient=2.0, max_backoff=5.0, jitter=0.5)
    rng = random.Random(99)
    draws = [policy.backoff(10, rng) for _ in range(500)]
    assert all(2.5 <= d <= 5.0 for d in draws)
    assert len(set(draws)) > 100


def test_jitter_without_rng_uses_module_random() -> None:
    policy = RetryPolicy(initial_backoff=2.0, jitter=0.2)
    draws = {policy.backoff(1) for _ in range(50)}
    assert all(1.6 <= d <= 2.4 for d in draws)
    assert len(draws) > 1


@pytest.mark.parametrize(
    "policy",
    [
        RetryPolicy(initial_backoff=0, jitter=0.5),
        RetryPolicy(initial_backoff=0, coefficient=5.0, jitter=0.0),
        RetryPolicy(initial_backoff=1.0, max_backoff=0, jitter=0.5),
    ],
)
def test_zero_backoff_is_always_zero(policy: RetryPolicy) -> None:
    rng = random.Random(3)
    assert [policy.backoff(n, rng) for n in (1, 2, 10, 10**6)] == [0.0, 0.0, 0.0, 0.0]


def test_backoff_attempts_are_numbered_from_one() -> None:
    with pytest.raises(ValueError):
        RetryPolicy().backoff(0)
    with pytest.raises(ValueError):
        RetryPolicy().backoff(-3)


def test_should_retry_until_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    error = RuntimeError("flaky")
    assert policy.should_retry(1, error)
    assert policy.should_retry(2, error)
    assert not policy.should_retry(3, error)
    assert not policy.should_retry(4, error)


def test_single_attempt_policy_never_retries() -> None:
    assert not RetryPolicy(max_attempts=1).should_retry(1, TimeoutError())


def test_permanent_errors_are_not_retried() -> None:
    policy = RetryPolicy(max_attempts=10)

    class BadRecipient(PermanentError):
        pass

    assert policy.is_permanent(PermanentError("no"))
    assert policy.is_permanent(BadRecipient("no"))
    assert not policy.should_retry(1, PermanentError("no"))
    assert not policy.should_retry(1, BadRecipient("no"))
    assert not policy.is_permanent(ValueError("maybe"))


def test_non_retryable_types_are_not_retried() -> None:
    policy = RetryPolicy(max_attempts=10, non_retryable=(Unfixable, KeyError))
    assert not policy.should_retry(1, Unfixable())
    assert not policy.should_retry(1, UnfixableChild())  # subclasses too
    assert not policy.should_retry(1, KeyError("k"))
    assert policy.should_retry(1, ValueError())
    # the same error is retryable under a policy that does not list it
    assert RetryPolicy(max_attempts=10).should_retry(1, Unfixable())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": -1},
        {"initial_backoff": -0.1},
        {"max_backoff": -1},
        {"coefficient": 0.5},
        {"coefficient": 0},
        {"jitter": -0.01},
        {"jitter": 1.5},
    ],
)
def test_invalid_construction_raises(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_boundary_values_are_valid() -> None:
    RetryPolicy(max_attempts=1, initial_backoff=0, max_backoff=0, coefficient=1, jitter=0)
    RetryPolicy(jitter=1)


def test_policy_is_immutable() -> None:
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.max_attempts = 5  # type: ignore[misc]
