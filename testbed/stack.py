"""The whole divims stack on the testbed, on loopback: the simulated pool in this process; the exporter,
the scaler and the webhook as `divims` subprocesses; a real Prometheus and a real Alertmanager.

Used by `divims demo` and by the end-to-end test. Everything it starts, `stop()` ends.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from testbed.pool import TestbedOptions, TestbedPool
from testbed.world import Delays

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def find_binary(*names: str) -> str | None:
    for name in names:
        path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
        if path:
            return path
    return None


@dataclass
class StackOptions:
    workdir: str
    slots: int = 12
    trace: str | None = None
    acceleration: float = 60.0
    scaler_interval_seconds: float = 2.0
    exporter_interval_seconds: float = 1.0
    scrape_interval: str = "1s"
    boot_seconds: float = 3.0
    alert_for: str = "5s"          # `for:` of the fast alerts in the demo/e2e rule overrides
    actions: list[dict] = field(default_factory=lambda: [
        {"match": {"alertname": "BBBServerUnresponsive"}, "action": "replace_server"},
        {"match": {"alertname": "PoolDemandAboveCapacity"}, "action": "scale_out", "servers": 1,
         "for": "10m"},
    ])
    services: tuple[str, ...] = ("exporter", "webhook", "scaler", "prometheus", "alertmanager")
    size_min: int = 1


class Stack:
    """Starts the simulated pool and every service around it; `stop()` ends all of them."""

    def __init__(self, options: StackOptions):
        self.o = options
        self.workdir = Path(options.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports = {name: free_port() for name in
                      ("exporter", "scaler", "webhook", "prometheus", "alertmanager")}
        self.token = os.urandom(16).hex()
        delays = Delays(poweron_seconds=options.boot_seconds, bbb_boot_seconds=1.0, poweroff_seconds=0.5,
                        terminate_seconds=0.5, recording_seconds=2.0)
        self.pool = TestbedPool(TestbedOptions(slots=options.slots, trace=options.trace,
                                               acceleration=options.acceleration, delays=delays,
                                               workdir=str(self.workdir / "testbed")))
        self.config_path = self.workdir / "divims.yml"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    # --- configuration ---------------------------------------------------------------------
    def _divims_config(self) -> dict:
        a = self.o.acceleration
        # The trace runs `a` times faster than real time: the policy's clocks shrink with it.
        scaler = {
            "listen": f"127.0.0.1:{self.ports['scaler']}", "interval_seconds": self.o.scaler_interval_seconds,
            "state_dir": str(self.workdir / "scaler"), "boot_time_seconds": max(self.o.boot_seconds + 2, 1),
            "scale_in_window_seconds": max(900 / a, 4), "growth_window_seconds": max(1800 / a, 6),
            "lock_ttl_seconds": 30, "request_poll_seconds": 0.25,
        }
        extra = {
            "pools": [{"size": {"min": self.o.size_min, "max": self.o.slots},
                       "lifecycle": {"min_billed_seconds": 3600 / a, "billing_hour_seconds": 3600 / a, "unresponsive_after_seconds": 6,
                                     "replacements_per_hour": 30}}],
            "exporter": {"listen": f"127.0.0.1:{self.ports['exporter']}",
                         "interval_seconds": self.o.exporter_interval_seconds, "timeout_seconds": 2,
                         "ssh_interval_seconds": 2},
            "scaler": scaler,
            "alerting": {"webhook": {"listen": f"127.0.0.1:{self.ports['webhook']}", "token": "${WEBHOOK_TOKEN}",
                                     "database": str(self.workdir / "webhook.sqlite")},
                         "actions": [self._scaled_action(r) for r in self.o.actions],
                         "max_actions_per_hour": 100},
        }
        return self.pool.config_dict(prometheus_url=self.url("prometheus"), extra=extra)

    def _scaled_action(self, rule: dict) -> dict:
        """An action's `for` is in trace time: shrink it with the clock, as the policy's windows."""
        if "for" not in rule:
            return rule
        from divims.config import parse_duration

        return {**rule, "for": max(parse_duration(rule["for"]) / self.o.acceleration, 1.0)}

    def _fast_rules(self) -> list[str]:
        """The shipped rules, with every alert's `for:` shortened to the accelerated clock."""
        out_dir = self.workdir / "rules"
        out_dir.mkdir(exist_ok=True)
        paths = []
        for src in sorted((ROOT / "alerting" / "rules").glob("*.yml")) + sorted(
                (ROOT / "exporter" / "rules").glob("*.yml")):
            doc = yaml.safe_load(src.read_text()) or {}
            for group in doc.get("groups", []):
                for rule in group.get("rules", []):
                    if "alert" in rule and "for" in rule:
                        rule["for"] = self.o.alert_for
            dst = out_dir / f"{src.parent.parent.name}-{src.name}"
            dst.write_text(yaml.safe_dump(doc, sort_keys=False))
            paths.append(str(dst))
        return paths

    def _prometheus_config(self) -> dict:
        rules = self._fast_rules()
        return {
            "global": {"scrape_interval": self.o.scrape_interval, "evaluation_interval": self.o.scrape_interval},
            "rule_files": rules,
            "alerting": {"alertmanagers": [{"static_configs": [
                {"targets": [f"127.0.0.1:{self.ports['alertmanager']}"]}]}]},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{self.ports[name]}"]}]}
                for job, name in (("divims-exporter", "exporter"), ("divims-scaler", "scaler"),
                                  ("divims-webhook", "webhook"))],
        }

    def _alertmanager_config(self) -> dict:
        token_file = self.workdir / "webhook-token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        return {
            "route": {"receiver": "divims", "group_by": ["alertname", "pool", "server"], "group_wait": "1s",
                      "group_interval": "2s", "repeat_interval": "1h"},
            "receivers": [{"name": "divims", "webhook_configs": [{
                "url": f"{self.url('webhook')}/alertmanager", "send_resolved": True,
                "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}}]}],
        }

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCW_")}
        env.update(self.pool.environment())
        env["WEBHOOK_TOKEN"] = self.token
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> Stack:
        self.pool.start()
        self.config_path.write_text(yaml.safe_dump(self._divims_config(), sort_keys=False))
        self.config_path.chmod(0o600)
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(self._prometheus_config()))
        (self.workdir / "alertmanager.yml").write_text(yaml.safe_dump(self._alertmanager_config()))
        divims = [sys.executable, "-m", "divims.cli"]
        cfg = ["--config", str(self.config_path)]
        commands = {
            "exporter": divims + ["exporter", *cfg, "--listen", f"127.0.0.1:{self.ports['exporter']}"],
            "webhook": divims + ["webhook", *cfg, "--listen", f"127.0.0.1:{self.ports['webhook']}"],
            "scaler": divims + ["scaler", "run", *cfg, "--listen", f"127.0.0.1:{self.ports['scaler']}"],
            "prometheus": [find_binary("prometheus") or "prometheus",
                           f"--config.file={self.workdir / 'prometheus.yml'}",
                           f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                           f"--web.listen-address=127.0.0.1:{self.ports['prometheus']}",
                           "--rules.alert.resend-delay=1s", "--web.enable-lifecycle"],
            "alertmanager": [find_binary("prometheus-alertmanager", "alertmanager") or "prometheus-alertmanager",
                             f"--config.file={self.workdir / 'alertmanager.yml'}",
                             f"--storage.path={self.workdir / 'alertmanager-data'}",
                             f"--web.listen-address=127.0.0.1:{self.ports['alertmanager']}",
                             "--cluster.listen-address="],
        }
        for name in self.o.services:
            logf = open(self.workdir / f"{name}.log", "ab")
            self.procs[name] = subprocess.Popen(commands[name], stdout=logf, stderr=subprocess.STDOUT,
                                                env=self.environment(), cwd=ROOT, start_new_session=True)
            logf.close()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        checks = {"exporter": "/healthz", "webhook": "/healthz", "scaler": "/healthz",
                  "prometheus": "/-/ready", "alertmanager": "/-/ready"}
        deadline = time.monotonic() + timeout
        for name in self.o.services:
            while True:
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}: see {self.workdir / (name + '.log')}"
                                       f"\n{self.log_tail(name)}")
                try:
                    if requests.get(self.url(name) + checks[name], timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout:.0f} s\n{self.log_tail(name)}")
                time.sleep(0.2)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 10
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self.pool.stop()

    def __enter__(self) -> Stack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- reading the services' own APIs ------------------------------------------------------
    def query(self, expr: str) -> list[dict]:
        r = requests.get(self.url("prometheus") + "/api/v1/query", params={"query": expr}, timeout=5)
        r.raise_for_status()
        return r.json()["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def alerts(self, **params) -> list[dict]:
        r = requests.get(self.url("webhook") + "/alerts", params=params,
                         headers={"Authorization": f"Bearer {self.token}"}, timeout=5)
        r.raise_for_status()
        return r.json()["alerts"]

    def journal(self) -> list[dict]:
        path = self.workdir / "scaler" / "journal.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
