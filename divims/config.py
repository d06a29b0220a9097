"""The one divims configuration: a YAML file, `${NAME}` replaced from the environment, validated.

`load_config(path)` returns `Settings` or raises `ConfigError` whose `problems` name each key path:
`pools[0].scaleway.zone: expected a zone like fr-par-1, got 'amsterdam'`. No secret is ever echoed.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from divims.errors import ConfigError

log = logging.getLogger(__name__)

ENV_CONFIG = "DIVIMS_CONFIG"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string like '90s', '15m', '2h', '7d'."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 15m, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"expected a positive duration, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError(f"expected a duration like 90s, 15m, 2h or 7d, got {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration)]
PositiveInt = Annotated[int, Field(gt=0)]
Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT like 0.0.0.0:9688, got {value!r}")
    return value


Listen = Annotated[str, BeforeValidator(lambda v: _check_listen(str(v)))]


def _check_url(value: Any) -> str:
    text = str(value).strip()
    if not re.match(r"^https?://[^/\s:]+(:\d+)?(/\S*)?$", text):
        raise ValueError(f"expected an http(s) URL, got {text!r}")
    return text.rstrip("/")


Url = Annotated[str, BeforeValidator(_check_url)]


class SSHCommon(_Model):
    port: Port = 22
    user: str = "root"
    key_file: str | None = None
    key_passphrase: SecretStr | None = None
    known_hosts: str | None = None  # default: ~/.ssh/known_hosts
    accept_unknown_host_keys: bool = False
    timeout_seconds: Duration = 10.0


class ScaleliteSSH(SSHCommon):
    host: str
    container: str = "scalelite-api"
    sudo: bool = True


class ScaleliteConfig(_Model):
    url: Url
    secret: SecretStr
    timeout_seconds: Duration = 10.0
    verify_tls: bool = True
    checksum_algorithm: Literal["sha1", "sha256", "sha512"] = "sha256"
    ssh: ScaleliteSSH | None = None

    @field_validator("secret")
    @classmethod
    def _secret_not_empty(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value():
            raise ValueError("must not be empty")
        return v


_ZONE = re.compile(r"^[a-z]{2}-[a-z]{3}-[1-9]$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _template(field_name: str):
    def check(value: str) -> str:
        if "{n}" not in value:
            raise ValueError(f"must contain {{n}} (the slot number), got {value!r}")
        try:
            value.format(n=1)
        except (KeyError, IndexError, ValueError):
            raise ValueError(f"only {{n}} may be substituted, got {value!r}") from None
        return value
    return check


class ScalewayConfig(_Model):
    zone: str
    project_id: str
    api_url: Url | None = None
    image: str
    commercial_type: str
    hostname_template: Annotated[str, BeforeValidator(lambda v: _template("hostname_template")(str(v)))]
    domain_template: Annotated[str, BeforeValidator(lambda v: _template("domain_template")(str(v)))]
    flexible_ips: bool = False
    timeout_seconds: Duration = 10.0
    max_retries: Annotated[int, Field(ge=0, le=20)] = 4
    max_concurrent_clones: PositiveInt = 3
    allow_insecure: bool = False

    @field_validator("zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        if not _ZONE.match(v):
            raise ValueError(f"expected a zone like fr-par-1, got {v!r}")
        return v

    @field_validator("project_id")
    @classmethod
    def _project(cls, v: str) -> str:
        if not _UUID.match(v.lower()):
            raise ValueError(f"expected a project UUID like 11111111-2222-3333-4444-555555555555, got {v!r}")
        return v.lower()


class BBBSSH(SSHCommon):
    host_template: str = "{domain}"


class BBBConfig(_Model):
    url_template: str = "https://{domain}/bigbluebutton/api"
    secret: SecretStr | None = None
    checksum_algorithm: Literal["sha1", "sha256", "sha384", "sha512"] = "sha256"
    timeout_seconds: Duration = 5.0
    ssh: BBBSSH | None = None

    @field_validator("url_template")
    @classmethod
    def _url_template(cls, v: str) -> str:
        if "{domain}" not in v:
            raise ValueError(f"must contain {{domain}}, got {v!r}")
        _check_url(v.replace("{domain}", "example.org"))
        return v.rstrip("/")


class CapacityConfig(_Model):
    participants_per_server: PositiveInt = 250
    meetings_per_server: PositiveInt = 15


class SizeConfig(_Model):
    min: Annotated[int, Field(ge=0)] = 1
    max: PositiveInt

    @model_validator(mode="after")
    def _order(self) -> SizeConfig:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class LifecycleConfig(_Model):
    meetings_max_duration_minutes: PositiveInt = 600
    recordings_max_processing_minutes: PositiveInt = 300
    recycle_uptime_seconds: Duration = 7 * 86400.0
    unresponsive_after_seconds: Duration = 360.0
    min_billed_seconds: Duration = 3600.0
    billing_hour_seconds: Annotated[float, Field(gt=0), BeforeValidator(parse_duration)] = 3600.0
    replacements_per_hour: Annotated[int, Field(ge=0)] = 2
    maintenance: list[PositiveInt] = []
    maintenance_file: str | None = None


class TLSConfig(_Model):
    warning_days: PositiveInt = 15
    alert_days: PositiveInt = 5


_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$|^24:00$")


class WeeklyPeriod(_Model):
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]]
    from_: str = Field(alias="from")
    to: str
    participants: Annotated[int, Field(ge=0)] | None = None
    percent: Annotated[float, Field(ge=0, le=100)] | None = None

    @field_validator("from_", "to", mode="before")
    @classmethod
    def _hhmm(cls, v: Any) -> str:
        text = str(v)
        if not _HHMM.match(text):
            raise ValueError(f"expected a time like 07:45, got {text!r}")
        return text

    @model_validator(mode="after")
    def _one_amount(self) -> WeeklyPeriod:
        if (self.participants is None) == (self.percent is None):
            raise ValueError("give exactly one of participants or percent")
        if self.to != "24:00" and self.to <= self.from_:
            raise ValueError(f"to ({self.to}) must be after from ({self.from_})")
        return self


class ScheduleConfig(_Model):
    timezone: str = "Europe/Paris"
    weekly: list[WeeklyPeriod] = []
    ical: str | None = None  # an http(s) URL or a file path
    ical_cache: str | None = None
    pool_capacity: PositiveInt | None = None

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"expected an IANA time zone like Europe/Paris, got {v!r}") from None
        return v


class PoolConfig(_Model):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    scalelite: ScaleliteConfig
    scaleway: ScalewayConfig
    bbb: BBBConfig = BBBConfig()
    capacity: CapacityConfig = CapacityConfig()
    size: SizeConfig
    lifecycle: LifecycleConfig = LifecycleConfig()
    tls: TLSConfig = TLSConfig()
    schedule: ScheduleConfig = ScheduleConfig()

    @model_validator(mode="after")
    def _maintenance_in_pool(self) -> PoolConfig:
        bad = [n for n in self.lifecycle.maintenance if n > self.size.max]
        if bad:
            raise ValueError(f"lifecycle.maintenance: slots {bad} are above size.max ({self.size.max})")
        return self

    # --- the slot model -------------------------------------------------------------------
    def slot_name(self, n: int) -> str:
        return self.scaleway.hostname_template.format(n=n)

    def slot_domain(self, n: int) -> str:
        return self.scaleway.domain_template.format(n=n)

    def slot_url(self, n: int) -> str:
        return self.bbb.url_template.format(domain=self.slot_domain(n))

    def slot_of_name(self, name: str) -> int | None:
        return _match_template(self.scaleway.hostname_template, name, self.size.max)

    def slot_of_host(self, host: str) -> int | None:
        return _match_template(self.scaleway.domain_template, host.lower(), self.size.max)

    @property
    def pool_capacity(self) -> int:
        return self.schedule.pool_capacity or self.size.max * self.capacity.participants_per_server


def _match_template(template: str, value: str, max_slot: int) -> int | None:
    head, _, tail = template.partition("{n}")
    if not (value.startswith(head) and value.endswith(tail)):
        return None
    middle = value[len(head):len(value) - len(tail)] if tail else value[len(head):]
    if not middle.isdigit() or middle != str(int(middle)):
        return None
    n = int(middle)
    return n if 1 <= n <= max_slot else None


class PrometheusConfig(_Model):
    url: Url = "http://127.0.0.1:9090"
    timeout_seconds: Duration = 10.0
    bearer_token: SecretStr | None = None
    verify_tls: bool = True


class ExporterConfig(_Model):
    listen: Listen = "0.0.0.0:9688"
    interval_seconds: Duration = 15.0
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 64
    timeout_seconds: Duration = 5.0
    ssh_interval_seconds: Duration = 60.0


class ScalerConfig(_Model):
    listen: Listen = "0.0.0.0:9689"
    interval_seconds: Duration = 60.0
    state_dir: str = "/var/lib/divims"
    journal: str | None = None
    lock_ttl_seconds: Duration = 180.0
    boot_time_seconds: Duration = 600.0
    scale_in_window_seconds: Duration = 900.0
    growth_window_seconds: Duration = 1800.0
    max_changes_per_cycle: PositiveInt = 5
    queries: dict[str, str] = {}
    dry_run: bool = False
    request_poll_seconds: Duration = 0.5

    @property
    def journal_path(self) -> str:
        return self.journal or str(Path(self.state_dir) / "journal.jsonl")


class BasicAuth(_Model):
    username: str
    password: SecretStr


class WebhookConfig(_Model):
    listen: Listen = "0.0.0.0:9095"
    auth: Literal["bearer", "basic", "none"] = "bearer"
    token: SecretStr | None = None
    basic_auth: BasicAuth | None = None
    database: str = "/var/lib/divims/webhook.sqlite"
    max_body_bytes: PositiveInt = 1024 * 1024
    retention_days: PositiveInt = 90

    @model_validator(mode="after")
    def _credentials(self) -> WebhookConfig:
        if self.auth == "bearer" and (self.token is None or not self.token.get_secret_value()):
            raise ValueError("auth is bearer: set token (or auth: basic with basic_auth, or auth: none)")
        if self.auth == "basic" and self.basic_auth is None:
            raise ValueError("auth is basic: set basic_auth {username, password}")
        return self


class ActionRule(_Model):
    match: dict[str, str] = {}
    match_re: dict[str, str] = {}
    action: Literal["scale_out", "replace_server", "cordon_server", "hold_scale_in", "none"]
    servers: PositiveInt = 1
    for_: Duration = Field(default=1800.0, alias="for")
    pool: str | None = None

    @field_validator("match_re")
    @classmethod
    def _regexes(cls, v: dict[str, str]) -> dict[str, str]:
        for label, pattern in v.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{label}: invalid regular expression {pattern!r}: {exc}") from None
        return v


class AlertingConfig(_Model):
    webhook: WebhookConfig | None = None
    actions: list[ActionRule] = []
    max_actions_per_hour: PositiveInt = 20


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(_Model):
    pools: Annotated[list[PoolConfig], Field(min_length=1)]
    prometheus: PrometheusConfig = PrometheusConfig()
    exporter: ExporterConfig = ExporterConfig()
    scaler: ScalerConfig = ScalerConfig()
    alerting: AlertingConfig = AlertingConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _unique_pools(self) -> Settings:
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pool names must be unique, repeated: {', '.join(dupes)}")
        known = set(names)
        for i, rule in enumerate(self.alerting.actions):
            if rule.pool is not None and rule.pool not in known:
                raise ValueError(f"alerting.actions[{i}].pool: no pool named {rule.pool!r}")
        return self

    def pool(self, name: str) -> PoolConfig:
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

    def secret_values(self) -> list[str]:
        """Every secret value in the configuration, for log masking and leak scans."""
        found: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, SecretStr):
                value = node.get_secret_value()
                if value:
                    found.append(value)
            elif isinstance(node, BaseModel):
                for name in type(node).model_fields:
                    walk(getattr(node, name))
            elif isinstance(node, list | tuple):
                for item in node:
                    walk(item)
            elif isinstance(node, dict):
                for item in node.values():
                    walk(item)

        walk(self)
        return sorted(set(found), key=len, reverse=True)


# --- loading -------------------------------------------------------------------------------

def _substitute(node: Any, path: str, problems: list[str], environ: dict[str, str]) -> Any:
    if isinstance(node, str):
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            problems.append(f"{path or '<top>'}: environment variable {name} is not set")
            return ""
        return _ENV_REF.sub(repl, node)
    if isinstance(node, list):
        return [_substitute(v, f"{path}[{i}]", problems, environ) for i, v in enumerate(node)]
    if isinstance(node, dict):
        return {k: _substitute(v, f"{path}.{k}" if path else str(k), problems, environ)
                for k, v in node.items()}
    return node


def _loc_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class that owns the last key of `loc` (for 'did you mean' on unknown keys)."""
    model: Any = Settings
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return None
        model = _inner_model(field.annotation)
        if model is None:
            return None
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _inner_model(arg)
        if found is not None:
            return found
    return None


