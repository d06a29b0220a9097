"""Builders for the alerting tests: settings from YAML, Alertmanager v4 payloads, a served webhook."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from alerting.app import create_app
from alerting.cli import WebhookServer
from alerting.database import Database
from alerting.requests import RequestQueue
from alerting.store import AlertStore
from divims.config import parse_config

TOKEN = "s3cr3t-webhook-token-abcdef"  # a test secret: must never show up in logs or answers


def pool_dict(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "scalelite": {"url": f"https://scalelite.{name}.test", "secret": f"scalelite-secret-{name}"},
        "scaleway": {"zone": "fr-par-1", "project_id": "11111111-2222-3333-4444-555555555555",
                     "image": "bbb-image", "commercial_type": "GP1-S",
                     "hostname_template": f"{name}-bbb-{{n}}", "domain_template": f"bbb-{{n}}.{name}.test"},
        "size": {"min": 1, "max": 10},
    }


def make_settings(database: Path | str, actions: list[dict[str, Any]] | None = None, pools: tuple[str, ...] = ("p1",),
                  auth: str = "bearer", max_actions_per_hour: int = 20, **webhook: Any):
    """Settings validated by divims.config, as `divims webhook --config` would load them."""
    hook: dict[str, Any] = {"auth": auth, "database": str(database), **webhook}
    if auth == "bearer":
        hook.setdefault("token", TOKEN)
    if auth == "basic":
        hook.setdefault("basic_auth", {"username": "am", "password": TOKEN})
    doc = {"pools": [pool_dict(p) for p in pools],
           "alerting": {"webhook": hook, "actions": actions or [], "max_actions_per_hour": max_actions_per_hour}}
    return parse_config(yaml.safe_dump(doc), source="test.yml")


def alert(name: str, status: str = "firing", starts_at: str = "2026-03-01T10:00:00.123Z",
          ends_at: str | None = None, fingerprint: str | None = None, **labels: str) -> dict[str, Any]:
    """One alert as Alertmanager 0.25 sends it (firing ones carry Go's zero time in endsAt)."""
    all_labels = {"alertname": name, "severity": "warning", **labels}
    fp = fingerprint or hashlib.sha256(repr(sorted(all_labels.items())).encode()).hexdigest()[:16]
    return {"status": status, "labels": all_labels,
            "annotations": {"summary": f"{name} summary", "description": f"{name} description"},
            "startsAt": starts_at,
            "endsAt": ends_at or ("0001-01-01T00:00:00Z" if status == "firing" else "2026-03-01T11:00:00Z"),
            "generatorURL": "http://prometheus.test/graph", "fingerprint": fp}


def notification(*alerts: dict[str, Any], status: str | None = None, **extra: Any) -> dict[str, Any]:
    st = status or ("firing" if any(a["status"] == "firing" for a in alerts) else "resolved")
    common = alerts[0]["labels"] if alerts else {}
    return {"receiver": "divims", "status": st, "alerts": list(alerts), "groupLabels": {},
            "commonLabels": common, "commonAnnotations": {}, "externalURL": "http://alertmanager.test",
            "version": "4", "groupKey": '{}:{alertname="x"}', "truncatedAlerts": 0, **extra}


def auth_headers(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Served:
    url: str
    store: AlertStore
    queue: RequestQueue
    db: Database
    app: Any
    server: WebhookServer


@contextmanager
def served_webhook(settings, now=None, threads: int = 8, port: int = 0) -> Iterator[Served]:
    """The real receiver behind waitress on a free loopback port; closes everything afterwards."""
    hook = settings.alerting.webhook
    db = Database(hook.database)
    store = AlertStore(db, retention_days=hook.retention_days)
    queue = RequestQueue(db, max_actions_per_hour=settings.alerting.max_actions_per_hour)
    kwargs = {"now": now} if now is not None else {}
    app = create_app(settings, store, queue, **kwargs)
    server = WebhookServer(app, "127.0.0.1", port, threads=threads, max_body_bytes=hook.max_body_bytes).start()
    try:
        yield Served(server.url, store, queue, db, app, server)
    finally:
        server.close()
        db.close()
