"""Matrix row 8 (secrets) and the HTTP-surface part of the security list.

Every service runs on the testbed with known secret values (Scalelite, BBB, Scaleway, the webhook token,
an SSH key passphrase); then every log line, every /metrics page, every HTTP answer (good and bad
requests), every series in Prometheus, the decision journal and the error messages of failing commands
(wrong Scaleway key, wrong Scalelite secret, wrong SSH passphrase, a bad config) are scanned for them.
Figure: 0 hits.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml
from reliability_fixtures import read_all, record_figure, secret_hits, wait_for

from testbed.stack import ROOT, Stack, StackOptions, find_binary

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not (find_binary("prometheus") and find_binary("prometheus-alertmanager")),
                       reason="needs Debian's prometheus and prometheus-alertmanager"),
]

PASSPHRASE = "pass-PHRASE-7f3c9a1e-do-not-log"
WRONG = {  # secrets of failing runs: they must not show up either
    "SCW_SECRET_KEY": "0b7e2c4a-1d3f-4e5a-9b8c-7d6e5f4a3b2c",
    "SCALELITE_SECRET": "wrong-scalelite-secret-5e1d2c3b4a",
    "SSH_KEY_PASSPHRASE": "wrong-passphrase-91ab27cd",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    opts = StackOptions(workdir=str(tmp_path_factory.mktemp("secrets")), slots=4,
                        trace=str(ROOT / "testbed" / "traces" / "school-day.csv"), acceleration=600.0,
                        scaler_interval_seconds=1.0, boot_seconds=1.0, size_min=2)
    s = Stack(opts)
    s.pool.options.ssh_key_passphrase = PASSPHRASE  # the BBB hosts' SSH key is encrypted
    with s:
        yield s


def known_secrets(stack: Stack) -> list[str]:
    from divims.config import load_config

    env = stack.environment()
    import os
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        configured = load_config(str(stack.config_path)).secret_values()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    values = {stack.pool.scalelite_secret, stack.pool.scaleway_secret_key, stack.pool.world.bbb_secret,
              stack.token, PASSPHRASE, *configured, *WRONG.values()}
    return sorted(v for v in values if v and len(v) >= 8)


def divims(stack: Stack, *args: str, env: dict[str, str] | None = None, config: Path | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess:
    e = stack.environment()
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "divims.cli", *args, "--config", str(config or stack.config_path)],
                          capture_output=True, text=True, env=e, cwd=ROOT, timeout=timeout)


def http_answers(stack: Stack) -> dict[str, str]:
    """Every service's routes, with and without credentials, good and bad requests."""
    out: dict[str, str] = {}
    auth = {"Authorization": f"Bearer {stack.token}"}

    def get(name: str, url: str, **kw) -> None:
        r = requests.get(url, timeout=5, **kw)
        out[name] = f"{r.status_code} {dict(r.headers)} {r.text}"

    for svc in ("exporter", "scaler", "webhook"):
        for path in ("/", "/metrics", "/healthz", "/nope"):
            get(f"{svc} GET {path}", stack.url(svc) + path)
    get("webhook GET /alerts (auth)", stack.url("webhook") + "/alerts", headers=auth)
    get("webhook GET /alerts (no auth)", stack.url("webhook") + "/alerts")
    get("webhook GET /alerts (bad args)", stack.url("webhook") + "/alerts?limit=x&since=y", headers=auth)
    hook = stack.url("webhook") + "/alertmanager"
    for name, headers, body in (
            ("no auth", {}, "{}"),
            ("wrong token", {"Authorization": "Bearer " + WRONG["SCALELITE_SECRET"]}, "{}"),
            ("bad json", auth, "{nope"),
            ("bad payload", auth, json.dumps({"alerts": [{"labels": {"x": stack.token[:3]}}]})),
            ("good", auth, json.dumps({"version": "4", "status": "firing", "receiver": "divims", "alerts": [
                {"status": "firing", "labels": {"alertname": "SecretScan"}, "annotations": {},
                 "startsAt": "2026-03-01T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "fingerprint": "ab12"}]}))):
        r = requests.post(hook, data=body, headers={"Content-Type": "application/json", **headers}, timeout=5)
        out[f"webhook POST /alertmanager ({name})"] = f"{r.status_code} {dict(r.headers)} {r.text}"
    series = requests.get(stack.url("prometheus") + "/api/v1/series", params={"match[]": '{__name__=~".+"}'},
                          timeout=10)
    out["prometheus every series"] = series.text
    out["prometheus rules"] = requests.get(stack.url("prometheus") + "/api/v1/rules", timeout=5).text
    out["alertmanager alerts"] = requests.get(stack.url("alertmanager") + "/api/v2/alerts", timeout=5).text
    return out


def error_runs(stack: Stack, tmp: Path) -> dict[str, str]:
    """Commands that fail because a secret is wrong or the config is bad: their whole output."""
    out: dict[str, str] = {}

    def keep(name: str, p: subprocess.CompletedProcess) -> None:
        out[name] = f"rc={p.returncode}\n{p.stdout}\n{p.stderr}"

    # The runs are independent: side by side (each is a Python start-up), during the exporter's 6 s.
    doc = yaml.safe_load(stack.config_path.read_text())
    # A config whose secrets sit where validation fails: the error names the path, not the value.
    doc["pools"][0]["scalelite"]["secret"] = {"nested": WRONG["SCALELITE_SECRET"]}
    doc["alerting"]["webhook"]["token"] = [WRONG["SCW_SECRET_KEY"]]
    doc["pools"][0]["scalelite"]["timeout_seconds"] = "soon"  # and a plain error beside them
    bad = tmp / "bad.yml"
    bad.write_text(yaml.safe_dump(doc))
    bad.chmod(0o600)
    runs = {
        "config check": dict(args=("config", "check")),
        "plan (good)": dict(args=("scaler", "plan", "--json")),
        "plan (wrong Scaleway key)": dict(args=("scaler", "plan", "--json"),
                                          env={"SCW_SECRET_KEY": WRONG["SCW_SECRET_KEY"]}),
        "plan (wrong Scalelite secret)": dict(args=("scaler", "plan"),
                                              env={"SCALELITE_SECRET": WRONG["SCALELITE_SECRET"]}),
        "config check (bad config)": dict(args=("config", "check"), config=bad),
        "scaler once (bad config)": dict(args=("scaler", "once"), config=bad),
    }
    # The exporter with a wrong passphrase: SSH polls fail; run it a few seconds and keep its log.
    e = stack.environment()
    e["SSH_KEY_PASSPHRASE"] = WRONG["SSH_KEY_PASSPHRASE"]
    proc = subprocess.Popen([sys.executable, "-m", "divims.cli", "exporter", "--config", str(stack.config_path),
                             "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=e, cwd=ROOT)
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(max_workers=len(runs)) as ex:
            futures = {name: ex.submit(divims, stack, *r["args"], env=r.get("env"), config=r.get("config"))
                       for name, r in runs.items()}
            for name, fut in futures.items():
                keep(name, fut.result())
        time.sleep(max(0.0, 6 - (time.monotonic() - started)))
    finally:
        proc.terminate()
        try:
            text, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate(timeout=5)
    out["exporter (wrong SSH passphrase)"] = text
    return out


def ensure_serving(stack: Stack) -> None:
    """Registers every running VM in the fake Scalelite, enabled (what an operator would do), so that the
    exporter polls BBB over HTTP and SSH whatever the scaler decides meanwhile."""
    from testbed.scalelite import add_server, set_state

    world = stack.pool.world
    wait_for(lambda: sum(vm.state == "running" for vm in list(world.vms.values())) >= 2, 60, "two running VMs")
    with world.lock:
        known = {s.url for s in world.scalelite_servers.values()}
        for vm in world.vms.values():
            host = world.host_of_vm(vm)
            url = f"http://{host.host}:{stack.pool.bbb.port}/bigbluebutton/api"
            if vm.state == "running" and url not in known:
                set_state(add_server(world, url, world.bbb_secret), "enabled")


# Runs first: the scan below stops the stack to read its flushed logs.
def test_every_state_route_needs_auth_and_health_reveals_nothing(stack):
    """The webhook's /alertmanager and /alerts need the token; /metrics and /healthz of every service
    answer without it and reveal no secret; the exporter and scaler serve nothing else that changes state."""
    for path, method in (("/alertmanager", "post"), ("/alerts", "get")):
        r = getattr(requests, method)(stack.url("webhook") + path, timeout=5, json={})
        assert r.status_code == 401, (path, r.status_code)
    for svc in ("exporter", "scaler", "webhook"):
        for path in ("/metrics",):
            assert requests.get(stack.url(svc) + path, timeout=5).status_code == 200
        # Nothing on these ports accepts a write.
        r = requests.post(stack.url(svc) + "/metrics", data="x", timeout=5)
        assert r.status_code in (401, 404, 405, 501) or (svc == "scaler" and r.status_code == 200), (svc, r.status_code)
    secrets = known_secrets(stack)
    pages = {f"{s}{p}": requests.get(stack.url(s) + p, timeout=5).text
             for s in ("exporter", "scaler", "webhook") for p in ("/metrics", "/healthz")}
    assert secret_hits(secrets, pages) == []


def test_no_secret_in_logs_metrics_answers_journal_or_errors(stack, tmp_path):
    world = stack.pool.world
    ensure_serving(stack)
    # Proof that the passphrase-protected key is in use: the exporter's SSH polls succeed.
    wait_for(lambda: any(float(r["value"][1]) == 1 for r in stack.query("bbb_ssh_up")), 60,
             "an SSH poll with the passphrase-protected key")
    wait_for(lambda: len(stack.journal()) >= 3, 30, "three scaler cycles in the journal")
    # Faults make the services log errors (which is where secrets leak: URLs, request dumps).
    with world.lock:
        world.faults["scalelite"].fail_next = 3
        world.faults["scaleway"].fail_next = 3
    time.sleep(4)

    sources = http_answers(stack)
    sources.update(error_runs(stack, tmp_path))
    assert "rc=0" not in sources["plan (wrong Scaleway key)"] or "error" in sources["plan (wrong Scaleway key)"]
    assert "rc=2" in sources["config check (bad config)"]
    sources["journal"] = (stack.workdir / "scaler" / "journal.jsonl").read_text()
    stack.stop()  # flushes and closes every log
    sources.update(read_all(sorted(stack.workdir.glob("*.log"))))
    sources.update(read_all(sorted(stack.workdir.glob("*.yml"))))  # generated configs use ${ENV}, not values
    secrets = known_secrets(stack)
    hits = secret_hits(secrets, sources)
    size = sum(len(t) for t in sources.values())
    record_figure("8", f"{len(hits)} hits for {len(secrets)} secret values in {len(sources)} sources "
                       f"({size / 1024:.0f} KiB)", hits=len(hits), secrets=len(secrets), sources=len(sources))
    assert len(secrets) >= 8
    assert size > 50_000  # the scan had material: logs, metrics, series, journal
    assert hits == []
