"""The shipped recording rules are valid and compute what their names say (promtool test rules)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

RULES = Path(__file__).resolve().parent.parent / "exporter" / "rules" / "recording.yml"

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")]


def test_promtool_check_rules():
    out = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()


def test_rules_compute_pool_sums_and_capacity_in_use(tmp_path):
    series = [
        ('bbb_meetings_participants{pool="p1",server="a"}', "100"),
        ('bbb_meetings_participants{pool="p1",server="b"}', "50"),
        ('bbb_meetings_participants{pool="p2",server="c"}', "7"),
        ('bbb_meetings{pool="p1",server="a"}', "3"),
        ('bbb_meetings{pool="p1",server="b"}', "2"),
        ('bbb_api_up{pool="p1",server="a"}', "1"),
        ('bbb_api_up{pool="p1",server="b"}', "0"),
        ('divims_pool_capacity_participants{pool="p1"}', "500"),
        ('divims_pool_capacity_participants{pool="p2"}', "0"),
        ('divims_pool_capacity_meetings{pool="p1"}', "30"),
        ('bbb_recordings_processing{pool="p1",server="a"}', "1"),
        ('bbb_recordings_unprocessed{pool="p1",server="a"}', "2"),
        ('bbb_recordings_unpublished_transfers{pool="p1",server="a"}', "3"),
        ('scaleway_server_hourly_price_euros{pool="p1",server="a"}', "0.5"),
        ('scaleway_server_hourly_price_euros{pool="p1",server="b"}', "0.25"),
        ('scaleway_server_hourly_price_euros{pool="p1",server="c"}', "1"),
        ('scaleway_server_state{pool="p1",server="a",state="stopped"}', "0"),
        ('scaleway_server_state{pool="p1",server="b",state="stopped"}', "0"),
        ('scaleway_server_state{pool="p1",server="c",state="stopped"}', "1"),
        ('scaleway_server_state{pool="p1",server="a",state="running"}', "1"),
    ]
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [{"series": s, "values": f"{v}x4"} for s, v in series],
            "promql_expr_test": [
                {"expr": "pool:bbb_meetings_participants:sum", "eval_time": "30s",
                 "exp_samples": [{"labels": 'pool:bbb_meetings_participants:sum{pool="p1"}', "value": 150},
                                 {"labels": 'pool:bbb_meetings_participants:sum{pool="p2"}', "value": 7}]},
                {"expr": "pool:capacity_participants_in_use:ratio", "eval_time": "30s",
                 "exp_samples": [{"labels": 'pool:capacity_participants_in_use:ratio{pool="p1"}',
                                  "value": 0.3}]},  # p2 has no capacity: no ratio
                {"expr": "pool:capacity_meetings_in_use:ratio", "eval_time": "30s",
                 "exp_samples": [{"labels": 'pool:capacity_meetings_in_use:ratio{pool="p1"}',
                                  "value": 5 / 30}]},
                {"expr": "pool:bbb_api_up:ratio", "eval_time": "30s",
                 "exp_samples": [{"labels": 'pool:bbb_api_up:ratio{pool="p1"}', "value": 0.5}]},
                {"expr": "pool:bbb_recordings_unfinished:sum", "eval_time": "30s",
                 "exp_samples": [{"labels": 'pool:bbb_recordings_unfinished:sum{pool="p1"}', "value": 6}]},
                {"expr": "pool:scaleway_hourly_cost_euros:sum", "eval_time": "30s",
                 "exp_samples": [{"labels": 'pool:scaleway_hourly_cost_euros:sum{pool="p1"}', "value": 0.75}]},
                {"expr": "pool:scaleway_servers_running:sum", "eval_time": "30s",
                 "exp_samples": [{"labels": 'pool:scaleway_servers_running:sum{pool="p1"}', "value": 1}]},
            ],
        }],
    }
    path = tmp_path / "recording_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    out = subprocess.run(["promtool", "test", "rules", str(path)], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