_TYPE_WORDS = {
    "int_parsing": "an integer", "int_type": "an integer", "float_parsing": "a number",
    "float_type": "a number", "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string", "list_type": "a list", "dict_type": "a mapping",
    "model_type": "a mapping", "model_attributes_type": "a mapping",
}


def _describe(err: dict[str, Any], secret_paths: set[str]) -> str:
    loc = tuple(err["loc"])
    # pydantic appends the union branch or validator name to loc for some errors; drop non-keys
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
    path = _loc_path(loc)
    kind = err["type"]
    value = err.get("input")
    shown = "<hidden>" if path in secret_paths or path.endswith(("secret", "token", "password", "passphrase")) \
        else repr(value)
    if kind == "extra_forbidden":
        model = _model_at(loc)
        hint = ""
        if model is not None:
            names = [f.alias or n for n, f in model.model_fields.items()]
            close = difflib.get_close_matches(str(loc[-1]), names, n=1)
            if close:
                hint = f" (did you mean {close[0]!r}?)"
        return f"{path}: unknown key{hint}"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind in _TYPE_WORDS:
        return f"{path}: expected {_TYPE_WORDS[kind]}, got {shown}"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{path}: expected one of {expected}, got {shown}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"{path}: {err['msg'].lower()}, got {shown}"
    if kind == "string_pattern_mismatch":
        return f"{path}: expected lower-case letters, digits, '-' or '_', got {shown}"
    if kind == "too_short":
        return f"{path}: must not be empty"
    msg = str(err.get("msg", "invalid"))
    msg = msg.removeprefix("Value error, ")
    return f"{path}: {msg}" if path else msg


