"""The receiver over HTTP (Flask behind waitress on loopback): auth, bad input, storage, listing, metrics."""

from __future__ import annotations

import base64
import json
import logging

import pytest
import requests
from alerting_fixtures import TOKEN, alert, auth_headers, make_settings, notification, served_webhook

from alerting.app import create_app
from alerting.database import StoreError
from alerting.store import AlertStore

T0 = 1_800_000_000.0


@pytest.fixture
def hook(tmp_path):
    settings = make_settings(tmp_path / "w.sqlite", max_body_bytes=64 * 1024, actions=[
        {"match": {"alertname": "DemandAboveCapacity"}, "action": "scale_out", "servers": 2, "for": "30m"},
        {"match": {"alertname": "BBBServerUnresponsive"}, "action": "replace_server"}])
    with served_webhook(settings, now=lambda: T0) as served:
        yield served


def post(hook, body, headers=None, raw=None, content_type="application/json"):
    h = {"Content-Type": content_type, **auth_headers(), **(headers or {})}
    data = raw if raw is not None else json.dumps(body)
    return requests.post(f"{hook.url}/alertmanager", data=data, headers=h, timeout=5)


def metric(hook, name: str, **labels: str) -> float:
    text = requests.get(f"{hook.url}/metrics", timeout=5).text
    want = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def test_a_notification_is_stored_once_and_listed(hook):
    body = notification(alert("A", instance="1"), alert("B", instance="2"))
    r = post(hook, body)
    assert r.status_code == 200 and r.json()["alerts"] == 2
    assert post(hook, body).status_code == 200  # Alertmanager repeats: nothing changes
    listed = requests.get(f"{hook.url}/alerts", headers=auth_headers(), timeout=5).json()["alerts"]
    assert {a["alertname"] for a in listed} == {"A", "B"}
    first = listed[0]
    for key in ("fingerprint", "alertname", "status", "starts_at", "ends_at", "labels", "annotations"):
        assert key in first
    assert first["ends_at"] is None and first["status"] == "firing"
    assert hook.store.count() == 2 and hook.store.transition_count() == 2
    assert metric(hook, "divims_webhook_notifications_total", status="firing") == 2


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Basic {base64.b64encode(TOKEN.encode()).decode()}"},
    {"Authorization": TOKEN},
    {"Authorization": f"Bearer {TOKEN}x"},
])
def test_without_the_right_token_401_and_nothing_stored(hook, headers, caplog):
    caplog.set_level(logging.DEBUG)
    h = {"Content-Type": "application/json", **headers}
    if "Authorization" not in headers:
        h["Authorization"] = ""
    r = requests.post(f"{hook.url}/alertmanager", data=json.dumps(notification(alert("A"))), headers=h, timeout=5)
    assert r.status_code == 401 and "error" in r.json()
    assert TOKEN not in r.text
    assert requests.get(f"{hook.url}/alerts", headers=headers, timeout=5).status_code == 401
    assert hook.store.count() == 0
    assert metric(hook, "divims_webhook_rejected_total", reason="unauthorized") >= 1
    assert TOKEN not in caplog.text


