"""The narrow interfaces the scaler and the exporter program against.

The real clients (HTTP API, rake over SSH, the Scaleway SDK) and the backtest's in-memory pool all
satisfy them, so the same planner and actuator run live, in dry-run and in simulation.
"""

from __future__ import annotations

from typing import Protocol

from divims.model import VM, FlexibleIP, ScaleliteServer, Volume


class Scalelite(Protocol):
    def get_servers(self) -> list[ScaleliteServer]:
        """Every server Scalelite knows (an empty list when none: getServers' 404)."""

    def add_server(self, url: str, secret: str, load_multiplier: float | None = None,
                   tag: str | None = None) -> ScaleliteServer:
        """Registers a server; Scalelite adds it disabled."""

    def enable(self, server_id: str) -> None: ...

    def cordon(self, server_id: str) -> None:
        """The drain: no new meetings, existing ones go on; Scalelite disables it at load 0."""

    def disable(self, server_id: str) -> None:
        """HTTP API only (rake's servers:disable prompts on stdin and is never used)."""

    def panic(self, server_id: str, keep_state: bool = False) -> None: ...

    def delete_server(self, server_id: str) -> None: ...


class Cloud(Protocol):
    """One pool's view of Scaleway Instances (zone and project from the pool's config)."""

    def list_servers(self) -> list[VM]:
        """The pool's servers (tagged divims-pool=<pool>, or named by hostname_template), all pages."""

    def get_server(self, server_id: str) -> VM | None: ...

    def create_server(self, name: str, slot: int) -> VM:
        """Creates a VM from the pool's image and commercial type, tagged for the slot. It starts `stopped`."""

    def poweron(self, server_id: str) -> None: ...

    def poweroff(self, server_id: str) -> None: ...

    def terminate(self, server_id: str) -> None:
        """Deletes the VM and its local volumes; SBS volumes and flexible IPs stay behind."""

    def list_volumes(self) -> list[Volume]:
        """The pool's volumes, attached or not (detached ones are left by terminate)."""

    def delete_volume(self, volume_id: str) -> None: ...

    def list_ips(self) -> list[FlexibleIP]:
        """The pool's flexible IPs (tagged divims-pool=<pool>, divims-slot=<n>)."""

    def create_ip(self, slot: int) -> FlexibleIP: ...

    def attach_ip(self, ip_id: str, server_id: str) -> None: ...

    def hourly_price(self, commercial_type: str) -> float | None:
        """EUR per hour from the products/servers catalog, None when unknown."""
