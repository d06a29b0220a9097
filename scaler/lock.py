"""One actor per pool: a lease with a TTL, kept in the state directory.

`<state_dir>/<pool>.lease` holds `{"holder", "pid", "host", "expires"}`; every read-modify-write of it
happens under an exclusive `fcntl.flock` of `<state_dir>/<pool>.lock`, so processes on one host never
both take it. The holder renews the lease every cycle; a second instance sees who holds it and until
when, waits, and takes over once the lease has expired (the holder crashed or was killed -9).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseStatus:
    acquired: bool
    holder: str          # who holds it now (us when acquired)
    expires: float       # epoch seconds
    reason: str          # what a human reads: why we act or why we wait


class PoolLock:
    """The lease of one pool. `acquire()` takes or renews it; `release()` gives it up if ours."""

    def __init__(self, state_dir: str | Path, pool: str, *, ttl_seconds: float,
                 holder: str | None = None, clock: Callable[[], float] = time.time):
        if ttl_seconds <= 0:
            raise ValueError("scaler.lock_ttl_seconds must be positive")
        self.dir = Path(state_dir)
        self.pool = pool
        self.ttl = float(ttl_seconds)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in pool)
        self.lock_path = self.dir / f"{safe}.lock"
        self.lease_path = self.dir / f"{safe}.lease"

    def _locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for microseconds by whoever has it: blocking is fine
        return fd

    def _read(self) -> dict | None:
        try:
            data = json.loads(self.lease_path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else None
        except (OSError, ValueError):
            return None  # no lease, or a torn/garbled one: treated as free

    def current(self) -> dict | None:
        """The lease as stored (None when there is none)."""
        return self._read()

    def acquire(self) -> LeaseStatus:
        """Takes the lease if it is free, expired or ours, and extends it by the TTL."""
        fd = self._locked()
        try:
            now = self.clock()
            lease = self._read()
            if lease and lease.get("holder") != self.holder and float(lease.get("expires", 0)) > now:
                holder, expires = str(lease.get("holder")), float(lease["expires"])
                reason = (f"pool {self.pool}: another scaler ({holder}) holds the lock until "
                          f"{time.strftime('%H:%M:%S', time.gmtime(expires))} UTC "
                          f"({expires - now:.0f}s): waiting, not acting")
                return LeaseStatus(False, holder, expires, reason)
            took_over = bool(lease and lease.get("holder") != self.holder)
            expires = now + self.ttl
            tmp = self.lease_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"holder": self.holder, "pid": os.getpid(), "host": socket.gethostname(),
                                       "expires": expires, "pool": self.pool}), encoding="utf-8")
            os.replace(tmp, self.lease_path)  # atomic: a reader never sees half a lease
            if took_over:
                reason = f"pool {self.pool}: took over the expired lock of {lease.get('holder')}"
                log.warning(reason)
            else:
                reason = f"pool {self.pool}: lock held"
            return LeaseStatus(True, self.holder, expires, reason)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def release(self) -> None:
        """Gives the lease up if we hold it, so a successor need not wait for the TTL."""
        fd = self._locked()
        try:
            lease = self._read()
            if lease and lease.get("holder") == self.holder:
                self.lease_path.unlink(missing_ok=True)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
