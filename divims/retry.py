"""The one bounded retry helper every divims client uses.

`retry_call` retries a zero-argument call on transient errors with exponential backoff and jitter,
and never starts an attempt (or a sleep) that would end after the overall deadline.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from divims.errors import TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")


def backoff_delay(attempt: int, *, base_delay: float, max_delay: float,
                  rng: random.Random | None = None) -> float:
    """The pause after failed attempt number `attempt` (1-based): `base_delay * 2**(attempt-1)`, capped at
    `max_delay`, then scaled by a random factor in [0.5, 1.0] ("equal jitter"), so many clients that failed
    together do not retry together, while the pause stays at least half the nominal one."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    nominal = min(max_delay, base_delay * (2 ** (attempt - 1)))
    return nominal * (rng or random).uniform(0.5, 1.0)


def retry_call(fn: Callable[[], T], *, attempts: int, base_delay: float, max_delay: float,
               deadline_seconds: float,
               retry_on: tuple[type[BaseException], ...] = (TransientError,),
               sleep: Callable[[float], None] = time.sleep,
               on_retry: Callable[[int, BaseException, float], None] | None = None,
               clock: Callable[[], float] = time.monotonic,
               rng: random.Random | None = None) -> T:
    """Calls `fn` at most `attempts` times and returns its first result.

    An exception that is an instance of `retry_on` is retried after `backoff_delay(...)` seconds; any other
    exception propagates at once. When the attempts are used up, or when the next pause would end after
    `deadline_seconds` from the first call, the last exception is raised unchanged. The deadline cannot
    interrupt a call in progress: each call must bound itself (every divims call has a timeout), so the
    total time is at most `deadline_seconds` plus one call's own timeout.
    An error carrying a `retry_after` attribute (seconds, from a Retry-After header) waits at least that
    long, capped at `max_delay`.
    `on_retry(attempt, error, delay)` is called before each pause (for logs and metrics).
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    if base_delay < 0 or max_delay < 0 or deadline_seconds < 0:
        raise ValueError("base_delay, max_delay and deadline_seconds must be >= 0")
    start = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except retry_on as error:
            if attempt >= attempts:
                raise
            delay = backoff_delay(attempt, base_delay=base_delay, max_delay=max_delay, rng=rng)
            hint = getattr(error, "retry_after", None)
            if isinstance(hint, int | float) and hint > delay:
                # The server said when to come back (Retry-After); still never beyond max_delay.
                delay = min(float(hint), max_delay)
            remaining = deadline_seconds - (clock() - start)
            if delay >= remaining:
                # Waiting would leave no time for another attempt inside the deadline.
                raise
            if on_retry is not None:
                on_retry(attempt, error, delay)
            sleep(delay)
