"""The shipped alert rules and Alertmanager configuration: promtool / amtool pass, and every rule is
unit-tested firing and not firing, with a severity and summary/description annotations."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ALERTING = Path(__file__).resolve().parent.parent / "alerting"
RULE_FILES = sorted((ALERTING / "rules").glob("*.yml"))
TEST_FILES = sorted((ALERTING / "rules" / "tests").glob("*.yml"))
SEVERITIES = {"info", "warning", "error", "critical"}


def alert_rules() -> list[dict]:
    rules = []
    for f in RULE_FILES:
        for group in yaml.safe_load(f.read_text())["groups"]:
            rules += [r for r in group["rules"] if "alert" in r]
    return rules


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (make system-deps)")
    return path


def test_every_rule_has_a_severity_and_annotations():
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for r in rules:
        assert r.get("labels", {}).get("severity") in SEVERITIES, r["alert"]
        assert r.get("annotations", {}).get("summary"), r["alert"]
        assert r.get("annotations", {}).get("description"), r["alert"]


def test_the_divims_mail_cases_are_covered():
    names = {r["alert"] for r in alert_rules()}
    for case in ("BBBServerUnresponsive", "BBBServerMalfunctioning", "BBBRecordingProcessingFailed",
                 "BBBRecordingProcessingTooLong", "BBBTLSCertificateExpiringSoon", "BBBTLSCertificateExpiring",
                 "BBBServerUptimeOverRecycleLimit", "PoolDemandAboveCapacity", "PoolAtMaximumSizeAndShort",
                 "DivimsScalerNotRunning", "DivimsScalerStale", "DivimsScalerActionsFailing",
                 "ScalewayAPIErrors", "ScaleliteUnreachable", "DivimsExporterDown",
                 "DivimsScheduleFeedUnavailable", "BBBServerInMaintenance"):
        assert case in names


def test_every_rule_is_unit_tested_firing_and_not_firing():
    firing: set[str] = set()
    silent: set[str] = set()
    for f in TEST_FILES:
        for test in yaml.safe_load(f.read_text())["tests"]:
            for check in test.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), "rules never shown firing"
    assert names - silent == set(), "rules never shown not firing"


@pytest.mark.integration
def test_promtool_checks_the_rules():
    r = subprocess.run([tool("promtool"), "check", "rules", *map(str, RULE_FILES)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@pytest.mark.integration
def test_promtool_unit_tests_pass():
    r = subprocess.run([tool("promtool"), "test", "rules", *map(str, TEST_FILES)], capture_output=True,
                       text=True, timeout=120, cwd=ALERTING / "rules" / "tests")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.integration
def test_promtool_catches_a_broken_rule(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("groups: [{name: x, rules: [{alert: X, expr: 'sum by (pool (up)'}]}]\n")
    r = subprocess.run([tool("promtool"), "check", "rules", str(broken)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0


@pytest.mark.integration
def test_amtool_checks_the_alertmanager_config():
    r = subprocess.run([tool("amtool"), "check-config", str(ALERTING / "alertmanager.yml")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_alertmanager_config_routes_every_severity_to_the_webhook_with_a_token():
    conf = yaml.safe_load((ALERTING / "alertmanager.yml").read_text())
    receivers = {r["name"]: r for r in conf["receivers"]}
    hook = receivers["divims"]["webhook_configs"][0]
    assert hook["url"].endswith("/alertmanager") and hook["send_resolved"] is True
    assert hook["http_config"]["authorization"]["type"] == "Bearer"
    assert "email" in receivers
    routed = {m for r in conf["route"]["routes"] for m in r["matchers"] if r["receiver"] == "divims"}
    assert routed == {f'severity="{s}"' for s in SEVERITIES}
