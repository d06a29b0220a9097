"""Generates divims' Grafana dashboards (Grafana 11 JSON model) into grafana/dashboards/.

Plain dicts rather than grafanalib or grafana-foundation-sdk: the JSON model is small, this keeps the
project free of a dependency that lags Grafana's schema, and every field written here is one we chose.

    python grafana/generate.py            # (re)write grafana/dashboards/*.json
    python grafana/generate.py --check    # exit 1 if the committed JSON differs from the generator

Metric names are the exporter's, scaler's and webhook's contract (docs/architecture.md); pool-wide
series come from the recording rules in exporter/rules/recording.yml.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 39  # Grafana 11.0's dashboard schema
DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24

# Label matchers used by every per-pool query. `$pool` is multi-value with All = ".*".
P = 'pool=~"$pool"'
PS = 'pool=~"$pool", server=~"$server"'


@dataclass(frozen=True)
class Query:
    """One Prometheus target of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False  # tables and "now" stats read one instant, not a range

    def to_json(self, ref_id: str) -> dict[str, Any]:
        target: dict[str, Any] = {
            "refId": ref_id,
            "datasource": dict(DATASOURCE),
            "expr": self.expr,
            "legendFormat": self.legend or "__auto",
            "range": not self.instant,
            "instant": self.instant,
            "editorMode": "code",
        }
        if self.instant:
            target["format"] = "table"
        return target


@dataclass(frozen=True)
class Panel:
    """A panel before layout: its kind, queries and display options; `width`/`height` in grid units."""

    kind: str  # timeseries | stat | table
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    width: int = 12
    height: int = 8
    stack: bool = False
    thresholds: tuple[tuple[float | None, str], ...] = ((None, "green"),)
    decimals: int | None = None
    time_from: str | None = None  # panel-level relative time such as "now/d" (today so far)
    min_zero: bool = True
    transformations: tuple[dict[str, Any], ...] = ()
    overrides: tuple[dict[str, Any], ...] = field(default=())

    def to_json(self, panel_id: int, x: int, y: int) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "unit": self.unit,
            "thresholds": {
                "mode": "absolute",
                "steps": [{"color": color, "value": value} for value, color in self.thresholds],
            },
            "color": {"mode": "palette-classic" if self.kind == "timeseries" else "thresholds"},
            "mappings": [],
        }
        if self.decimals is not None:
            defaults["decimals"] = self.decimals
        if self.min_zero and self.kind != "table":
            defaults["min"] = 0
        if self.kind == "timeseries":
            defaults["custom"] = {
                "drawStyle": "line",
                "lineWidth": 1,
                "fillOpacity": 20 if self.stack else 10,
                "showPoints": "never",
                "spanNulls": False,
                "stacking": {"mode": "normal" if self.stack else "none", "group": "A"},
                "axisPlacement": "auto",
            }
            options: dict[str, Any] = {
                "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                           "calcs": ["lastNotNull", "max"]},
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
        elif self.kind == "stat":
            options = {
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "colorMode": "value",
                "graphMode": "area",
                "justifyMode": "auto",
                "orientation": "auto",
                "textMode": "auto",
                "wideLayout": True,
                "showPercentChange": False,
            }
        elif self.kind == "table":
            defaults["custom"] = {"align": "auto", "cellOptions": {"type": "auto"}, "filterable": True}
            options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
        else:
            raise ValueError(f"unknown panel kind {self.kind!r}")
        panel: dict[str, Any] = {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": dict(DATASOURCE),
            "gridPos": {"h": self.height, "w": self.width, "x": x, "y": y},
            "targets": [q.to_json(chr(ord("A") + i)) for i, q in enumerate(self.queries)],
            "fieldConfig": {"defaults": defaults, "overrides": list(self.overrides)},
            "options": options,
        }
        if self.time_from:
            panel["timeFrom"] = self.time_from
            panel["hideTimeOverride"] = False
        if self.transformations:
            panel["transformations"] = list(self.transformations)
        return panel


def timeseries(title: str, description: str, *queries: Query, **kw: Any) -> Panel:
    return Panel("timeseries", title, description, queries, **kw)


def stat(title: str, description: str, *queries: Query, **kw: Any) -> Panel:
    kw.setdefault("width", 4)
    kw.setdefault("height", 4)
    return Panel("stat", title, description, queries, **kw)


def table(title: str, description: str, *queries: Query, **kw: Any) -> Panel:
    """Instant queries, one value column per query (named by its legend), joined on their labels."""
    kw.setdefault("width", 24)
    # Grafana names a table query's value column "Value" when alone, "Value #<refId>" otherwise.
    if len(queries) == 1:
        rename = {"Value": queries[0].legend}
    else:
        rename = {f"Value #{chr(ord('A') + i)}": q.legend for i, q in enumerate(queries)}
    kw.setdefault("transformations", (
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {
            # The Time column of an instant query and the scrape labels say nothing here.
            "excludeByName": {"Time": True, "__name__": True, "job": True, "instance": True},
            "renameByName": rename,
            "indexByName": {},
        }},
    ))
    return Panel("table", title, description, queries, **kw)


