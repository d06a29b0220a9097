#!/usr/bin/env bash
# Dependency audit of the installed venv with pip-audit (PyPI's vulnerability service).
#
#   scripts/audit.sh [VENV]          (default: .venv)
#
# Exit codes:
#   0  no known vulnerability with a fix available, OR the vulnerability service cannot be reached from
#      here (the script then says so loudly: "AUDIT NOT PERFORMED"; nothing was checked);
#   1  at least one installed package has a known vulnerability with a fixed version;
#   2  usage error / pip-audit could not be installed.
#
# pip-audit is installed into its own throw-away venv (never into the project's), from PyPI.
# Why the "cannot be reached" case exists: pip-audit's `pypi` service reads
# https://pypi.org/pypi/<name>/<version>/json and the `osv` service reads api.osv.dev. On machines
# that reach PyPI only through a simple-index mirror, the JSON API answers 404 for every package
# ("Dependency not found on PyPI") and osv.dev does not resolve: no audit is possible there.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${1:-$ROOT/.venv}"
SITE="$(ls -d "$VENV"/lib/python3*/site-packages 2>/dev/null | head -1 || true)"
if [[ -z "$SITE" ]]; then
  echo "audit: no site-packages under $VENV (create the venv first)" >&2
  exit 2
fi

AUDIT_VENV="${DIVIMS_AUDIT_VENV:-${TMPDIR:-/tmp}/divims-pip-audit}"
if [[ ! -x "$AUDIT_VENV/bin/pip-audit" ]]; then
  python3 -m venv "$AUDIT_VENV"
  if ! "$AUDIT_VENV/bin/pip" install -q "pip-audit==2.10.1" >/dev/null 2>&1; then
    echo "audit: could not install pip-audit 2.10.1 from PyPI" >&2
    exit 2
  fi
fi

REPORT="$(mktemp)"
trap 'rm -f "$REPORT" "$REPORT.err"' EXIT
set +e
timeout 600 "$AUDIT_VENV/bin/pip-audit" --path "$SITE" --vulnerability-service pypi --format json \
  --progress-spinner off --timeout 15 >"$REPORT" 2>"$REPORT.err"
rc=$?
set -e

python3 - "$REPORT" "$rc" <<'PY'
import json
import sys

path, rc = sys.argv[1], int(sys.argv[2])
try:
    doc = json.load(open(path))
except (OSError, ValueError):
    err = open(path + ".err").read()[-2000:]
    print("audit: AUDIT NOT PERFORMED: pip-audit gave no report (exit %d); the vulnerability service is "
          "probably unreachable from this machine.\n%s" % (rc, err))
    sys.exit(0)
deps = doc.get("dependencies", [])
audited = [d for d in deps if "skip_reason" not in d]
skipped = [d for d in deps if "skip_reason" in d]
if deps and not audited:
    print(f"audit: AUDIT NOT PERFORMED: all {len(deps)} packages were skipped "
          f"(first reason: {skipped[0]['skip_reason']!r}). PyPI's JSON API (pypi.org/pypi/<name>/json) "
          "is not reachable from here, only a simple-index mirror; run scripts/audit.sh on a machine "
          "with full PyPI access.")
    sys.exit(0)
fixable, unfixable = [], []
for d in audited:
    for v in d.get("vulns", []):
        (fixable if v.get("fix_versions") else unfixable).append((d["name"], d["version"], v))
for name, version, v in fixable:
    print(f"audit: VULNERABLE {name} {version}: {v['id']} fixed in {', '.join(v['fix_versions'])}")
for name, version, v in unfixable:
    print(f"audit: known, no fix yet: {name} {version}: {v['id']}")
print(f"audit: {len(audited)} packages audited, {len(skipped)} skipped, {len(fixable)} fixable "
      f"vulnerabilities, {len(unfixable)} without a fix")
sys.exit(1 if fixable else 0)
PY
