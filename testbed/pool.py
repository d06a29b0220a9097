"""The whole simulated pool in one process: fake Scaleway, Scalelite (with its poller), the BBB fleet,
their SSH sides, and the load driver, all on loopback around one `World`.

`TestbedPool(...).start()` then `.config_dict()` / `.write_config(path)` gives a ready divims config.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from testbed.world import Delays, FakeImage, World

log = logging.getLogger(__name__)

# The SDK validates credentials' shapes: an access key SCW + 17 upper-case letters/digits, a UUID secret.
TESTBED_ACCESS_KEY = "SCWTESTBED0000000000"


@dataclass
class TestbedOptions:
    __test__ = False  # not a pytest test class
    slots: int = 12
    trace: str | None = None            # CSV time,meetings,participants
    acceleration: float = 60.0          # trace seconds per real second
    delays: Delays = field(default_factory=Delays)
    host: str = "127.0.0.1"
    scaleway_port: int = 0
    scalelite_port: int = 0
    bbb_port: int = 0
    ssh: bool = True                    # an SSH side on each BBB host (stats, recordings, TLS)
    scalelite_poll_seconds: float = 1.0
    image_name: str = "bbb-template"
    commercial_type: str = "PRO2-M"
    seed: int = 1
    workdir: str | None = None          # keys, known_hosts (a temp dir when None)
    loop_trace: bool = False
    ssh_key_passphrase: str | None = None  # encrypt the client key (config gets ${SSH_KEY_PASSPHRASE})


class TestbedPool:
    """Starts and stops every fake of the simulated pool together."""

    __test__ = False  # not a pytest test class

    def __init__(self, options: TestbedOptions | None = None):
        self.options = o = options or TestbedOptions()
        self.world = World(slots=o.slots, delays=o.delays)
        image = FakeImage(id=str(uuid.uuid4()), name=o.image_name, project=self.world.project_id,
                          zone=self.world.zone)
        self.world.images[image.id] = image
        self.scaleway_secret_key = str(uuid.uuid4())
        self.scalelite_secret = secrets.token_hex(20)
        self.workdir = Path(o.workdir or tempfile.mkdtemp(prefix="divims-testbed-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.scaleway = self.scalelite = self.bbb = None
        self.ssh_servers: dict[str, object] = {}
        self.load = None

    # --- lifecycle ------------------------------------------------------------------------
    def start(self) -> TestbedPool:
        from testbed.bbb import FakeBBBFleet
        from testbed.scalelite import FakeScalelite
        from testbed.scaleway import FakeScaleway

        o = self.options
        self.scaleway = FakeScaleway(self.world, host=o.host, port=o.scaleway_port,
                                     token=self.scaleway_secret_key)
        self.scaleway.start()
        self.bbb = FakeBBBFleet(self.world, port=o.bbb_port)
        self.bbb.start()
        self.scalelite = FakeScalelite(self.world, self.scalelite_secret, host=o.host, port=o.scalelite_port,
                                       poll_interval_seconds=o.scalelite_poll_seconds)
        self.scalelite.start()
        if o.ssh:
            self._start_ssh()
        if o.trace:
            self._start_load()
        log.info("testbed up: %d slots, Scaleway %s, Scalelite %s", o.slots, self.scaleway.url,
                 self.scalelite.url)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        for handle in self.ssh_servers.values():
            handle.stop()
        for part in (self.scalelite, self.bbb, self.scaleway):
            if part is not None:
                part.stop()

    def __enter__(self) -> TestbedPool:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- SSH ----------------------------------------------------------------------------------
    def _start_ssh(self) -> None:
        import asyncssh

        from testbed.sshd import bbb_stats_handler, start_ssh_server

        key_path = self.workdir / "id_ed25519"
        if not key_path.exists():
            key = asyncssh.generate_private_key("ssh-ed25519")
            key.write_private_key(str(key_path), passphrase=self.options.ssh_key_passphrase)
            key.write_public_key(str(key_path) + ".pub")
            os.chmod(key_path, 0o600)
        self.client_key_file = str(key_path)
        authorized = str(key_path) + ".pub"
        self.ssh_port = None
        lines = []
        for host in self.world.bbb_hosts:
            handle = start_ssh_server(host, self.ssh_port or 0, bbb_stats_handler(self.world, host),
                                      authorized_keys=authorized)
            self.ssh_port = handle.port
            self.ssh_servers[host] = handle
            lines.append(handle.known_hosts_line())
        self.known_hosts_file = str(self.workdir / "known_hosts")
        Path(self.known_hosts_file).write_text("\n".join(lines) + "\n")

    # --- load -----------------------------------------------------------------------------
    def _start_load(self) -> None:
        from testbed.load_driver import LoadDriver

        self.load = LoadDriver(self.world, self.options.trace, acceleration=self.options.acceleration,
                               seed=self.options.seed, loop=self.options.loop_trace)
        t = threading.Thread(target=self.load.run, args=(self._stop,), name="testbed-load", daemon=True)
        t.start()
        self._threads.append(t)

    # --- the ready configuration ---------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        """The Scaleway SDK's credentials, the SDK's own way (never in the config file)."""
        env = {"SCW_ACCESS_KEY": TESTBED_ACCESS_KEY, "SCW_SECRET_KEY": self.scaleway_secret_key,
               "SCALELITE_SECRET": self.scalelite_secret, "BBB_SECRET": self.world.bbb_secret}
        if self.options.ssh_key_passphrase:
            env["SSH_KEY_PASSPHRASE"] = self.options.ssh_key_passphrase
        return env

    def config_dict(self, *, name: str = "testbed", prometheus_url: str = "http://127.0.0.1:9090",
                    extra: dict | None = None) -> dict:
        o = self.options
        pool: dict = {
            "name": name,
            "scalelite": {"url": self.scalelite.url, "secret": "${SCALELITE_SECRET}", "timeout_seconds": 5},
            "scaleway": {
                "zone": self.world.zone, "project_id": self.world.project_id, "api_url": self.scaleway.url,
                "image": o.image_name, "commercial_type": o.commercial_type,
                "hostname_template": self.world.hostname_template,
                "domain_template": self.world.domain_template, "timeout_seconds": 5,
            },
            "bbb": {"url_template": f"http://{{domain}}:{self.bbb.port}/bigbluebutton/api",
                    "secret": "${BBB_SECRET}", "timeout_seconds": 3},
            "capacity": {"participants_per_server": 250, "meetings_per_server": 15},
            "size": {"min": 1, "max": o.slots},
        }
        if o.ssh and self.ssh_servers:
            pool["bbb"]["ssh"] = {"user": "root", "port": self.ssh_port, "key_file": self.client_key_file,
                                  "known_hosts": self.known_hosts_file, "timeout_seconds": 5}
            if o.ssh_key_passphrase:
                pool["bbb"]["ssh"]["key_passphrase"] = "${SSH_KEY_PASSPHRASE}"
        cfg = {"pools": [pool], "prometheus": {"url": prometheus_url}}
        if extra:
            _deep_merge(cfg, extra)
        return cfg

    def write_config(self, path: str | Path, **kwargs) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.config_dict(**kwargs), sort_keys=False))
        path.chmod(0o600)
        return path


def _deep_merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        elif key == "pools" and isinstance(value, list) and value and isinstance(value[0], dict):
            for i, p in enumerate(value):
                if i < len(base["pools"]):
                    _deep_merge(base["pools"][i], p)
        else:
            base[key] = value
