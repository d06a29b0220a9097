"""The Alertmanager webhook receiver: a Flask application factory, nothing global.

`create_app(settings, store, requests_queue)` builds the app; `alerting.cli` serves it with waitress.
POST /alertmanager answers 200 only once the notification is durably stored (and its requests handed
to the scaler's queue), 5xx when storing failed so that Alertmanager retries, and 400/401/413/415 for
input it must not retry; a rejected notification stores nothing.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from alerting.actions import ActionDispatcher, ActionMapper, compile_rules
from alerting.database import StoreError
from alerting.payload import PayloadError, parse_notification, parse_timestamp
from alerting.requests import RequestQueue
from alerting.store import AlertStore

log = logging.getLogger(__name__)

REJECT_REASONS = ("unauthorized", "too_large", "unsupported_media_type", "malformed_json", "invalid_payload",
                  "store_failed")


class _Metrics:
    """The receiver's own metrics, in the app's own registry (several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.notifications = Counter("divims_webhook_notifications", "Alertmanager notifications stored",
                                     ["status"], registry=self.registry)
        self.rejected = Counter("divims_webhook_rejected", "Webhook requests rejected, by reason",
                                ["reason"], registry=self.registry)
        self.actions = Counter("divims_webhook_actions", "Alert-driven action requests, by action and result",
                               ["action", "result"], registry=self.registry)
        self.duration = Histogram("divims_webhook_request_duration_seconds",
                                  "Time to handle a POST /alertmanager", registry=self.registry,
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
        for status in ("firing", "resolved"):
            self.notifications.labels(status)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)


class _Authenticator:
    """Checks the Authorization header in constant time. Holds the credentials; never shows them."""

    def __init__(self, webhook: Any):
        self.mode = webhook.auth
        self._token = b""
        self._user = self._password = b""
        if self.mode == "bearer":
            if webhook.token is None or not webhook.token.get_secret_value():
                raise ValueError("alerting.webhook.token: required when auth is bearer")
            self._token = webhook.token.get_secret_value().encode()
        elif self.mode == "basic":
            if webhook.basic_auth is None:
                raise ValueError("alerting.webhook.basic_auth: required when auth is basic")
            self._user = webhook.basic_auth.username.encode()
            self._password = webhook.basic_auth.password.get_secret_value().encode()

    def ok(self, header: str | None) -> bool:
        if self.mode == "none":
            return True
        scheme, _, value = (header or "").strip().partition(" ")
        value = value.strip().encode()
        if self.mode == "bearer":
            return scheme.lower() == "bearer" and hmac.compare_digest(value, self._token)
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(value, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        # Both comparisons always run, so the time does not tell which part was wrong.
        user_ok = hmac.compare_digest(user, self._user)
        password_ok = hmac.compare_digest(password, self._password)
        return bool(sep) and user_ok and password_ok

    def challenge(self) -> str:
        return 'Basic realm="divims"' if self.mode == "basic" else 'Bearer realm="divims"'

    def __repr__(self) -> str:
        return f"_Authenticator(mode={self.mode!r})"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    for k, v in (headers or {}).items():
        response.headers[k] = v
    return response


def create_app(settings: Any, store: AlertStore, requests_queue: RequestQueue | None = None,
               now: Callable[[], float] = time.time, multiprocess_dir: str | None = None) -> Flask:
    """The webhook application for `settings` (divims.config.Settings with alerting.webhook set),
    storing into `store` and handing action requests to `requests_queue` (None: actions are only
    counted, never requested). With `multiprocess_dir` (one of several worker processes, started with
    PROMETHEUS_MULTIPROC_DIR set to it), /metrics shows the sum over every worker of the directory.
    Raises ValueError when the webhook section is missing or incomplete, or `multiprocess_dir` is not
    this process's PROMETHEUS_MULTIPROC_DIR (prometheus_client reads it once, at import)."""
    webhook = settings.alerting.webhook
    if webhook is None:
        raise ValueError("alerting.webhook: not configured (set at least its token and database)")
    if multiprocess_dir is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR") != multiprocess_dir:
        raise ValueError(f"multiprocess metrics: PROMETHEUS_MULTIPROC_DIR must be {multiprocess_dir!r}"
                         " before prometheus_client is imported")
    auth = _Authenticator(webhook)
    max_body = int(webhook.max_body_bytes)
    dispatcher = ActionDispatcher(ActionMapper(compile_rules(settings.alerting.actions),
                                               [p.name for p in settings.pools]), requests_queue)
    metrics = _Metrics()

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = max_body
    app.json.sort_keys = False
    app.extensions["divims_webhook"] = {"metrics": metrics, "store": store, "queue": requests_queue}

    def reject(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> Response:
        metrics.rejected.labels(reason).inc()
        log.warning("webhook %s %s from %s: %d %s: %s", request.method, request.path, request.remote_addr,
                    status, reason, message)
        return _error(status, message, headers)

    def authorized() -> bool:
        return auth.ok(request.headers.get("Authorization"))

    @app.post("/alertmanager")
    def receive() -> Response:
        started = time.perf_counter()
        try:
            return handle_notification()
        finally:
            metrics.duration.observe(time.perf_counter() - started)

    def handle_notification() -> Response:
        if not authorized():
            return reject(401, "unauthorized", "missing or wrong credentials",
                          {"WWW-Authenticate": auth.challenge()})
        if request.content_length is not None and request.content_length > max_body:
            return reject(413, "too_large", f"body of {request.content_length} bytes is over {max_body}")
        if request.mimetype != "application/json":
            return reject(415, "unsupported_media_type",
                          f"expected Content-Type application/json, got {request.mimetype or 'none'!r}")
        try:
            raw = request.get_data(cache=False)
        except RequestEntityTooLarge:
            return reject(413, "too_large", f"body is over {max_body} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return reject(400, "malformed_json", f"malformed JSON: {exc}"[:200])
        except RecursionError:  # nested deeper than Python's json parser goes: not an Alertmanager payload
            return reject(400, "malformed_json", "malformed JSON: nested too deeply")
        try:
            notification = parse_notification(body)
        except PayloadError as exc:
            return reject(400, "invalid_payload", str(exc)[:300])
        received = now()
        try:
            changes = store.record(notification.alerts, received)
            outcomes = [r for alert in notification.alerts for r in dispatcher.dispatch(alert, received)]
        except StoreError as exc:
            # 5xx: Alertmanager retries, and recording and submitting are idempotent.
            return reject(503, "store_failed", f"could not store the notification: {exc}"[:300])
        metrics.notifications.labels(notification.status).inc()
        for action, result in outcomes:
            metrics.actions.labels(action, result).inc()
        changed = sum(1 for c in changes if c.kind != "unchanged")
        if changed:
            log.info("webhook: stored %s notification from receiver %s: %d alerts, %d changed",
                     notification.status, notification.receiver, len(notification.alerts), changed)
        # json.dumps + Response, not jsonify: same body, a fraction of the cost on the hot path
        return Response(json.dumps({"status": "ok", "alerts": len(notification.alerts), "changed": changed}),
                        mimetype="application/json")

    @app.get("/alerts")
    def list_alerts() -> Response:
        if not authorized():
            return reject(401, "unauthorized", "missing or wrong credentials",
                          {"WWW-Authenticate": auth.challenge()})
        args = request.args
        status = args.get("status") or None
        if status not in (None, "firing", "resolved"):
            return _error(400, f"status: expected firing or resolved, got {status[:20]!r}")
        since = None
        if args.get("since"):
            since = _parse_since(args["since"])
            if since is None:
                return _error(400, "since: expected epoch seconds or an RFC 3339 time")
        try:
            limit = int(args.get("limit", "1000"))
        except ValueError:
            limit = -1
        if not 1 <= limit <= 10000:
            return _error(400, "limit: expected an integer from 1 to 10000")
        try:
            alerts = store.list(status=status, alertname=args.get("alertname") or None, since=since,
                                limit=limit)
        except StoreError as exc:
            log.error("webhook: listing alerts failed: %s", exc)
            return _error(503, "the alert store is unavailable")
        return jsonify({"alerts": alerts})

    @app.get("/healthz")
    def healthz() -> Response:
        try:
            store.ping()
        except StoreError as exc:
            log.error("webhook: health check failed: %s", exc)
            return _error(503, "the alert store is unavailable")
        return jsonify({"status": "ok"})

    @app.get("/metrics")
    def metrics_page() -> Response:
        if multiprocess_dir is None:
            return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)
        # every worker's counters, read from their files (the dead ones' too: counters never go back)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=multiprocess_dir)
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if isinstance(exc, RequestEntityTooLarge):
            metrics.rejected.labels("too_large").inc()
        return _error(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        # A bug, not bad input: log it with its traceback here, answer without one.
        log.exception("webhook %s %s: unexpected error", request.method, request.path)
        return _error(500, "internal error")

    return app


def _parse_since(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        ts = parse_timestamp(text, "since")
    except PayloadError:
        return None
    return ts.epoch if ts else None
