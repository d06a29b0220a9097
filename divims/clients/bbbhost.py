"""What SSH tells about a BBB host: one exec of a POSIX sh script, parsed into `HostStats`.

The script (`STATS_SCRIPT`) prints `key=value` lines and ends with `end=ok`, so a truncated answer is
told apart from a complete one. Keys:

- `load1` (/proc/loadavg), `cpus` (nproc), `uptime` (/proc/uptime, seconds)
- `services`: `ok`, `ko` (some line of `bbb-conf --status` says inactive, activating or failed, as
  DiViMS reads it) or `missing` (no bbb-conf): only `ok` is healthy
- the recording pipeline, from /var/bigbluebutton/recording/status (BBB writes `<stage>/<id>.done` as
  each stage finishes): `recorded` = recorded without archived, `archived` = archived without sanity,
  `sanity` = sanity without any processed/<id>-<format>.done and not being processed,
  `processing` = entries of recording/process/presentation, `failed` = processed/*.fail (as DiViMS)
- `published_not_transferred`: recording ids with a published/<id>-<format>.done whose
  /var/bigbluebutton/published/<format>/<id> is still on the host and that have no transfer marker
  status/transferred/<id>.done. Scalelite's post_publish hook (scalelite_post_publish.rb) copies the
  recording away but leaves no trace on the host, so the rule is: transferred = the marker exists (add
  `touch /var/bigbluebutton/recording/status/transferred/<id>.done` at the end of that hook) or the
  published files are gone (the hook's `delete_recording: true`). Without either, a published recording
  keeps the host "unfinished", which errs on the side of never deleting a recording.
- `tls_not_after`: `openssl x509 -enddate` of the first `ssl_certificate` nginx serves, raw
  (`Mar  5 12:00:00 2027 GMT`); parsed here into an epoch, empty when no certificate is found.

SSH itself (host keys verified against known_hosts unless `accept_unknown_host_keys`, timeouts, errors)
is `divims.clients.ssh.SSHClient`.
"""

from __future__ import annotations

import calendar
import logging
from typing import Any

from divims.clients.ssh import CommandResult, SSHClient, shows_ssh_settings
from divims.errors import ProtocolError
from divims.model import HostStats, RecordingPipeline

log = logging.getLogger(__name__)

STATS_MARKER = "divims-bbb-stats v1"

# POSIX sh only (dash on Ubuntu): no arrays, no [[ ]], no GNU-only flags. DIVIMS_ROOT lets a test run
# it over a fake tree; on a real host it is unset.
STATS_SCRIPT = r"""# divims-bbb-stats v1: key=value lines for divims (divims/clients/bbbhost.py)
LC_ALL=C; export LC_ALL
PATH="$PATH:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"; export PATH
R="${DIVIMS_ROOT:-}"
S="$R/var/bigbluebutton/recording/status"
P="$R/var/bigbluebutton/recording/process/presentation"
echo "load1=$(cut -d ' ' -f 1 /proc/loadavg)"
echo "cpus=$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"
echo "uptime=$(cut -d ' ' -f 1 /proc/uptime)"
if command -v bbb-conf >/dev/null 2>&1; then
  if command -v timeout >/dev/null 2>&1; then st=$(timeout 60 bbb-conf --status 2>&1); else st=$(bbb-conf --status 2>&1); fi
  if printf '%s\n' "$st" | grep -Eq 'inactive|activating|failed'; then echo services=ko; else echo services=ok; fi
else
  echo services=missing
fi
n=0; for f in "$S"/recorded/*.done; do [ -e "$f" ] || continue; id=${f##*/}; id=${id%.done}
  [ -e "$S/archived/$id.done" ] || n=$((n+1)); done; echo "recorded=$n"
n=0; for f in "$S"/archived/*.done; do [ -e "$f" ] || continue; id=${f##*/}; id=${id%.done}
  [ -e "$S/sanity/$id.done" ] || n=$((n+1)); done; echo "archived=$n"
n=0; for f in "$S"/sanity/*.done; do [ -e "$f" ] || continue; id=${f##*/}; id=${id%.done}
  [ -e "$P/$id" ] && continue; set -- "$S"/processed/"$id"-*.done; [ -e "$1" ] || n=$((n+1)); done; echo "sanity=$n"
n=0; old=""; for d in "$P"/*; do [ -e "$d" ] || continue; n=$((n+1))
  t=$(stat -c %Y "$d" 2>/dev/null) || continue; if [ -z "$old" ] || [ "$t" -lt "$old" ]; then old=$t; fi; done
echo "processing=$n"; echo "processing_oldest_mtime=$old"; echo "now=$(date +%s)"
n=0; seen=" "; for f in "$S"/published/*.done; do [ -e "$f" ] || continue; b=${f##*/}; b=${b%.done}; id=${b%-*}; fmt=${b##*-}
  case "$seen" in *" $id "*) continue;; esac
  [ -e "$S/transferred/$id.done" ] && continue
  [ -e "$R/var/bigbluebutton/published/$fmt/$id" ] || continue
  seen="$seen$id "; n=$((n+1)); done; echo "published_not_transferred=$n"
n=0; for f in "$S"/processed/*.fail; do [ -e "$f" ] && n=$((n+1)); done; echo "failed=$n"
cert=$(grep -hs '^[[:space:]]*ssl_certificate[[:space:]]' "$R"/etc/nginx/sites-enabled/* "$R"/etc/nginx/conf.d/*.conf 2>/dev/null | head -n 1 | sed 's/^[[:space:]]*ssl_certificate[[:space:]]*//; s/;.*$//; s/[[:space:]]*$//')
na=""; if [ -n "$cert" ] && [ -r "$R$cert" ]; then na=$(openssl x509 -enddate -noout -in "$R$cert" 2>/dev/null | sed 's/^notAfter=//'); fi
echo "tls_not_after=$na"
echo "end=ok"
"""

