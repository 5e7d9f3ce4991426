"""The narrow interface of the kernel seam (for type checking; never imported at run time)."""

from __future__ import annotations

from typing import Protocol

from vmnet.kernel.base import Snapshot, TapSpec


class Kernel(Protocol):
    """Everything vmnet asks of the kernel.  Errors are VmnetError subclasses."""

    def snapshot(self) -> Snapshot: ...

    def create_tap(self, spec: TapSpec) -> None: ...

    def create_bridge(self, name: str, *, mac: str, mtu: int | None, stp: bool,
                      forward_delay: int, alias: str) -> None: ...

    def set_link(self, name: str, *, master: str | None = None, nomaster: bool = False,
                 up: bool | None = None, mtu: int | None = None,
                 alias: str | None = None, group: int | None = None,
                 mac: str | None = None) -> None: ...

    def delete_links(self, names: list[str]) -> None: ...

    def add_address(self, name: str, cidr: str) -> None: ...

    def global_addresses(self, name: str) -> list[str]: ...

    def default_route_devices(self) -> set[str]: ...

    def disable_ipv6(self, name: str) -> None: ...

    def close(self) -> None: ...
