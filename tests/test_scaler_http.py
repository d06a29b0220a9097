"""The scaler's /healthz says whether the loop is cycling; /metrics serves its registry."""

from __future__ import annotations

import requests

from scaler.http import HealthApp, serve
from scaler.metrics import ScalerMetrics


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_healthz_follows_the_last_cycle_of_every_pool():
    m = ScalerMetrics()
    clock = Clock()
    app = HealthApp(m.registry, ["a", "b"], interval_seconds=60, clock=clock)
    assert app.max_age_seconds == 210
    ok, body = app.health()
    assert ok and body["status"] == "starting"           # no cycle yet, within the grace
    clock.t += 211
    ok, body = app.health()
    assert not ok and body["late"] == ["a", "b"]          # never cycled
    m.last_cycle.labels(pool="a").set(clock.t - 5)
    m.last_cycle.labels(pool="b").set(clock.t - 100)
    ok, body = app.health()
    assert ok and body["status"] == "ok" and body["cycle_age_seconds"] == {"a": 5.0, "b": 100.0}
    clock.t += 200                                        # a is 205 s old, b 300 s
    ok, body = app.health()
    assert not ok and body["late"] == ["b"]


def test_served_endpoints():
    m = ScalerMetrics()
    server = serve(m.registry, ["p"], 1.0, "127.0.0.1", 0)
    try:
        r = requests.get(server.url + "/healthz", timeout=5)
        assert r.status_code == 200 and r.json()["status"] == "starting"
        r = requests.get(server.url + "/metrics", timeout=5)
        assert r.status_code == 200 and "divims_scaler_cycle_duration_seconds" in r.text
        assert requests.get(server.url + "/nope", timeout=5).status_code == 404
    finally:
        server.stop()
