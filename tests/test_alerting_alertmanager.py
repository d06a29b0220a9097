"""A real Alertmanager (Debian's prometheus-alertmanager) posting to the real receiver behind waitress:
firing and resolved notifications stored once, mapped alerts queued for the scaler, a wrong token
stores nothing, and a receiver restart loses nothing (Alertmanager retries)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
import yaml
from alerting_fixtures import TOKEN, make_settings, served_webhook

pytestmark = pytest.mark.integration

SHIPPED = Path(__file__).resolve().parent.parent / "alerting" / "alertmanager.yml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def am_config(tmp_path: Path, webhook_url: str, token: str) -> Path:
    """The shipped alertmanager.yml, pointed at the test receiver with test timings (1 s)."""
    conf = yaml.safe_load(SHIPPED.read_text())
    token_file = tmp_path / "token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    hook = next(r for r in conf["receivers"] if r["name"] == "divims")["webhook_configs"][0]
    hook["url"] = f"{webhook_url}/alertmanager"
    hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
    for route in [conf["route"], *conf["route"]["routes"]]:
        route.update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(conf))
    return path


@contextmanager
def alertmanager(tmp_path: Path, config: Path) -> Iterator[str]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.skip("prometheus-alertmanager is not installed (make system-deps)")
    port = free_port()
    log = (tmp_path / "am.log").open("w")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.path={tmp_path / 'am-data'}",
                             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=",
                             "--log.level=debug"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            try:
                return requests.get(f"{url}/-/ready", timeout=1).status_code == 200
            except requests.ConnectionError:
                assert proc.poll() is None, (tmp_path / "am.log").read_text()
                return False
        wait_for(ready, 15, "Alertmanager to be ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


def push(am_url: str, *alerts: dict) -> None:
    r = requests.post(f"{am_url}/api/v2/alerts", json=list(alerts), timeout=5)
    assert r.status_code == 200, r.text


def am_alert(name: str, starts: datetime, ends: datetime | None = None, **labels: str) -> dict:
    a = {"labels": {"alertname": name, **labels}, "startsAt": iso(starts),
         "annotations": {"summary": f"{name} from a real Alertmanager"}}
    if ends is not None:
        a["endsAt"] = iso(ends)
    return a


ACTIONS = [{"match": {"alertname": "PoolDemandAboveCapacity"}, "action": "scale_out", "servers": 2, "for": "10m"},
           {"match": {"alertname": "BBBServerUnresponsive"}, "action": "replace_server"}]


def test_alertmanager_notifications_are_stored_once_and_queued_for_the_scaler(tmp_path):
    settings = make_settings(tmp_path / "w.sqlite", actions=ACTIONS)
    with served_webhook(settings) as hook, alertmanager(tmp_path, am_config(tmp_path, hook.url, TOKEN)) as am:
        started = datetime.now(UTC) - timedelta(seconds=5)
        demand = am_alert("PoolDemandAboveCapacity", started, severity="warning", pool="p1")
        down = am_alert("BBBServerUnresponsive", started, severity="error", pool="p1", server="bbb-2.p1.test")
        push(am, demand, down)
        wait_for(lambda: hook.store.count() == 2, what="both alerts stored")
        pending = wait_for(lambda: len(hook.queue.pending("p1")) == 2 and hook.queue.pending("p1"),
                           what="both requests queued")
        assert sorted((r.action, r.server, r.servers) for r in pending) == [
            ("replace_server", "bbb-2.p1.test", None), ("scale_out", None, 2)]
        stored = {a["alertname"]: a for a in hook.store.list()}
        assert stored["BBBServerUnresponsive"]["labels"]["server"] == "bbb-2.p1.test"
        assert stored["PoolDemandAboveCapacity"]["status"] == "firing"

        # Alertmanager re-sends the same alerts: nothing is duplicated.
        push(am, demand, down)
        time.sleep(2.5)
        assert hook.store.count() == 2 and len(hook.queue.all()) == 2

        # Resolve one: Alertmanager sends it resolved (send_resolved), the occurrence transitions.
        push(am, am_alert("BBBServerUnresponsive", started, datetime.now(UTC) - timedelta(seconds=1),
                          severity="error", pool="p1", server="bbb-2.p1.test"))
        wait_for(lambda: hook.store.list(status="resolved"), what="the resolved notification")
        [resolved] = hook.store.list(status="resolved")
        assert [t["status"] for t in resolved["transitions"]] == ["firing", "resolved"]
        assert resolved["ends_at"] is not None
        assert hook.store.count() == 2 and len(hook.queue.all()) == 2


def test_a_wrong_token_in_alertmanager_stores_nothing(tmp_path):
    settings = make_settings(tmp_path / "w.sqlite", actions=ACTIONS)
    with served_webhook(settings) as hook, \
            alertmanager(tmp_path, am_config(tmp_path, hook.url, "not-the-token")) as am:
        push(am, am_alert("PoolDemandAboveCapacity", datetime.now(UTC), severity="warning", pool="p1"))

        def rejected() -> bool:
            text = requests.get(f"{hook.url}/metrics", timeout=5).text
            return 'divims_webhook_rejected_total{reason="unauthorized"} 1.0' in text
        wait_for(rejected, what="the 401")
        assert hook.store.count() == 0 and hook.queue.all() == []


def test_a_receiver_restart_loses_nothing(tmp_path):
    settings = make_settings(tmp_path / "w.sqlite", actions=ACTIONS)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with alertmanager(tmp_path, am_config(tmp_path, url, TOKEN)) as am:
        started = datetime.now(UTC)
        # The receiver is down: Alertmanager's delivery fails and is retried.
        push(am, am_alert("PoolDemandAboveCapacity", started, severity="warning", pool="p1"))
        time.sleep(2.0)
        with served_webhook(settings, port=port) as hook:
            wait_for(lambda: hook.store.count() == 1, what="the retried notification")
            assert len(hook.queue.pending("p1")) == 1
            push(am, am_alert("BBBServerUnresponsive", started, severity="error", pool="p1", server="bbb-1.p1.test"))
            wait_for(lambda: hook.store.count() == 2, what="the second alert")
        # Restarted on the same database: history and queue are intact, replays add nothing.
        with served_webhook(settings, port=port) as again:
            assert again.store.count() == 2 and len(again.queue.all()) == 2
            push(am, am_alert("BBBServerUnresponsive", started, severity="error", pool="p1",
                              server="bbb-1.p1.test", extra="changes-the-group"))
            wait_for(lambda: again.store.count() == 3, what="a new alert after the restart")
            assert len(again.queue.all()) == 3
