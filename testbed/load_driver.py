"""Drives the live testbed's load: the trace, in accelerated wall-clock time, through the load model,
into the fake BBB servers' meetings, placed as Scalelite places them.
"""

from __future__ import annotations

import logging
import random
import threading

from testbed.load import LoadMeeting, LoadModel, load_trace
from testbed.world import FakeMeeting, World

log = logging.getLogger(__name__)

RECORDED_SHARE = 0.3   # share of meetings that are recorded
VOICE_SHARE = 0.6      # participants who joined voice
VIDEO_SHARE = 0.2      # participants sharing a camera


class LoadDriver:
    """Steps a `LoadModel` in trace time = trace start + (now - t0) x acceleration."""

    def __init__(self, world: World, trace_path: str, *, acceleration: float = 60.0, seed: int = 1,
                 loop: bool = False, tick_seconds: float = 0.25):
        self.world = world
        self.trace = load_trace(trace_path)
        self.acceleration = acceleration
        self.loop = loop
        self.tick = tick_seconds
        self.model = LoadModel(seed=seed)
        self.rng = random.Random(seed)
        self.t0 = world.now()
        self.finished = False
        self.unplaced = 0
        self._where: dict[str, str] = {}  # model meeting id -> host

    @property
    def trace_time(self) -> float:
        span = self.trace.end - self.trace.start
        elapsed = (self.world.now() - self.t0) * self.acceleration
        if self.loop and span > 0:
            elapsed %= span
        return self.trace.start + elapsed

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.tick):
            try:
                self.step()
            except Exception:  # the driver must not die silently: log and go on
                log.exception("testbed load driver: step failed")
            if not self.loop and self.trace_time >= self.trace.end:
                self.finished = True

    def step(self) -> None:
        from testbed.scalelite import place_meeting

        world = self.world
        now_trace = self.trace_time
        participants, meetings = self.trace.at(now_trace)
        with world.lock:
            world.advance()
            # meetings that vanished from their server (ended by the scaler, a panic, a dead VM)
            for mid, host in list(self._where.items()):
                if mid not in world.bbb_hosts[host].meetings:
                    self.model.end(mid)
                    del self._where[mid]

            def place(m: LoadMeeting) -> str | None:
                host = place_meeting(world)
                if host is None:
                    self.unplaced += 1
                return host

            result = self.model.step(now_trace, meetings, participants, place)
            for m in result.ended:
                host = self._where.pop(m.id, None)
                if host is not None:
                    world.end_meeting(host, m.id, why="ended")
            for m in result.started:
                if m.server is None:
                    continue
                self._where[m.id] = m.server
                world.bbb_hosts[m.server].meetings[m.id] = FakeMeeting(
                    meeting_id=m.id, internal_meeting_id=f"{m.id}-{int(world.now() * 1000)}", name=f"class {m.id}",
                    create_time=world.now(), participants=max(1, m.participants),
                    recording=self.rng.random() < RECORDED_SHARE)
            for mid, host in self._where.items():
                fm = world.bbb_hosts[host].meetings.get(mid)
                lm = self.model.meetings.get(mid)
                if fm is None or lm is None:
                    continue
                fm.participants = max(1, lm.participants)
                fm.moderators = 1
                fm.voice = int(fm.participants * VOICE_SHARE)
                fm.listeners = fm.participants - fm.voice
                fm.video = int(fm.participants * VIDEO_SHARE)
