"""The configuration reference, generated from the models so it never drifts from the code.

`python -m divims.config_doc` prints the Markdown table the README carries between the
`<!-- config-reference -->` markers; a test checks they are equal.
"""

from __future__ import annotations

from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from divims.config import Settings, _inner_model

DESCRIPTIONS = {
    "pools": "one entry per BBB pool behind one Scalelite",
    "pools[].name": "pool name: the `pool` label of every metric",
    "pools[].scalelite.url": "Scalelite base URL; the API is under /scalelite/api",
    "pools[].scalelite.secret": "LOADBALANCER_SECRET",
    "pools[].scalelite.ssh": "use `rake` over SSH instead of the HTTP API (Scalelite < 1.5.1)",
    "pools[].scalelite.ssh.container": "the scalelite-api container `docker exec` runs rake in",
    "pools[].scaleway.zone": "Scaleway zone, e.g. fr-par-1",
    "pools[].scaleway.project_id": "Scaleway project UUID",
    "pools[].scaleway.api_url": "Scaleway API base URL (default: the real API; the testbed's fake)",
    "pools[].scaleway.image": "image name or id the servers are cloned from",
    "pools[].scaleway.commercial_type": "server type, e.g. PRO2-M (priced from the catalog)",
    "pools[].scaleway.hostname_template": "Scaleway server name of slot n",
    "pools[].scaleway.domain_template": "host in the server's Scalelite URL, for slot n",
    "pools[].scaleway.flexible_ips": "keep one flexible IP per slot and attach it to each new clone",
    "pools[].scaleway.max_retries": "retries on 429/5xx/timeouts, with exponential backoff",
    "pools[].scaleway.max_concurrent_clones": "clones in flight at once",
    "pools[].bbb.url_template": "BBB API URL of a slot's server",
    "pools[].bbb.secret": "the image's BBB secret, for new Scalelite entries (else Scalelite's)",
    "pools[].bbb.ssh": "SSH to BBB hosts for system, recording and TLS data",
    "pools[].bbb.ssh.accept_unknown_host_keys": "accept unknown host keys (default: verify against known_hosts)",
    "pools[].capacity.participants_per_server": "participants one server carries",
    "pools[].capacity.meetings_per_server": "meetings one server carries",
    "pools[].size.min": "servers always active",
    "pools[].size.max": "the number of slots",
    "pools[].lifecycle.meetings_max_duration_minutes": "meetings older than this on a draining server are ended",
    "pools[].lifecycle.recordings_max_processing_minutes": "recording processing above this is alerted on",
    "pools[].lifecycle.recycle_uptime_seconds": "a server is recycled after this uptime",
    "pools[].lifecycle.unresponsive_after_seconds": "running this long and offline/API down: unresponsive",
    "pools[].lifecycle.min_billed_seconds": "Scaleway bills each power-on period at least this long",
    "pools[].lifecycle.billing_hour_seconds": "the unit Scaleway bills in: drained servers go near its end",
    "pools[].lifecycle.replacements_per_hour": "replacement budget, so a broken image cannot loop",
    "pools[].lifecycle.maintenance": "slots left alone (the DiViMS maintenance list)",
    "pools[].lifecycle.maintenance_file": "a JSON array of slots, read each cycle (DiViMS format)",
    "pools[].tls.warning_days": "certificate expiry warning",
    "pools[].tls.alert_days": "certificate expiry alert",
    "pools[].schedule.timezone": "time zone of the weekly schedule",
    "pools[].schedule.weekly": "periods {days, from, to, participants or percent}: a floor one boot time early",
    "pools[].schedule.ical": "DiViMS iCal feed (URL or file): SUMMARY `users=N` or `users=N%`",
    "pools[].schedule.ical_cache": "where the last good feed is kept, used when the feed fails",
    "pools[].schedule.pool_capacity": "participants for users=N% (default size.max x participants_per_server)",
    "prometheus.url": "Prometheus the scaler queries",
    "exporter.interval_seconds": "poll interval of every source",
    "exporter.concurrency": "targets polled at once",
    "exporter.timeout_seconds": "per-target timeout",
    "scaler.interval_seconds": "cycle interval (the DiViMS controller interval)",
    "scaler.state_dir": "lock, policy state and journal",
    "scaler.boot_time_seconds": "clone to ready; the measured one is used when known",
    "scaler.scale_in_window_seconds": "scale in only when the highest desired over this window allows",
    "scaler.growth_window_seconds": "growth is measured over this window",
    "scaler.max_changes_per_cycle": "at most this many servers changed per cycle",
    "scaler.queries": "overrides of the shipped PromQL queries, by name",
    "scaler.dry_run": "decide and journal, act on nothing",
    "alerting.webhook.token": "bearer token Alertmanager sends",
    "alerting.webhook.database": "SQLite file of the alert history and action requests (a file of an earlier"
                                 " version is migrated in place at start, in one transaction)",
    "alerting.actions": "alert matchers -> scale_out / replace_server / cordon_server / hold_scale_in / none",
    "alerting.max_actions_per_hour": "rate limit of alert-driven actions",
}


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is not None and origin.__name__ == "Annotated" if hasattr(origin, "__name__") else False:
        annotation = get_args(annotation)[0]
    text = getattr(annotation, "__name__", None) or str(annotation)
    return (text.replace("typing.", "").replace("pydantic.types.", "").replace("NoneType", "None")
            .replace("Annotated[", "").replace("divims.config.", ""))


def _default(field) -> str:
    if field.is_required():
        return "**required**"
    value = field.default
    if value is PydanticUndefined or value is None:
        return "none"
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value!r}`" if not isinstance(value, str) else f"`{value}`"


def rows(model: type[BaseModel] = Settings, prefix: str = "") -> list[tuple[str, str, str]]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        inner = _inner_model(field.annotation)
        is_list = "list[" in str(field.annotation)
        path = key + ("[]" if is_list and inner else "")
        if inner is not None:
            out.append((path, "(section)" if field.is_required() or not is_list else "`[]`",
                        DESCRIPTIONS.get(path, DESCRIPTIONS.get(key, ""))))
            out.extend(rows(inner, path + "."))
        else:
            out.append((key, _default(field), DESCRIPTIONS.get(key, "")))
    return out


def markdown() -> str:
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, meaning in rows():
        lines.append(f"| `{key}` | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


START, END = "<!-- config-reference -->", "<!-- /config-reference -->"


def with_reference(readme: str) -> str:
    """`readme` with the table between the markers replaced by the current one."""
    head, _, rest = readme.partition(START)
    _, _, tail = rest.partition(END)
    return f"{head}{START}\n{markdown()}{END}{tail}"


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--write"]:
        from pathlib import Path

        path = Path(sys.argv[2])
        path.write_text(with_reference(path.read_text()))
    else:
        print(markdown(), end="")
