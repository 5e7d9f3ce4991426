"""Where a plan's nat/isolated networks keep their files.  Its own small module: every
`up` and `down` makes one (vmnet.engine.context), and a plain bridge's must not load the
nat/isolated kinds to do so."""

from __future__ import annotations

import os

from vmnet.model.value import Value
from vmnet.state.files import fname

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Iterable

    from vmnet.render.dnsmasq import Paths


class Site(Value):
    """dnsmasq's files under the namespace's state directory, chosen subnets under the data
    directory, and the networks whose foreign firewall drops vmnet fixes."""

    __slots__ = ("data_dir", "fix", "store_dir")

    def __init__(self, store_dir: str, data_dir: str, fix: Iterable[str] = ()) -> None:
        self.store_dir = store_dir
        self.data_dir = data_dir
        self.fix = frozenset(fix)

    def paths(self, bridge: str) -> Paths:
        from vmnet.render.dnsmasq import Paths

        return Paths(os.path.join(self.store_dir, "dnsmasq", fname(bridge)[: -len(".json")]))