def parse_config(text: str, *, source: str = "<config>", environ: dict[str, str] | None = None) -> Settings:
    """Validates configuration text. Raises ConfigError naming every problem."""
    try:
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError([f"{source}: YAML syntax error at {where}: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: YAML syntax error: {exc}"]) from None
    if raw is None:
        raise ConfigError([f"{source}: the file is empty"])
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: expected a mapping at the top (pools:, prometheus:, ...)"])
    problems: list[str] = []
    raw = _substitute(raw, "", problems, dict(os.environ if environ is None else environ))
    if problems:
        raise ConfigError(problems)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([_describe(e, set()) for e in exc.errors()]) from None


def resolve_config_path(path: str | None) -> str:
    chosen = path or os.environ.get(ENV_CONFIG)
    if not chosen:
        raise ConfigError([f"no configuration: pass --config PATH or set {ENV_CONFIG}"])
    return chosen


def load_config(path: str | None = None, *, environ: dict[str, str] | None = None) -> Settings:
    """Reads and validates the configuration file (`path`, else $DIVIMS_CONFIG)."""
    chosen = resolve_config_path(path)
    p = Path(chosen)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{chosen}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{chosen}: is a directory, not a file"]) from None
    except PermissionError:
        raise ConfigError([f"{chosen}: permission denied"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{chosen}: not UTF-8 text"]) from None
    settings = parse_config(text, source=chosen, environ=environ)
    _warn_if_readable(p, text, settings)
    return settings


def _warn_if_readable(path: Path, text: str, settings: Settings) -> None:
    """A file that holds secret literals (not ${ENV} references) should not be readable by others."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not mode & (stat.S_IRGRP | stat.S_IROTH):
        return
    if any(secret in text for secret in settings.secret_values()):
        log.warning("%s holds secrets and is readable by group or others (mode %o): chmod 600 it, "
                    "or reference the secrets as ${ENV} variables", path, stat.S_IMODE(mode))