_COUNT_KEYS = ("recorded", "archived", "sanity", "processing", "published_not_transferred", "failed")
REQUIRED_KEYS = ("load1", "cpus", "uptime", "services", *_COUNT_KEYS, "processing_oldest_mtime", "now",
                 "tls_not_after", "end")
_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                                       "Nov", "Dec"), start=1)}


def parse_not_after(text: str) -> float:
    """`openssl x509 -enddate` time (`Mar  5 12:00:00 2027 GMT`) -> epoch seconds; ValueError if not one."""
    parts = text.split()
    if len(parts) != 5 or parts[4] != "GMT" or parts[0] not in _MONTHS:
        raise ValueError(text)
    hh, mm, ss = (int(x) for x in parts[2].split(":"))
    return float(calendar.timegm((int(parts[3]), _MONTHS[parts[0]], int(parts[1]), hh, mm, ss, 0, 0, 0)))


def parse_stats(text: str, host: str) -> HostStats:
    """Parses the stats script's output; a missing key or a bad value is a ProtocolError naming it."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values.setdefault(key.strip(), value.strip())
    missing = [k for k in REQUIRED_KEYS if k not in values]
    if missing:
        raise ProtocolError("ssh", host, f"stats output lacks {', '.join(missing)} (truncated or not a BBB host?)")

    def number(key: str, kind: type) -> Any:
        try:
            value = kind(values[key])
        except ValueError:
            raise ProtocolError("ssh", host, f"stats {key} is not a number: {values[key][:40]!r}") from None
        if value < 0:
            raise ProtocolError("ssh", host, f"stats {key} is negative: {value}")
        return value

    services = values["services"]
    if services not in ("ok", "ko", "missing"):
        raise ProtocolError("ssh", host, f"stats services is {services[:20]!r}, expected ok, ko or missing")
    tls: float | None = None
    if values["tls_not_after"]:
        try:
            tls = parse_not_after(values["tls_not_after"])
        except ValueError:
            raise ProtocolError("ssh", host, f"stats tls_not_after is not a date: "
                                             f"{values['tls_not_after'][:40]!r}") from None
    oldest_age: float | None = None
    if values["processing_oldest_mtime"]:
        oldest_age = max(0.0, number("now", float) - number("processing_oldest_mtime", float))
    cpus = number("cpus", int)
    if cpus < 1:
        raise ProtocolError("ssh", host, "stats cpus is 0")
    return HostStats(
        load1=number("load1", float), cpus=cpus, uptime_seconds=number("uptime", float),
        services_healthy=services == "ok",
        recordings=RecordingPipeline(**{k: number(k, int) for k in _COUNT_KEYS}),
        tls_expiry_timestamp=tls, oldest_processing_age_seconds=oldest_age)


@shows_ssh_settings
class BBBHostSSH:
    """An SSH connection to one BBB host (kept open between calls, reopened when it broke), through
    the shared `divims.clients.ssh.SSHClient` (`self.ssh`); its settings read as attributes here."""

    def __init__(self, host: str, *, port: int = 22, user: str = "root", key_file: str | None = None,
                 key_passphrase: Any = None, known_hosts: str | None = None,
                 accept_unknown_host_keys: bool = False, timeout_seconds: float = 10):
        self.ssh = SSHClient(host, port=port, user=user, key_file=key_file, key_passphrase=key_passphrase,
                             known_hosts=known_hosts, accept_unknown_host_keys=accept_unknown_host_keys,
                             timeout_seconds=timeout_seconds)

    def __repr__(self) -> str:
        return f"BBBHostSSH({self.ssh.user}@{self.ssh.host}:{self.ssh.port})"

    @property
    def _target(self) -> str:
        return self.ssh.target

    def __enter__(self) -> BBBHostSSH:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.ssh.close()

    def run(self, command: str, timeout_seconds: float | None = None) -> CommandResult:
        """Runs one command and returns its exit code and output, within `timeout_seconds` (default the
        client's). Connection and auth problems raise ClientError subclasses naming the host."""
        return self.ssh.run(command, timeout_seconds)

    def stats(self) -> HostStats:
        """Load, CPUs, uptime, BBB health, recording pipeline and TLS expiry, in one exec."""
        result = self.run(STATS_SCRIPT)
        if result.exit_code != 0:
            raise ProtocolError("ssh", self._target, f"stats script exited {result.exit_code}: "
                                                     f"{result.stderr.strip()[:200]}")
        stats = parse_stats(result.stdout, self._target)
        log.debug("ssh %s: load1=%s unfinished recordings=%d", self._target, stats.load1,
                  stats.recordings.unfinished)
        return stats

