"""divims.retry: bounded attempts, exponential backoff with jitter, an overall deadline."""

from __future__ import annotations

import random

import pytest

from divims.errors import APIError, TimeoutError_, TransientError
from divims.retry import backoff_delay, retry_call


class FakeClock:
    """Time that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(n_failures: int, error: BaseException, result: str = "ok"):
    calls = {"n": 0}

    def fn() -> str:
        calls["n"] += 1
        if calls["n"] <= n_failures:
            raise error
        return result
    return fn, calls


def transient() -> TransientError:
    return TransientError("scaleway", "test", "boom")


@pytest.mark.parametrize(
    "failures, attempts, deadline, expect_result, expect_calls",
    [
        (0, 3, 100.0, True, 1),     # first call succeeds: no sleep
        (2, 3, 100.0, True, 3),     # succeeds on the last allowed attempt
        (3, 3, 100.0, False, 3),    # attempts used up: last error raised
        (5, 10, 2.5, False, 2),     # deadline: 1 s pause fits, the next ~2 s one would pass 2.5 s
        (1, 1, 100.0, False, 1),    # attempts=1 means no retry at all
    ],
)
def test_retry_call_attempts_and_deadline(failures, attempts, deadline, expect_result, expect_calls):
    clock = FakeClock()
    fn, calls = failing(failures, transient())
    rng = random.Random(0)
    if expect_result:
        assert retry_call(fn, attempts=attempts, base_delay=1.0, max_delay=8.0, deadline_seconds=deadline,
                          sleep=clock.sleep, clock=clock, rng=rng) == "ok"
    else:
        with pytest.raises(TransientError):
            retry_call(fn, attempts=attempts, base_delay=1.0, max_delay=8.0, deadline_seconds=deadline,
                       sleep=clock.sleep, clock=clock, rng=rng)
    assert calls["n"] == expect_calls
    assert clock.now <= deadline
    assert len(clock.sleeps) == expect_calls - 1  # one pause between consecutive attempts


def test_non_retryable_error_propagates_at_once():
    clock = FakeClock()
    fn, calls = failing(1, APIError("scaleway", "t", "bad request", key="invalid_request_error"))
    with pytest.raises(APIError):
        retry_call(fn, attempts=5, base_delay=1, max_delay=4, deadline_seconds=60,
                   sleep=clock.sleep, clock=clock)
    assert calls["n"] == 1 and clock.sleeps == []


def test_subclasses_of_retry_on_are_retried():
    clock = FakeClock()
    fn, calls = failing(2, TimeoutError_("scaleway", "t", "timed out"))
    assert retry_call(fn, attempts=5, base_delay=0.1, max_delay=1, deadline_seconds=60,
                      sleep=clock.sleep, clock=clock) == "ok"
    assert calls["n"] == 3


@pytest.mark.parametrize(
    "attempt, base, cap, low, high",
    [(1, 1.0, 30.0, 0.5, 1.0), (2, 1.0, 30.0, 1.0, 2.0), (4, 1.0, 30.0, 4.0, 8.0),
     (10, 1.0, 30.0, 15.0, 30.0), (3, 0.0, 30.0, 0.0, 0.0)],
)
def test_backoff_is_exponential_capped_and_jittered(attempt, base, cap, low, high):
    rng = random.Random(42)
    values = [backoff_delay(attempt, base_delay=base, max_delay=cap, rng=rng) for _ in range(200)]
    assert all(low <= v <= high for v in values)
    if high > low:
        assert len(set(values)) > 1  # jitter actually varies


def test_on_retry_sees_each_pause_and_the_error():
    clock = FakeClock()
    seen: list[tuple[int, str, float]] = []
    fn, _ = failing(2, transient())
    retry_call(fn, attempts=4, base_delay=1, max_delay=8, deadline_seconds=60, sleep=clock.sleep,
               clock=clock, on_retry=lambda n, e, d: seen.append((n, type(e).__name__, d)))
    assert [s[0] for s in seen] == [1, 2]
    assert [s[2] for s in seen] == clock.sleeps
    assert all(s[1] == "TransientError" for s in seen)


def test_retry_after_hint_is_honoured_but_capped():
    clock = FakeClock()
    err = transient()
    err.retry_after = 5.0  # type: ignore[attr-defined]
    fn, _ = failing(1, err)
    retry_call(fn, attempts=3, base_delay=0.1, max_delay=3.0, deadline_seconds=60, sleep=clock.sleep,
               clock=clock)
    assert clock.sleeps == [3.0]


@pytest.mark.parametrize("kwargs", [dict(attempts=0), dict(base_delay=-1), dict(deadline_seconds=-1)])
def test_bad_arguments_are_rejected(kwargs):
    args = dict(attempts=3, base_delay=1, max_delay=2, deadline_seconds=10) | kwargs
    with pytest.raises(ValueError):
        retry_call(lambda: 1, **args)