@pytest.mark.parametrize("raw, content_type, status, reason", [
    ("{not json", "application/json", 400, "malformed_json"),
    (b"\xff\xfe\x00garbage", "application/json", 400, "malformed_json"),
    (json.dumps({"status": "firing", "alerts": []}), "application/json", 400, "invalid_payload"),
    (json.dumps({"version": "4", "alerts": []}), "application/json", 400, "invalid_payload"),
    (json.dumps({"version": "4", "status": "firing"}), "application/json", 400, "invalid_payload"),
    # a valid first alert and a broken second one: the whole notification is refused
    (json.dumps(notification(alert("A"), {**alert("B"), "startsAt": "soon"})), "application/json", 400,
     "invalid_payload"),
    (json.dumps(notification(alert("A"))), "text/plain", 415, "unsupported_media_type"),
    ("a=b", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    (json.dumps(notification(alert("A", pad="x" * 70_000))), "application/json", 413, "too_large"),
])
def test_bad_input_gets_its_status_and_stores_nothing(hook, raw, content_type, status, reason):
    r = post(hook, None, raw=raw, content_type=content_type)
    assert r.status_code == status
    assert isinstance(r.json()["error"], str) and r.json()["error"]
    assert hook.store.count() == 0 and hook.queue.all() == []
    assert metric(hook, "divims_webhook_rejected_total", reason=reason) == 1


def test_a_chunked_body_over_the_limit_is_413(hook):
    def chunks():
        for _ in range(100):
            yield b"x" * 1024

    r = requests.post(f"{hook.url}/alertmanager", data=chunks(), timeout=5,
                      headers={"Content-Type": "application/json", **auth_headers()})
    assert r.status_code == 413
    assert hook.store.count() == 0


def test_mapped_alerts_become_requests_for_the_scaler(hook):
    body = notification(alert("DemandAboveCapacity", pool="p1"),
                        alert("BBBServerUnresponsive", server="bbb-3.p1.test"),
                        alert("BBBServerUnresponsive", fingerprint="noserver"),
                        alert("SomethingElse"))
    assert post(hook, body).status_code == 200
    assert post(hook, body).status_code == 200
    pending = hook.queue.pending("p1", T0 + 1)
    assert [(r.action, r.servers, r.server) for r in pending] == [
        ("scale_out", 2, None), ("replace_server", None, "bbb-3.p1.test")]
    assert pending[0].until == T0 + 1800
    assert metric(hook, "divims_webhook_actions_total", action="scale_out", result="submitted") == 1
    assert metric(hook, "divims_webhook_actions_total", action="scale_out", result="duplicate") == 1
    assert metric(hook, "divims_webhook_actions_total", action="replace_server", result="no_server") == 2


def test_alerts_listing_filters_and_validates(hook):
    post(hook, notification(alert("A"), alert("B")))
    post(hook, notification(alert("A", status="resolved")))
    get = lambda q: requests.get(f"{hook.url}/alerts?{q}", headers=auth_headers(), timeout=5)  # noqa: E731
    assert [a["alertname"] for a in get("status=resolved").json()["alerts"]] == ["A"]
    assert [a["alertname"] for a in get("alertname=B").json()["alerts"]] == ["B"]
    assert [a["alertname"] for a in get("since=2026-03-01T10:30:00Z&status=firing").json()["alerts"]] == ["B"]
    assert len(get("since=0").json()["alerts"]) == 2
    for bad in ("status=sleeping", "since=tomorrow", "limit=0", "limit=x"):
        r = get(bad)
        assert r.status_code == 400 and "error" in r.json()


def test_healthz_needs_no_auth_and_unknown_paths_are_json(hook):
    assert requests.get(f"{hook.url}/healthz", timeout=5).json() == {"status": "ok"}
    r = requests.get(f"{hook.url}/nope", timeout=5)
    assert r.status_code == 404 and "error" in r.json()
    assert requests.get(f"{hook.url}/alertmanager", timeout=5).status_code == 405


def test_basic_auth_is_an_option(tmp_path):
    settings = make_settings(tmp_path / "w.sqlite", auth="basic")
    with served_webhook(settings) as h:
        good = base64.b64encode(f"am:{TOKEN}".encode()).decode()
        bad = base64.b64encode(f"am:{TOKEN}!".encode()).decode()
        for creds, status in ((good, 200), (bad, 401), ("!!notbase64", 401)):
            r = requests.post(f"{h.url}/alertmanager", json=notification(alert("A")), timeout=5,
                              headers={"Authorization": f"Basic {creds}"})
            assert r.status_code == status
        assert 'Basic realm' in r.headers["WWW-Authenticate"]
        assert h.store.count() == 1


class FailingStore(AlertStore):
    def record(self, alerts, received_at=None):
        raise StoreError("database /x: write failed: disk I/O error")


def test_a_storage_failure_is_a_5xx_so_alertmanager_retries(tmp_path):
    settings = make_settings(tmp_path / "w.sqlite")
    store = FailingStore(tmp_path / "w.sqlite")
    client = create_app(settings, store).test_client()
    r = client.post("/alertmanager", json=notification(alert("A")), headers=auth_headers())
    assert r.status_code == 503 and "error" in r.get_json()
    assert store.count() == 0
    store.close()


def test_create_app_refuses_a_missing_webhook_section(tmp_path):
    settings = make_settings(tmp_path / "w.sqlite")
    bare = settings.model_copy(update={"alerting": settings.alerting.model_copy(update={"webhook": None})})
    with pytest.raises(ValueError, match="alerting.webhook"):
        create_app(bare, AlertStore(tmp_path / "w.sqlite"))
