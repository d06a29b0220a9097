"""The Grafana dashboards: valid Grafana 11 JSON, queries that parse, and no drift from the generator."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # grafana/ is not an installed package: import it from the checkout
    sys.path.insert(0, str(ROOT))

from grafana import generate, queries  # noqa: E402

DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
EXPECTED_UIDS = {"divims-pool", "divims-server", "divims-scaler", "divims-cost", "divims-alerts"}
PANEL_TYPES = {"timeseries", "stat", "table"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RECORDING_RULES = ROOT / "exporter" / "rules" / "recording.yml"
# A metric-name-looking token: what a query reads (functions and keywords are filtered below).
_IDENT = re.compile(r"(?<![\w:$.\"])([a-zA-Z_:][a-zA-Z0-9_:]*)(?=\s*[{\[)\s]|$)")


def _boards() -> list[dict]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in DASHBOARDS]


def _panels():
    for board in _boards():
        for panel in board["panels"]:
            yield board, panel


def test_every_dashboard_is_committed_and_loads():
    assert {p.name for p in DASHBOARDS} == set(generate.DASHBOARDS)
    assert {b["uid"] for b in _boards()} == EXPECTED_UIDS


def test_committed_json_equals_generator_output():
    assert generate.drifted() == [], "run: python grafana/generate.py"


def test_drift_is_detected(tmp_path):
    generate.write_all(tmp_path)
    assert generate.drifted(tmp_path) == []
    board = json.loads((tmp_path / "cost.json").read_text())
    board["title"] = "edited by hand"
    (tmp_path / "cost.json").write_text(json.dumps(board))
    (tmp_path / "stray.json").write_text("{}")
    assert generate.drifted(tmp_path) == ["cost.json", "stray.json"]
    assert generate.main(["--check", "--out", str(tmp_path)]) == 1


def test_dashboards_use_the_grafana_11_schema():
    for board in _boards():
        assert board["schemaVersion"] >= 39, board["uid"]
        assert board["title"].startswith("divims / ")
        assert "divims" in board["tags"]
        names = [v["name"] for v in board["templating"]["list"]]
        assert names[0] == "datasource"
        assert board["templating"]["list"][0]["type"] == "datasource"
        assert board["templating"]["list"][0]["query"] == "prometheus"
        assert "pool" in names, board["uid"]


def test_pool_and_server_variables_come_from_label_values():
    for board in _boards():
        for var in board["templating"]["list"][1:]:
            assert var["type"] == "query"
            assert var["datasource"] == DATASOURCE
            assert var["definition"].startswith("label_values(")
            assert var["definition"].rstrip(")").endswith(f", {var['name']}")
            assert var["query"]["query"] == var["definition"]
            assert var["includeAll"] and var["allValue"] == ".*"
    server = next(b for b in _boards() if b["uid"] == "divims-server")
    assert [v["name"] for v in server["templating"]["list"]] == ["datasource", "pool", "server"]


def test_uids_and_panel_ids_are_unique_and_titles_distinct():
    uids = [b["uid"] for b in _boards()]
    assert len(uids) == len(set(uids))
    for board in _boards():
        ids = [p["id"] for p in board["panels"]]
        titles = [p["title"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), board["uid"]
        assert len(titles) == len(set(titles)), board["uid"]


def test_every_panel_has_the_datasource_variable_and_valid_targets():
    for board, panel in _panels():
        where = f"{board['uid']}/{panel['title']}"
        assert panel["type"] in PANEL_TYPES, where
        assert panel["datasource"] == DATASOURCE, where
        assert panel["description"], where
        assert panel["targets"], where
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), where
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, where
            assert target["expr"].strip(), where
            assert target["expr"].count("(") == target["expr"].count(")"), where
        if panel["type"] == "table":
            assert all(t["instant"] and t["format"] == "table" for t in panel["targets"]), where


def test_panels_fit_the_grid_without_overlapping():
    for board in _boards():
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            g = panel["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            assert not cells & mine, f"{board['uid']}/{panel['title']} overlaps"
            cells |= mine


def test_panel_level_time_overrides_give_today_and_this_month():
    cost = next(b for b in _boards() if b["uid"] == "divims-cost")
    by_title = {p["title"]: p for p in cost["panels"]}
    assert by_title["Server-hours today"]["timeFrom"] == "now/d"
    assert by_title["Server-hours this month"]["timeFrom"] == "now/M"
    assert "$__range" in by_title["Server-hours today"]["targets"][0]["expr"]


def test_every_query_reads_only_contract_metrics_or_shipped_recording_rules():
    contract = {
        "scalelite_up", "scalelite_server_state", "scalelite_server_online", "scalelite_server_load",
        "scalelite_server_load_multiplier", "bbb_api_up", "bbb_meetings", "bbb_meetings_participants",
        "bbb_meetings_voice_participants", "bbb_meetings_video_participants", "bbb_meetings_listeners",
        "bbb_meetings_moderators", "bbb_meetings_largest_participants", "bbb_api_latency_seconds",
        "bbb_ssh_up", "bbb_recordings_processing", "bbb_recordings_unprocessed",
        "bbb_recordings_unpublished_transfers", "bbb_recordings_failed", "bbb_node_load1", "bbb_node_cpus",
        "bbb_node_uptime_seconds", "bbb_services_healthy", "bbb_tls_certificate_expiry_timestamp_seconds",
        "scaleway_up", "scaleway_server_state", "scaleway_server_info",
        "scaleway_server_state_changed_timestamp_seconds", "scaleway_server_hourly_price_euros",
        "divims_exporter_poll_duration_seconds", "divims_exporter_last_success_timestamp_seconds",
        "divims_exporter_poll_errors_total", "divims_scaler_desired_servers", "divims_scaler_active_servers",
        "divims_scaler_actions_total", "divims_scaler_cycle_duration_seconds",
        "divims_scaler_last_cycle_timestamp_seconds", "divims_scaler_hold", "divims_scaler_errors_total",
        "divims_webhook_notifications_total", "divims_webhook_actions_total", "ALERTS",
        # the exporter's pool capacity (enabled servers x the capacity settings)
        "divims_pool_capacity_participants", "divims_pool_capacity_meetings",
    }
    recorded = {r["record"] for g in yaml.safe_load(RECORDING_RULES.read_text())["groups"]
                for r in g["rules"] if "record" in r}
    not_metrics = {"sum", "max", "min", "count", "by", "on", "rate", "increase", "time", "vector", "round",
                   "sum_over_time", "max_over_time", "count_over_time", "group_left", "or", "and", "bool"}
    for uid, title, expr in queries.all_panel_queries(expand_variables=False):
        without_strings = re.sub(r'"[^"]*"', '""', expr)
        without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
        without_groupings = re.sub(r"\b(by|on|group_left)\s*\([^)]*\)", "", without_labels)
        names = {m for m in _IDENT.findall(without_groupings) if m not in not_metrics}
        unknown = names - contract - recorded
        assert not unknown, f"{uid}/{title}: {sorted(unknown)} in {expr}"


def test_key_series_are_charted():
    exprs = " ".join(e for _, _, e in queries.all_panel_queries())
    for needle in ('divims_scaler_desired_servers', 'term="final"', "divims_scaler_actions_total",
                   "divims_scaler_hold", "divims_pool_capacity_participants", "scaleway_server_state",
                   "scalelite_server_state", "bbb_tls_certificate_expiry_timestamp_seconds",
                   "pool:scaleway_hourly_cost_euros:sum", 'ALERTS{alertstate="firing"'):
        assert needle in exprs, needle


def test_expand_replaces_grafana_variables_and_names_unknown_ones():
    assert queries.expand('rate(x{pool=~"$pool"}[$__rate_interval])') == 'rate(x{pool=~".*"}[1m])'
    assert queries.expand("y[${__range}:1m]") == "y[1h:1m]"
    with pytest.raises(KeyError, match=r"\$nope"):
        queries.expand("z{a=~\"$nope\"}")
    assert all("$" not in e for _, _, e in queries.all_panel_queries())


def test_all_panel_queries_lists_every_target():
    targets = sum(len(p["targets"]) for _, p in _panels())
    listed = queries.all_panel_queries()
    assert len(listed) == targets
    assert {uid for uid, _, _ in listed} == EXPECTED_UIDS


def test_provisioning_points_at_the_dashboards_and_prometheus():
    ds = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http://prometheus:9090")
    prov = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/divims.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert any(m.endswith(":" + provider["options"]["path"] + ":ro") and m.startswith("./grafana/dashboards")
               for m in mounts), mounts


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (scripts/install-system-deps.sh installs it)")
    return path


@pytest.mark.integration
def test_every_panel_query_parses_as_promql(tmp_path):
    # promtool has no expression-only check: each query becomes a recording rule of a rules file.
    rules = [{"record": f"divims:dashboard_query_{i}", "expr": expr}
             for i, (_, _, expr) in enumerate(queries.all_panel_queries())]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    done = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


@pytest.mark.integration
def test_a_broken_query_fails_the_promql_check(tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [
        {"record": "divims:broken", "expr": queries.expand('sum by (pool) (bbb_meetings{pool=~"$pool"}')}]}]}))
    done = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0


@pytest.mark.integration
def test_recording_rules_pass_promtool():
    done = subprocess.run([_promtool(), "check", "rules", str(RECORDING_RULES)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
