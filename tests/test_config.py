"""`divims config check` and the configuration loader: valid files, and one clear line per problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from divims.config import ConfigError, load_config, parse_config, parse_duration

ROOT = Path(__file__).resolve().parents[1]
ENV = {"SCALELITE_SECRET": "sl-secret-123456", "BBB_SECRET": "bbb-secret-abcdef",
       "DIVIMS_WEBHOOK_TOKEN": "tok-0987654321"}

BASE = """
pools:
  - name: main
    scalelite:
      url: https://scalelite.example.org
      secret: ${SCALELITE_SECRET}
    scaleway:
      zone: fr-par-1
      project_id: 11111111-2222-3333-4444-555555555555
      image: bbb-template
      commercial_type: PRO2-M
      hostname_template: bbb-{n}
      domain_template: bbb-{n}.example.org
    capacity: {participants_per_server: 250, meetings_per_server: 15}
    size: {min: 1, max: 20}
prometheus: {url: http://127.0.0.1:9090}
"""


def check(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    path = tmp_path / "divims.yml"
    path.write_text(text)
    path.chmod(0o600)
    return subprocess.run([sys.executable, "-m", "divims.cli", "config", "check", "--config", str(path)],
                          capture_output=True, text=True, env={**os.environ, **ENV, **(env or {})},
                          cwd=ROOT, timeout=60)


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, environ=ENV)
    return info.value.problems


def test_minimal_config_is_valid_with_defaults():
    s = parse_config(BASE, environ=ENV)
    pool = s.pools[0]
    assert pool.lifecycle.meetings_max_duration_minutes == 600
    assert pool.lifecycle.recordings_max_processing_minutes == 300
    assert pool.lifecycle.recycle_uptime_seconds == 7 * 86400
    assert pool.lifecycle.unresponsive_after_seconds == 360
    assert (pool.tls.warning_days, pool.tls.alert_days) == (15, 5)
    assert s.scaler.interval_seconds == 60
    assert pool.scalelite.secret.get_secret_value() == "sl-secret-123456"
    assert "sl-secret-123456" not in repr(s)


def test_example_config_is_valid_and_summarised(tmp_path):
    r = check(tmp_path, (ROOT / "examples" / "divims.yml").read_text())
    assert r.returncode == 0, r.stderr
    assert "configuration is valid" in r.stdout
    assert "pool main: 1..20 servers of PRO2-M in fr-par-1" in r.stdout
    assert "2 weekly periods" in r.stdout
    for secret in ENV.values():
        assert secret not in r.stdout + r.stderr


@pytest.mark.parametrize(("text", "expected"), [
    (BASE.replace("zone: fr-par-1", "zone: amsterdam"),
     "pools[0].scaleway.zone: expected a zone like fr-par-1, got 'amsterdam'"),
    (BASE.replace("image: bbb-template", "imgae: bbb-template"),
     "pools[0].scaleway.imgae: unknown key (did you mean 'image'?)"),
    (BASE.replace("participants_per_server: 250", "participants_per_server: lots"),
     "pools[0].capacity.participants_per_server: expected an integer, got 'lots'"),
    (BASE.replace("      image: bbb-template\n", ""), "pools[0].scaleway.image: required key is missing"),
    (BASE.replace("size: {min: 1, max: 20}", "size: {min: 21, max: 20}"),
     "pools[0].size: min (21) must not exceed max (20)"),
    (BASE.replace("hostname_template: bbb-{n}", "hostname_template: bbb"),
     "pools[0].scaleway.hostname_template: must contain {n} (the slot number), got 'bbb'"),
    (BASE.replace("prometheus: {url: http://127.0.0.1:9090}", "prometheus: {url: 127.0.0.1}"),
     "prometheus.url: expected an http(s) URL, got '127.0.0.1'"),
    (BASE + "scaler: {interval_seconds: soon}\n",
     "scaler.interval_seconds: expected a duration like 90s, 15m, 2h or 7d, got 'soon'"),
    (BASE + "unknown_top: 1\n", "unknown_top: unknown key"),
    (BASE.replace("${SCALELITE_SECRET}", "${NOT_SET_ANYWHERE}"),
     "pools[0].scalelite.secret: environment variable NOT_SET_ANYWHERE is not set"),
])
def test_each_kind_of_bad_input_names_its_key_path(text, expected):
    assert expected in problems(text)


def test_several_problems_are_all_reported():
    text = BASE.replace("zone: fr-par-1", "zone: x").replace("size: {min: 1, max: 20}", "size: {min: 3}")
    found = problems(text)
    assert any(p.startswith("pools[0].scaleway.zone:") for p in found)
    assert "pools[0].size.max: required key is missing" in found


def test_yaml_syntax_error_gives_the_line(tmp_path):
    r = check(tmp_path, BASE + "exporter: {listen: [unclosed\n")
    assert r.returncode == 2
    assert "YAML syntax error at line" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_file_is_one_line_exit_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "divims.cli", "config", "check", "--config",
                        str(tmp_path / "nope.yml")], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == f"{tmp_path / 'nope.yml'}: no such file"


def test_cli_bad_config_exit_2_without_traceback_or_secret(tmp_path):
    r = check(tmp_path, BASE.replace("zone: fr-par-1", "zone: amsterdam"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "pools[0].scaleway.zone: expected a zone like fr-par-1, got 'amsterdam'"]
    assert "sl-secret-123456" not in r.stdout + r.stderr


def test_a_secret_with_a_wrong_type_is_not_echoed():
    found = problems(BASE.replace("secret: ${SCALELITE_SECRET}", "secret: [sl-secret-123456]"))
    assert found and all("sl-secret-123456" not in p for p in found)


def test_env_substitution_with_default():
    s = parse_config(BASE.replace("bbb-template", "${IMAGE:-bbb-default}"), environ=ENV)
    assert s.pools[0].scaleway.image == "bbb-default"


def test_config_from_env_variable(tmp_path, monkeypatch):
    path = tmp_path / "c.yml"
    path.write_text(BASE)
    monkeypatch.setenv("DIVIMS_CONFIG", str(path))
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    assert load_config().pools[0].name == "main"


def test_readable_file_with_secret_literal_warns(tmp_path, caplog):
    path = tmp_path / "c.yml"
    path.write_text(BASE.replace("${SCALELITE_SECRET}", "literal-secret-value"))
    path.chmod(0o644)
    load_config(str(path), environ=ENV)
    assert any("readable by group or others" in r.getMessage() for r in caplog.records)
    assert all("literal-secret-value" not in r.getMessage() for r in caplog.records)


def test_weekly_schedule_and_slot_templates():
    text = BASE.replace("    size: {min: 1, max: 20}", """    size: {min: 1, max: 20}
    schedule:
      timezone: Europe/Paris
      weekly:
        - {days: [mon, tue], from: "07:45", to: "12:00", participants: 2400}""")
    pool = parse_config(text, environ=ENV).pools[0]
    assert pool.schedule.weekly[0].from_ == "07:45"
    assert pool.slot_name(3) == "bbb-3"
    assert pool.slot_url(3) == "https://bbb-3.example.org/bigbluebutton/api"
    assert pool.slot_of_name("bbb-12") == 12
    assert pool.slot_of_name("bbb-120") is None  # above size.max
    assert pool.slot_of_name("bbb-03") is None
    assert pool.slot_of_host("BBB-7.example.org") == 7
    assert pool.slot_of_host("other.example.org") is None
    bad = text.replace('from: "07:45", to: "12:00"', 'from: "12:00", to: "07:45"')
    assert any("must be after" in p for p in problems(bad))


@pytest.mark.parametrize(("value", "seconds"), [(90, 90), ("90s", 90), ("15m", 900), ("2h", 7200),
                                                ("7d", 604800), ("1.5h", 5400)])
def test_parse_duration(value, seconds):
    assert parse_duration(value) == seconds


def test_duplicate_pool_names_rejected():
    text = BASE + BASE.split("pools:\n", 1)[1].split("prometheus:")[0]
    text = text.replace("prometheus: {url: http://127.0.0.1:9090}\n", "") + "prometheus: {}\n"
    assert any("pool names must be unique" in p for p in problems(text))


def test_webhook_bearer_needs_token():
    assert any("set token" in p for p in problems(BASE + "alerting: {webhook: {auth: bearer}}\n"))


def test_readme_configuration_reference_is_current():
    from divims.config_doc import with_reference

    readme = (ROOT / "README.md").read_text()
    assert with_reference(readme) == readme, "run: python -m divims.config_doc --write README.md"