def layout(panels: Sequence[Panel]) -> list[dict[str, Any]]:
    """Places panels left to right, wrapping at the grid's width; ids in reading order from 1."""
    out: list[dict[str, Any]] = []
    x = y = row_height = 0
    for panel_id, panel in enumerate(panels, start=1):
        if x + panel.width > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        out.append(panel.to_json(panel_id, x, y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return out


def datasource_variable() -> dict[str, Any]:
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": [], "includeAll": False,
            "multi": False}


def query_variable(name: str, label: str, query: str) -> dict[str, Any]:
    """A multi-value label_values variable whose All matches every value (regex .*)."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": dict(DATASOURCE),
        "definition": query,
        "query": {"query": query, "refId": f"divims-{name}", "qryType": 1},
        "refresh": 2,  # on time range change: new servers appear without reloading the dashboard
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


POOL_VARIABLE = query_variable("pool", "Pool", "label_values(scalelite_up, pool)")
SERVER_VARIABLE = query_variable("server", "Server", 'label_values(scalelite_server_state{pool=~"$pool"}, server)')


def dashboard(uid: str, title: str, description: str, panels: Sequence[Panel],
              variables: Sequence[dict[str, Any]] = (POOL_VARIABLE,), time_from: str = "now-6h",
              refresh: str = "30s") -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["divims", "bigbluebutton", "scalelite"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,  # shared crosshair: the same instant across panels
        "timezone": "browser",
        "time": {"from": time_from, "to": "now"},
        "refresh": refresh,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
            "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
            "type": "dashboard",
        }]},
        "links": [{"title": "divims", "type": "dashboards", "tags": ["divims"], "asDropdown": True,
                   "includeVars": True, "keepTime": True, "icon": "external link", "targetBlank": False,
                   "tooltip": "", "url": ""}],
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": layout(panels),
    }


# Servers Scalelite may place meetings on: enabled and online (0, not absent, when there are none).
_AVAILABLE = (f'sum by (pool) ((scalelite_server_state{{{P}, state="enabled"}} == bool 1) '
              f'* on (pool, server) (scalelite_server_online{{{P}}} == bool 1))')


def pool_overview() -> dict[str, Any]:
    panels = [
        stat("Participants", "Participants in all meetings of the selected pools, now.",
             Query(f"sum(pool:bbb_meetings_participants:sum{{{P}}})")),
        stat("Meetings", "Meetings (breakout rooms included) on the selected pools, now.",
             Query(f"sum(pool:bbb_meetings:sum{{{P}}})")),
        stat("Capacity in use", "Participants over the participant capacity of the enabled servers.",
             Query(f"sum(pool:bbb_meetings_participants:sum{{{P}}}) / sum(divims_pool_capacity_participants{{{P}}})"),
             unit="percentunit", thresholds=((None, "green"), (0.7, "orange"), (0.9, "red"))),
        stat("Servers available", "Servers Scalelite may place meetings on: enabled and online.",
             Query(f"sum({_AVAILABLE})")),
        stat("Scalelite reachable", "1 when the exporter's last Scalelite poll succeeded, for every pool.",
             Query(f"min(scalelite_up{{{P}}})"), thresholds=((None, "red"), (1, "green"))),
        stat("Scaleway reachable", "1 when the exporter's last Scaleway poll succeeded, for every pool.",
             Query(f"min(scaleway_up{{{P}}})"), thresholds=((None, "red"), (1, "green"))),
        timeseries("Participants against capacity",
                   "Participants per pool and the participant capacity of its enabled servers.",
                   Query(f"sum by (pool) (pool:bbb_meetings_participants:sum{{{P}}})", "{{pool}} participants"),
                   Query(f"sum by (pool) (divims_pool_capacity_participants{{{P}}})", "{{pool}} capacity")),
        timeseries("Meetings against capacity",
                   "Meetings per pool and the meeting capacity of its enabled servers.",
                   Query(f"sum by (pool) (pool:bbb_meetings:sum{{{P}}})", "{{pool}} meetings"),
                   Query(f"sum by (pool) (divims_pool_capacity_meetings{{{P}}})", "{{pool}} capacity")),
        timeseries("Servers by Scalelite state",
                   "Servers per Scalelite state (enabled, cordoned, disabled) and how many are online.",
                   Query(f"sum by (pool, state) (scalelite_server_state{{{P}}})", "{{pool}} {{state}}"),
                   Query(f"sum by (pool) (scalelite_server_online{{{P}}})", "{{pool}} online")),
        timeseries("Servers by Scaleway state",
                   "Scaleway instances of the pool's slots per state (running, starting, stopped, ...).",
                   Query(f"sum by (pool, state) (scaleway_server_state{{{P}}})", "{{pool}} {{state}}"),
                   stack=True),
        timeseries("Media", "Participants with audio, with video, and listening only, per pool.",
                   Query(f"sum by (pool) (bbb_meetings_voice_participants{{{P}}})", "{{pool}} voice"),
                   Query(f"sum by (pool) (bbb_meetings_video_participants{{{P}}})", "{{pool}} video"),
                   Query(f"sum by (pool) (bbb_meetings_listeners{{{P}}})", "{{pool}} listeners"),
                   Query(f"sum by (pool) (bbb_meetings_moderators{{{P}}})", "{{pool}} moderators")),
        timeseries("Largest meeting", "Participants of the largest meeting in each pool.",
                   Query(f"max by (pool) (bbb_meetings_largest_participants{{{P}}})", "{{pool}}")),
        timeseries("Exporter poll duration", "How long the exporter's last poll of each source took.",
                   Query(f"max by (pool, source) (divims_exporter_poll_duration_seconds{{{P}}})",
                         "{{pool}} {{source}}"), unit="s"),
        timeseries("Exporter poll errors", "Poll errors per second by source and kind of error.",
                   Query(f"sum by (pool, source, kind) (rate(divims_exporter_poll_errors_total{{{P}}}[$__rate_interval]))",
                         "{{pool}} {{source}} {{kind}}"), unit="reqps"),
        timeseries("Data age", "Seconds since the exporter last polled each source successfully.",
                   Query(f"time() - max by (pool, source) (divims_exporter_last_success_timestamp_seconds{{{P}}})",
                         "{{pool}} {{source}}"), unit="s", width=24),
    ]
    return dashboard("divims-pool", "divims / Pool overview",
                     "Participants and meetings against capacity; servers by Scalelite and Scaleway state.",
                     panels)


def server_detail() -> dict[str, Any]:
    panels = [
        table("Servers", "One row per server: Scalelite, BBB and host state now.",
              Query(f"max by (pool, server) (scalelite_server_online{{{PS}}})", "online", instant=True),
              Query(f"max by (pool, server) (scalelite_server_load{{{PS}}})", "load", instant=True),
              Query(f"max by (pool, server) (bbb_api_up{{{PS}}})", "BBB API up", instant=True),
              Query(f"max by (pool, server) (bbb_meetings{{{PS}}})", "meetings", instant=True),
              Query(f"max by (pool, server) (bbb_meetings_participants{{{PS}}})", "participants", instant=True),
              Query(f"max by (pool, server) (bbb_recordings_processing{{{PS}}})", "recordings processing",
                    instant=True),
              Query(f"(max by (pool, server) (bbb_tls_certificate_expiry_timestamp_seconds{{{PS}}}) - time()) / 86400",
                    "TLS days left", instant=True),
              height=9),
        timeseries("Meetings per server", "Meetings on each server (BBB getMeetings).",
                   Query(f"max by (pool, server) (bbb_meetings{{{PS}}})", "{{server}}")),
        timeseries("Participants per server", "Participants on each server.",
                   Query(f"max by (pool, server) (bbb_meetings_participants{{{PS}}})", "{{server}}")),
        timeseries("Scalelite load", "The load Scalelite computes for each server, times its load multiplier.",
                   Query(f"max by (pool, server) (scalelite_server_load{{{PS}}})", "{{server}}"),
                   Query(f"max by (pool, server) (scalelite_server_load_multiplier{{{PS}}})", "{{server}} multiplier")),
        timeseries("Host load per CPU", "1-minute load average over the number of CPUs (SSH).",
                   Query(f"max by (pool, server) (bbb_node_load1{{{PS}}}) / max by (pool, server) (bbb_node_cpus{{{PS}}})",
                         "{{server}}"), unit="percentunit"),
        timeseries("BBB API latency", "Latency of the exporter's getMeetings call to each server.",
                   Query(f"max by (pool, server) (bbb_api_latency_seconds{{{PS}}})", "{{server}}"), unit="s"),
        timeseries("Reachability", "BBB API, SSH and Scalelite's online flag, and BBB services health (1 = good).",
                   Query(f"min by (pool, server) (bbb_api_up{{{PS}}})", "{{server}} API"),
                   Query(f"min by (pool, server) (bbb_ssh_up{{{PS}}})", "{{server}} SSH"),
                   Query(f"min by (pool, server) (scalelite_server_online{{{PS}}})", "{{server}} online"),
                   Query(f"min by (pool, server) (bbb_services_healthy{{{PS}}})", "{{server}} services")),
        timeseries("Recordings", "Recordings processing, waiting, published but not transferred, and failed.",
                   Query(f"sum by (pool, server) (bbb_recordings_processing{{{PS}}})", "{{server}} processing"),
                   Query(f"sum by (pool, server) (bbb_recordings_unprocessed{{{PS}}})", "{{server}} unprocessed"),
                   Query(f"sum by (pool, server) (bbb_recordings_unpublished_transfers{{{PS}}})",
                         "{{server}} untransferred"),
                   Query(f"sum by (pool, server) (bbb_recordings_failed{{{PS}}})", "{{server}} failed")),
        timeseries("TLS certificate expiry", "Days until each server's TLS certificate expires (warn 15, alert 5).",
                   Query(f"(max by (pool, server) (bbb_tls_certificate_expiry_timestamp_seconds{{{PS}}}) - time()) / 86400",
                         "{{server}}"), unit="d", min_zero=False,
                   thresholds=((None, "red"), (5, "orange"), (15, "green"))),
        timeseries("Uptime", "Host uptime; servers are recycled past lifecycle.recycle_uptime_seconds.",
                   Query(f"max by (pool, server) (bbb_node_uptime_seconds{{{PS}}})", "{{server}}"), unit="s"),
        timeseries("Time in Scaleway state", "Seconds since each instance last changed Scaleway state.",
                   Query(f"time() - max by (pool, server) (scaleway_server_state_changed_timestamp_seconds{{{PS}}})",
                         "{{server}}"), unit="s"),
    ]
    return dashboard("divims-server", "divims / Server detail",
                     "Per-server meetings, load, recordings and TLS expiry.",
                     panels, variables=(POOL_VARIABLE, SERVER_VARIABLE))


def scaler() -> dict[str, Any]:
    panels = [
        stat("Desired servers", "The scaler's final decision: max(load, schedule, forecast), damped.",
             Query(f"sum(divims_scaler_desired_servers{{{P}, term=\"final\"}})"), width=6),
        stat("Active servers", "Servers the scaler counts as serving (enabled, online) or booting.",
             Query(f"sum(divims_scaler_active_servers{{{P}}})"), width=6),
        stat("Holds in force", "Reasons currently holding scale-in (or all actions).",
             Query(f"count(divims_scaler_hold{{{P}}} == 1) or vector(0)"),
             thresholds=((None, "green"), (1, "orange")), width=6),
        stat("Last cycle", "Seconds since the scaler last completed a cycle.",
             Query(f"time() - max(divims_scaler_last_cycle_timestamp_seconds{{{P}}})"), unit="s",
             thresholds=((None, "green"), (300, "orange"), (900, "red")), width=6),
        timeseries("Desired terms against active servers",
                   "Each term of the policy (load, schedule, forecast), the final decision, and the active servers.",
                   Query(f"max by (pool, term) (divims_scaler_desired_servers{{{P}}})", "{{pool}} {{term}}"),
                   Query(f"max by (pool) (divims_scaler_active_servers{{{P}}})", "{{pool}} active"),
                   width=24, height=9),
        timeseries("Actions", "Actions per interval by kind and result (ok, failed, skipped ...).",
                   Query(f"sum by (pool, action, result) (increase(divims_scaler_actions_total{{{P}}}[$__rate_interval]))",
                         "{{pool}} {{action}} {{result}}"), stack=True),
        timeseries("Holds", "1 while a hold is in force, by reason.",
                   Query(f"max by (pool, reason) (divims_scaler_hold{{{P}}})", "{{pool}} {{reason}}")),
        table("Actions in the time range", "Actions taken over the dashboard's time range.",
              Query(f"round(sum by (pool, action, result) (increase(divims_scaler_actions_total{{{P}}}[$__range])))",
                    "actions", instant=True), height=7),
        timeseries("Cycle duration", "How long the scaler's last cycle took, per pool.",
                   Query(f"max by (pool) (divims_scaler_cycle_duration_seconds{{{P}}})", "{{pool}}"), unit="s"),
        timeseries("Scaler errors", "Errors of the services the scaler calls, per second, by service and kind.",
                   Query(f"sum by (pool, service, kind) (rate(divims_scaler_errors_total{{{P}}}[$__rate_interval]))",
                         "{{pool}} {{service}} {{kind}}"), unit="reqps"),
        timeseries("Webhook", "Alertmanager notifications received and actions requested by the webhook.",
                   Query("sum by (status) (increase(divims_webhook_notifications_total[$__rate_interval]))",
                         "notifications {{status}}"),
                   Query("sum by (action, result) (increase(divims_webhook_actions_total[$__rate_interval]))",
                         "{{action}} {{result}}")),
    ]
    return dashboard("divims-scaler", "divims / Scaler",
                     "Each desired term against the active servers, the actions taken and the holds.", panels)


# Scaleway bills every state but (archived) stopped: starting and standby (stopped_in_place) count.
# Server-hours: this count sampled each minute, summed, over 60. The cost rule is the exporter's.
_BILLED = f'sum by (pool) (scaleway_server_state{{{P}, state!="stopped"}})'
_COST = f"pool:scaleway_hourly_cost_euros:sum{{{P}}}"


def _server_hours(window: str) -> str:
    return f"sum(sum_over_time({_BILLED}[{window}:1m])) / 60"


def cost() -> dict[str, Any]:
    lower_bound = " A lower bound: Scaleway bills each power-on period for at least an hour."
    panels = [
        stat("Billed servers", "Instances Scaleway bills now (every state but stopped).",
             Query(f"sum({_BILLED})"), width=6),
        stat("Cost per hour", "Billed servers times their hourly price, now.",
             Query(f"sum({_COST})"), unit="currencyEUR", decimals=2, width=6),
        stat("Server-hours today", "Billed server-hours since midnight." + lower_bound,
             Query(_server_hours("$__range")), time_from="now/d", decimals=1, width=6),
        stat("Server-hours this month", "Billed server-hours since the first of the month." + lower_bound,
             Query(_server_hours("$__range")), time_from="now/M", decimals=0, width=6),
        stat("Cost today", "Hourly cost integrated since midnight." + lower_bound,
             Query(f"sum(sum_over_time({_COST}[$__range:1m])) / 60"), time_from="now/d",
             unit="currencyEUR", decimals=2, width=6),
        stat("Cost this month", "Hourly cost integrated since the first of the month." + lower_bound,
             Query(f"sum(sum_over_time({_COST}[$__range:1m])) / 60"), time_from="now/M",
             unit="currencyEUR", decimals=0, width=6),
        stat("Savings against static",
             "1 - server-hours / (peak billed servers x hours) over the time range: what divims saved "
             "compared with keeping the peak running the whole time.",
             Query(f"1 - sum(sum_over_time({_BILLED}[$__range:1m])) / "
                   f"sum(max_over_time({_BILLED}[$__range:1m]) * count_over_time({_BILLED}[$__range:1m]))"),
             unit="percentunit", decimals=0, width=6),
        stat("Static cost in the range", "What the peak number of servers would have cost over the time range.",
             Query(f"sum(max_over_time({_COST}[$__range:1m]) * count_over_time({_COST}[$__range:1m])) / 60"),
             unit="currencyEUR", decimals=2, width=6),
        timeseries("Cost per hour over time", "Billed servers times their hourly price, per pool.",
                   Query(f"sum by (pool) ({_COST})", "{{pool}}"), unit="currencyEUR"),
        timeseries("Billed servers against the static peak",
                   "Billed servers per pool, and the most billed at once over the dashboard's range.",
                   Query(f"sum by (pool) ({_BILLED})", "{{pool}} billed"),
                   Query(f"max by (pool) (max_over_time({_BILLED}[$__range:1m]))", "{{pool}} static (peak)")),
        table("Instances by type", "Instances per commercial type and zone, and their hourly price.",
              Query(f"count by (pool, commercial_type, zone) (scaleway_server_info{{{P}}})", "instances",
                    instant=True),
              height=6),
    ]
    return dashboard("divims-cost", "divims / Cost",
                     "Billed servers x hourly price, server-hours today and this month, savings against static.",
                     panels, time_from="now-24h", refresh="1m")


# Alerts without a pool label (the scaler's, the exporter target's) show whatever pool is selected.
_ALERTS = 'ALERTS{alertstate="firing", pool=~"$pool|"}'


def alerts() -> dict[str, Any]:
    panels = [
        stat("Firing", "Alerts firing now.", Query(f"count({_ALERTS}) or vector(0)"),
             thresholds=((None, "green"), (1, "red")), width=6),
        stat("Critical", "Critical alerts firing now.",
             Query('count(ALERTS{alertstate="firing", severity="critical", pool=~"$pool|"}) or vector(0)'),
             thresholds=((None, "green"), (1, "red")), width=6),
        stat("Pending", "Alerts whose condition holds but not yet for their `for` duration.",
             Query('count(ALERTS{alertstate="pending", pool=~"$pool|"}) or vector(0)'),
             thresholds=((None, "green"), (1, "orange")), width=6),
        stat("Alert kinds", "Distinct alert names firing now.",
             Query(f"count(count by (alertname) ({_ALERTS})) or vector(0)"), width=6),
        table("Firing alerts", "Every firing alert with its labels, now.",
              Query(_ALERTS, "firing", instant=True), height=9),
        timeseries("Firing over time", "Firing alerts by name and severity.",
                   Query(f"sum by (alertname, severity) ({_ALERTS})", "{{alertname}} {{severity}}"),
                   stack=True),
        timeseries("Pending over time", "Pending alerts by name.",
                   Query('sum by (alertname) (ALERTS{alertstate="pending", pool=~"$pool|"})', "{{alertname}}"),
                   stack=True),
    ]
    return dashboard("divims-alerts", "divims / Alerts", "Prometheus ALERTS series for divims' rules.", panels,
                     time_from="now-24h")


# file name -> builder; the file name is what provisioning and the tests see.
DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "pool-overview.json": pool_overview,
    "server-detail.json": server_detail,
    "scaler.json": scaler,
    "cost.json": cost,
    "alerts.json": alerts,
}


def render(board: dict[str, Any]) -> str:
    """The exact committed text of a dashboard: stable key order, 2-space indent, final newline."""
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def build_all() -> dict[str, str]:
    """Every dashboard's file name and rendered JSON text."""
    return {name: render(build()) for name, build in DASHBOARDS.items()}


def drifted(directory: Path = DASHBOARD_DIR) -> list[str]:
    """File names in `directory` that are missing or differ from the generator's output, plus strays."""
    expected = build_all()
    bad = [name for name, text in expected.items()
           if not (directory / name).is_file() or (directory / name).read_text(encoding="utf-8") != text]
    strays = sorted(p.name for p in directory.glob("*.json") if p.name not in expected)
    return sorted(bad) + strays


def write_all(directory: Path = DASHBOARD_DIR) -> list[Path]:
    """Writes every dashboard into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in build_all().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed JSON is out of date")
    parser.add_argument("--out", type=Path, default=DASHBOARD_DIR, help="output directory")
    args = parser.parse_args(argv)
    if args.check:
        bad = drifted(args.out)
        if bad:
            sys.stderr.write(f"out of date in {args.out}: {', '.join(bad)}; run python grafana/generate.py\n")
            return 1
        return 0
    for path in write_all(args.out):
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
